"""Autotune configurations per kernel and architecture (sm_80: A100 and Ada; sm_90: H100/H200).

Every list was checked with `python -m attnbench.kernels.aot`: each config compiles with 0
register spills and fits the arch's opt-in shared memory (sm_80 166912 B, sm_90 232448 B) in
fp16 and bf16, compiled at each worst case (causal + window + ALiBi; causal + window + softcap +
sinks + sink logit: softcap excludes ALiBi).
A config that failed the check is written next to the list it was dropped from, with its numbers.
Under TRITON_INTERPRET=1 the kernels use one INTERPRET_* config instead (autotuning over
several fails there).
"""

import triton

C = triton.Config

# ================================================================ flash.py
# Tiles: BLOCK_M query rows, BLOCK_N keys. dK/dV: a program owns BLOCK_N keys and steps through
# BLOCK_M query rows; dQ: a program owns BLOCK_M rows and steps through BLOCK_N keys.
# Head dims <= 128 (checked at 64 and 128; numbers quoted at D=128):
FWD_CONFIGS = {
    "sm_80": [C({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
              C({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=4)],
    "sm_90": [C({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
              # dropped 128x128 w8 s2: spills 264 B; 128x64 w4: spills (FACTS.md)
              C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3)],
}
DKDV_CONFIGS = {
    # dropped 32x128 w8 s2/s3: spills 88/32 B; 32x64 w4 s3: spills 164 B
    "sm_80": [C({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=8, num_stages=2),
              C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=2)],
    # dropped 64x64 w4 s2: spills 544 B
    "sm_90": [C({"BLOCK_M": 32, "BLOCK_N": 128}, num_warps=8, num_stages=2),
              C({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=8, num_stages=2)],
}
DQ_CONFIGS = {
    "sm_80": [C({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2),
              C({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=3)],
    "sm_90": [C({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2),
              C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2)],
}
# Head dims 129..256 (checked at 256). The lists above fail there: fwd 128x64 w8 s3 needs
# 213 KB smem on sm_80 and 256 KB on sm_90; dkdv 32x64 w8 s2 spills 44 / 444 B.
FWD_CONFIGS_WIDE = {
    # dropped 64x32 w4 s4: spills 36 B; 32x64 w4 s2: spills 16 B
    "sm_80": [C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=8, num_stages=2),
              C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=3)],
    "sm_90": [C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=8, num_stages=2),
              C({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2)],
}
# The softcap + sinks path (flash.fwd.softcap_sinks) at head dims 129..256: sm_90 64x64 w8 s2
# spills 144 B there (fp16, D=256), so that path tunes over this list instead.
FWD_CONFIGS_WIDE_MODS = {"sm_80": FWD_CONFIGS_WIDE["sm_80"],
                         "sm_90": [C({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2)]}
DKDV_CONFIGS_WIDE = {
    # dropped 32x64 w8 s1: spills 20 B (sm_80); 16x32 w4 s1: spills 32 B (sm_90)
    "sm_80": [C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=8, num_stages=2),
              C({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=8, num_stages=2)],
    "sm_90": [C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=8, num_stages=2),
              C({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=8, num_stages=2)],
}
DQ_CONFIGS_WIDE = {
    # dropped 64x32 w4 s3: spills 12 B (sm_80), 80 B (sm_90)
    "sm_80": [C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=2)],
    "sm_90": [C({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2),
              C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=2)],
}
# Under TRITON_INTERPRET=1: unequal tiles exercise the BLOCK_M != BLOCK_N paths in tests.
INTERPRET_FWD = C({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4, num_stages=1)
INTERPRET_DKDV = C({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=1)
INTERPRET_DQ = INTERPRET_FWD

# ================================================================ decode.py
# BLOCK_N keys per step; the row tile BLOCK_M = G·Lq padded to 16..64 is set by the launcher
# and checked at 64 (the worst case). Head dims <= 128 (checked at 64 and 128):
DECODE_CONFIGS = {
    # dropped BLOCK_N=64 w4 s3: spills 32 B at D=64; 128 w4 s2: spills 444 B at D=128
    "sm_80": [C({"BLOCK_N": 64}, num_warps=4, num_stages=2),
              C({"BLOCK_N": 32}, num_warps=4, num_stages=3)],
    # dropped BLOCK_N=128 w4 s2: spills 344 B at D=128
    "sm_90": [C({"BLOCK_N": 64}, num_warps=4, num_stages=3),
              C({"BLOCK_N": 128}, num_warps=8, num_stages=2)],
}
DECODE_CONFIGS_WIDE = {  # head dims 129..256 (checked at 256)
    # dropped BLOCK_N=32 w4 s4: spills 124 B; 64 w4 s3: 172 KB smem
    "sm_80": [C({"BLOCK_N": 32}, num_warps=8, num_stages=3),
              C({"BLOCK_N": 64}, num_warps=8, num_stages=2)],
    # dropped BLOCK_N=64 w4 s3: spills 316 B
    "sm_90": [C({"BLOCK_N": 32}, num_warps=8, num_stages=3),
              C({"BLOCK_N": 64}, num_warps=8, num_stages=2)],
}
INTERPRET_DECODE = C({"BLOCK_N": 32}, num_warps=4, num_stages=1)

# ================================================================ block_sparse.py
# Tiles follow the sparsity block (min(block, 64), 32 for head dims > 128); only warps and
# stages are tuned. Checked at block 64 with head dims 64, 128 and 256.
BS_FWD_CONFIGS = {
    "sm_80": [C({}, num_warps=8, num_stages=2),  # dropped w4 s2: spills 12 B at D=128
              C({}, num_warps=8, num_stages=3)],
    "sm_90": [C({}, num_warps=4, num_stages=2),  # dropped w8 s2: spills 28 B at D=256
              C({}, num_warps=4, num_stages=3)],
}
BS_DKDV_CONFIGS = {  # dropped w4 s2: spills 12-616 B at D=128 and 256 on both archs
    "sm_80": [C({}, num_warps=8, num_stages=2), C({}, num_warps=8, num_stages=3)],
    "sm_90": [C({}, num_warps=8, num_stages=2), C({}, num_warps=8, num_stages=3)],
}
BS_DQ_CONFIGS = {
    "sm_80": [C({}, num_warps=4, num_stages=2), C({}, num_warps=8, num_stages=2)],
    "sm_90": [C({}, num_warps=4, num_stages=2), C({}, num_warps=8, num_stages=2)],
}
INTERPRET_BLOCK_SPARSE = C({}, num_warps=4, num_stages=1)
