"""Attention beyond one process: ring (context-parallel) attention over torch.distributed.

    layout.py   how the sequence is split across ranks (zig-zag when causal) and the block
                calls of each ring step
    blocks.py   local block attention returning (out, log-sum-exp), and the exact merge
    ring.py     the ring itself: K/V shards passed with batch_isend_irecv, overlapped with compute
    rank.py     one rank of a measured case: timing, memory, error, statistics
    launch.py   spawn the ranks (or join torchrun) and build a results record
    variant.py  the registered `ring` variant (runs only through launch.py)

Sweeps spread over machines (Ray, Slurm shards, merging results) live in attnbench.run.executors.
"""
