"""How much error an exact result may carry in a dtype: the one budget that `recommend`, the
correctness judgement of records and the checks against a definition's reference share.

An exact attention output computed in a dtype differs from the fp64 result by rounding the output
itself (≈ 0.6 units of the dtype's roundoff) plus the float32 accumulation of Lk products, whose
error grows like a random walk: measured on this CPU, float32 attention's relative L2 error against
fp64 is ≈ 10 float32 units × √(Lk/1024). The budget is K units of each:
K·(u_dtype + u_float32·√Lk). Honest limit: it is a relative L2 budget over the whole output; a
single element may differ by more (see the element-wise checks that use it for what they allow).
"""

from __future__ import annotations

# tfloat32: float32 dots computed in TF32 (10 mantissa bits) on a GPU, for the kernels that declare it
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8, "tfloat32": 2.0**-11}
TOLERANCE_K = 4


def tolerance(dtype: str, seq_k: int = 1) -> float:
    """The default error budget (relative L2): exact within the dtype's tolerance, K·(u_dtype +
    u_float32·√Lk). float32 at Lk = 8k: 2.2e-5; bfloat16: 1.6e-2; float16: 2.0e-3; "tfloat32" (a
    kernel computing float32 dots in TF32 on a GPU, ~1e-4..1e-3 on fp32 inputs): float16's figure."""
    u = UNIT_ROUNDOFF.get(dtype, UNIT_ROUNDOFF["float32"])
    return TOLERANCE_K * (u + UNIT_ROUNDOFF["float32"] * max(1, seq_k) ** 0.5)
