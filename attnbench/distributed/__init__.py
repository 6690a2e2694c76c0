"""Attention beyond one process: context parallelism over torch.distributed, and its scaling model.

    layout.py     how the sequence is split across ring ranks (zig-zag when causal) and the block
                  calls of each ring step
    blocks.py     local block attention returning (out, log-sum-exp), and the exact merge
    ring.py       the ring itself: K/V shards passed with batch_isend_irecv, overlapped with compute
    hybrid.py     Ulysses (all-to-alls over heads) and Ulysses × ring on one rank; the ring alone
                  and Ulysses alone are its two edge cases
    torch_cp.py   torch's own context_parallel on one rank, as a peer
    rank.py       one rank of a measured case: timing, memory, error, statistics
    launch.py     spawn the ranks (or join torchrun) and build a results record
    cpmodel.py    the α–β scaling model (torch-free): latency, memory, efficiency at N GPUs
    calibrate.py  α, β and overlap fitted to measured records; predicted vs measured

The registered variants are attnbench.variants.ring and .context_parallel (they run only through
launch.py); the split rules and byte formulas are attnbench.core.cp. Sweeps spread over machines
(Ray, Slurm shards, merging results) live in attnbench.run.executors.
"""
