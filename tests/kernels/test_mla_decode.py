"""attnbench.kernels.mla_decode (absorbed MLA split-KV decode) under the Triton interpreter, against
a materialised float64 softmax over the latent cache; and its ahead-of-time compile for sm_80 and
sm_90 (a subprocess without TRITON_INTERPRET, like test_kernels_compile)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.interpreter
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it)", allow_module_level=True)
pytest.importorskip("triton")

from attnbench.kernels.mla_decode import default_num_splits, mla_decode  # noqa: E402


def latent_oracle(q, kv, rank, scale, causal):
    """softmax(q·kvᵀ·scale [bottom-right causal]) · kv[..., :rank] in float64; no-key rows are 0."""
    q64, kv64 = q.double(), kv.double()[:, 0]  # (B, H, Lq, W), (B, Lk, W)
    s = torch.einsum("bhiw,bjw->bhij", q64, kv64) * scale
    lq, lk = q.shape[2], kv.shape[2]
    if causal:
        seen = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + (lk - lq)
        s = s.masked_fill(~seen, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhij,bjr->bhir", p, kv64[..., :rank])


def inputs(b, h, lq, lk, rank, rope, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, rank + rope, generator=g).to(dtype)
    kv = torch.randn(b, 1, lk, rank + rope, generator=g).to(dtype)
    return q, kv


# (B, H, Lq, Lk, rank, rope, num_splits, causal); BLOCK_N is 32 interpreted, BLOCK_M 16 or 32
CASES = {
    "b2-lk-not-multiple": (2, 4, 1, 100, 64, 16, 3, False),
    "rank-rope-not-pow2": (1, 3, 1, 70, 48, 8, 2, False),  # padded tiles, masked columns
    "causal-4-queries": (1, 2, 4, 57, 32, 16, None, True),
    "rows-over-16": (1, 10, 2, 45, 32, 16, 2, False),  # H·Lq = 20: one 32-row tile
    "two-row-tiles": (1, 20, 2, 33, 32, 16, 2, True),  # H·Lq = 40: two 32-row tiles
    "more-splits-than-chunks": (1, 2, 1, 20, 32, 16, 8, False),  # empty splits merge with weight 0
    "deepseek-v3-dims": (1, 2, 1, 40, 512, 64, 2, False),
}
# fp32 under the interpreter: ~1e-7; fp16: inputs rounded to 2^-11 and P to fp16 before P·V.
TOL = {torch.float32: 1e-5, torch.float16: 8 * 2.0 ** -11}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_fp64_oracle(name, dtype):
    b, h, lq, lk, rank, rope, splits, causal = CASES[name]
    q, kv = inputs(b, h, lq, lk, rank, rope, dtype)
    scale = 0.15
    out = mla_decode(q, kv, rank=rank, softmax_scale=scale, num_splits=splits, causal=causal)
    ref = latent_oracle(q, kv, rank, scale, causal)
    assert out.shape == (b, h, lq, rank) and out.dtype == dtype
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err < TOL[dtype], err


def test_every_split_count_agrees_and_3d_cache_works():
    q, kv = inputs(1, 4, 2, 129, 32, 16, torch.float32, seed=1)
    want = latent_oracle(q, kv, 32, 0.2, True)
    for splits in (1, 2, 5, 16):
        got = mla_decode(q, kv[:, 0], rank=32, softmax_scale=0.2, num_splits=splits, causal=True)
        assert (got.double() - want).abs().max() < 1e-5, splits


def test_causal_rows_with_no_key_are_zero():
    q, kv = inputs(1, 2, 6, 3, 32, 16, torch.float32)
    out = mla_decode(q, kv, rank=32, causal=True, num_splits=2)
    assert torch.all(out[:, :, :3] == 0) and torch.isfinite(out).all()


def test_default_num_splits():
    cpu = torch.device("cpu")
    assert default_num_splits(1, 100, cpu) == 1  # short cache: one chunk
    assert default_num_splits(1, 100_000, cpu) == 32  # 2 × 16 (interpreter "SMs")
    assert default_num_splits(64, 100_000, cpu) == 1  # batch × row tiles fill the grid already


def test_forward_only_and_limits():
    q, kv = inputs(1, 2, 1, 50, 32, 16, torch.float32)
    with pytest.raises(ValueError, match="forward-only"):
        mla_decode(q.requires_grad_(True), kv, rank=32)
    q = q.detach()
    with pytest.raises(ValueError, match="Lq=17 > 16"):
        mla_decode(q.expand(1, 2, 17, 48).contiguous(), kv, rank=32)
    with pytest.raises(ValueError, match="rope dim"):
        mla_decode(q, kv, rank=48)  # nothing left for the rope part
    with pytest.raises(ValueError, match="agree on B and r"):
        mla_decode(q, kv[..., :40], rank=32)
    with pytest.raises(ValueError, match="num_splits"):
        mla_decode(q, kv, rank=32, num_splits=0)


_AOT = """
import json
from attnbench.kernels import aot
rows = [aot.compile_one(k, arch, "{dtype}", 512, cfg) for k in aot.kernel_module("mla_decode").AOT_KERNELS
        for arch in ("sm_80", "sm_90") for cfg in k.configs[arch]]
print(json.dumps(rows))
"""


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_aot_compiles_for_sm80_and_sm90_without_spills(dtype):
    """Every config at r = 512, dr = 64 (DeepSeek-V3), BLOCK_M = 32, causal: fits shared memory,
    0 spills (ptxas -v). ~1 minute a dtype on this CPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _AOT.format(dtype=dtype)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-1000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}
    for r in rows:
        assert r["ok"], r
        assert r["spills"] == 0 and 0 < r["registers"] <= 255 and 0 < r["shared_bytes"] <= 232448, r
