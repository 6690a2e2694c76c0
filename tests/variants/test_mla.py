"""The mla variant (multi-head latent attention): every CPU backend, both forms, against an fp64
reference written here (decompress the latent with the up-projections in float64, then a
materialised softmax: conftest.fp64_oracle); FLOP, byte and KV-cache formulas against hand counts
and against torch's FLOP counter. Small dimensions (r = 24, dr = 8, dn = 16, dv = 12) keep it fast;
one case runs DeepSeek-V3's (512, 64, 128, 128)."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnbench.core.problem import Problem
from attnbench.variants import mla, registry
from conftest import fp64_oracle, rel_l2

CPU = torch.device("cpu")
SMALL = {"kv_lora_rank": 24, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 12}
V3 = {"kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128}


def problem(b=1, h=4, lq=1, lk=37, causal=False, mode="decode", dims=SMALL, dtype="float32", **params):
    raw = Problem(batch=b, heads=h, kv_heads=0, seq_q=lq, seq_k=lk, head_dim=64, dtype=dtype, causal=causal,
                  mode=mode, params=tuple(sorted((mla.DEFAULTS | dims | params).items())))
    return mla.MLA.resolve(raw)


def oracle64(q, k, p: Problem) -> torch.Tensor:
    """Independent of the variant's math: einsum decompression per head in float64, then the
    conftest oracle (bottom-right causal, scale 1/√(dn + dr))."""
    r, dr, dn, dv = (int(p.param(n)) for n in mla.DIMS)
    w_uk, w_uv = mla.up_weights(p, CPU, torch.float64)  # the model's weights (W_UK (H,dn,r), W_UV (H,dv,r))
    c, k_pe = k.double()[:, 0, :, :r], k.double()[:, 0, :, r:]  # (B, Lk, r), (B, Lk, dr)
    keys = torch.cat([torch.einsum("bjr,hdr->bhjd", c, w_uk),
                      k_pe[:, None].expand(-1, p.heads, -1, -1)], dim=-1)  # (B, H, Lk, dn + dr)
    vals = torch.einsum("bjr,hvr->bhjv", c, w_uv)  # (B, H, Lk, dv)
    return fp64_oracle(q.double(), keys, vals, causal=p.causal, scale=(dn + dr) ** -0.5)


CASES = {  # name: problem kwargs; Lk is never a multiple of a 16/32/128 block
    "decode-batch2": dict(b=2, lq=1, lk=37),
    "decode-3-tokens-causal": dict(b=1, lq=3, lk=41, causal=True),
    "prefill-causal-lq<lk": dict(b=2, lq=19, lk=45, causal=True, mode="fwd"),
    "prefill-causal-lq>lk": dict(b=1, lq=21, lk=13, causal=True, mode="fwd"),  # first rows see no key
    "prefill-cross": dict(b=1, h=3, lq=9, lk=30, mode="fwd"),
}


@pytest.mark.parametrize("form", ["naive", "absorbed"])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("case", list(CASES))
def test_backend_matches_fp64_reference(case, backend, form):
    p = problem(**CASES[case], form=form)
    assert registry.decide(mla.MLA, backend, p, CPU).runnable
    q, k, v = mla.make_inputs(p, CPU, seed=1)
    with torch.no_grad():
        out = mla.MLA.backend(backend).build(p, CPU)(q, k, v)
    ref = oracle64(q, k, p)
    assert out.shape == (p.batch, p.heads, p.seq_q, 12) and out.dtype == torch.float32
    assert rel_l2(out, ref) < 1e-5  # fp32 rounding is ~1e-7 here; a wrong head or scale is ~1e-1


def test_reference_is_the_definition_and_rows_without_keys_are_zero():
    p = problem(**CASES["prefill-causal-lq>lk"])
    q, k, v = mla.make_inputs(p, CPU, seed=2)
    out = mla.reference(q.double(), k.double(), v.double(), p)
    assert rel_l2(out, oracle64(q, k, p)) < 1e-12
    assert torch.all(out[:, :, : p.seq_q - p.seq_k] == 0)
    for case in ("decode-batch2", "decode-3-tokens-causal"):  # decode: the absorbed form, same numbers
        p = problem(**CASES[case])
        q, k, v = mla.make_inputs(p, CPU, seed=2)
        assert rel_l2(mla.reference(q.double(), k.double(), v.double(), p), oracle64(q, k, p)) < 1e-12


@pytest.mark.parametrize("case", ["decode-batch2", "decode-3-tokens-causal", "prefill-causal-lq<lk"])
def test_absorbed_equals_naive_in_float64(case):
    p = problem(**CASES[case])
    q, k, _ = mla.make_inputs(p, CPU, seed=3)
    w_uk, w_uv = mla.up_weights(p, CPU, torch.float64)
    naive = mla.naive_attention(q.double(), k.double(), w_uk, w_uv, p)
    absorbed = mla.absorbed_attention(q.double(), k.double(), w_uk, w_uv, p)
    assert rel_l2(absorbed, naive) < 1e-12


def test_deepseek_v3_dims_decode():
    p = problem(b=1, h=2, lq=1, lk=50, dims=V3)
    assert (p.head_dim, p.kv_heads) == (128, 1)
    q, k, v = mla.make_inputs(p, CPU)
    assert q.shape == (1, 2, 1, 192) and k.shape == (1, 1, 50, 576) and v.shape == (1, 1, 50, 512)
    assert v.data_ptr() == k.data_ptr()  # c_KV is a view of the cache, not a copy
    ref = oracle64(q, k, p)
    for backend in ("eager", "sdpa"):
        with torch.no_grad():
            assert rel_l2(mla.MLA.backend(backend).build(p, CPU)(q, k, v), ref) < 1e-5, backend


# Bound per dtype: c·eps with eps the unit roundoff (fp16 2^-11, bf16 2^-8). Inputs, weights,
# decompressed K/V and the output are each rounded once (plus accumulation): measured here
# 1.3e-3 (fp16) and 1.1e-2 (bf16) at worst for these shapes, c = 8 leaves margin.
EPS = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}


@pytest.mark.parametrize("dtype", list(EPS))
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_half_precision_within_the_dtypes_error(dtype, backend):
    for case in ("decode-batch2", "prefill-causal-lq<lk"):
        p = problem(**CASES[case], dtype=dtype)
        q, k, v = mla.make_inputs(p, CPU, seed=4)
        with torch.no_grad():
            out = mla.MLA.backend(backend).build(p, CPU)(q, k, v)
        assert out.dtype == p.torch_dtype
        assert rel_l2(out, oracle64(q, k, p)) < 8 * EPS[dtype], case


def test_triton_backend_interpreted_matches_reference():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    for case in ("decode-batch2", "decode-3-tokens-causal"):
        p = problem(**CASES[case])
        assert registry.decide(mla.MLA, "triton", p, CPU, check_availability=False).runnable
        q, k, v = mla.make_inputs(p, CPU, seed=5)
        with torch.no_grad():
            out = mla.MLA.backend("triton").build(p, CPU)(q, k, v)
        assert rel_l2(out, oracle64(q, k, p)) < 1e-5, case
    assert registry.decide(mla.MLA, "triton", problem(mode="fwd", lq=37), CPU).status == "unavailable"
    decision = registry.decide(mla.MLA, "triton", problem(mode="fwd", lq=37), CPU, check_availability=False)
    assert decision.status == "unsupported" and "absorbed decode form" in decision.reason


@pytest.mark.slow
def test_flex_both_forms():  # compiles twice: ~20-60 s each on this CPU
    for case, form in (("decode-batch2", "absorbed"), ("prefill-causal-lq<lk", "naive")):
        p = problem(**CASES[case], form=form, qk_rope_head_dim=16)  # flex: power-of-two head dims
        q, k, v = mla.make_inputs(p, CPU, seed=6)
        with torch.no_grad():
            out = mla.MLA.backend("flex").build(p, CPU)(q, k, v)
        assert rel_l2(out, oracle64(q, k, p)) < 1e-5, case


# ---------------------------------------------------------------- problem mapping and limits
def test_resolve_and_supports():
    p = problem()
    assert p.kv_heads == 1 and p.head_dim == 12 and mla.form(p) == "absorbed"
    assert mla.form(problem(mode="fwd", lq=37)) == "naive"
    assert "unknown form 'fast'" in mla.MLA.why_unsupported(problem(form="fast"))
    assert "bad kv_lora_rank 0" in mla.MLA.why_unsupported(problem(kv_lora_rank=0))
    bwd = registry.decide(mla.MLA, "eager", problem(mode="bwd", lq=37), CPU)
    assert bwd.status == "unsupported" and "does not support mode bwd" in bwd.reason


# ---------------------------------------------------------------- cost model
# Hand counts at B=1, H=2, r=4, dr=2, dn=3, dv=5, fp32:
TINY = {"kv_lora_rank": 4, "qk_rope_head_dim": 2, "qk_nope_head_dim": 3, "v_head_dim": 5}


def test_flops_hand_count():
    # absorbed decode, Lq=1, Lk=10: projections 2·1·2·1·4·(3+5) = 128; attention 2·1·2·10·(2·4+2) = 400
    assert mla.mla_flops(problem(h=2, lq=1, lk=10, dims=TINY)) == 528
    # naive prefill, Lq=Lk=10: decompression 2·1·2·10·4·8 = 1280; attention 2·1·2·100·(3+2+5) = 4000
    assert mla.mla_flops(problem(h=2, lq=10, lk=10, mode="fwd", dims=TINY)) == 5280
    # causal: 55 attended pairs of 100 -> attention 2·2·55·10 = 2200
    assert mla.mla_flops(problem(h=2, lq=10, lk=10, mode="fwd", causal=True, dims=TINY)) == 1280 + 2200


@pytest.mark.parametrize("form", ["naive", "absorbed"])
def test_flops_match_torchs_count_of_the_eager_matmuls(form):
    p = problem(b=2, h=3, lq=5, lk=29, mode="fwd", form=form)  # not causal: eager computes every pair
    q, k, v = mla.make_inputs(p, CPU)
    fn = mla.MLA.backend("eager").build(p, CPU)
    with FlopCounterMode(display=False) as counter:
        fn(q, k, v)
    assert counter.get_total_flops() == mla.mla_flops(p)


def test_bytes_and_kv_cache_hand_count():
    p = problem(h=2, lq=1, lk=10, dims=TINY)
    # q 2·1·5 = 10, latent cache 10·6 = 60, weights 2·(3+5)·4 = 64, out 2·5 = 10: 144 elements
    assert mla.mla_bytes(p) == 144 * 4
    assert mla.MLA.kv_cache_bytes(p) == 60 * 4
    # DeepSeek-V3 dims, bf16, 32k cache: 32768·576·2 bytes, vs GQA (8 KV heads of 128): 2·8·32768·128·2
    big = problem(lk=32768, dims=V3, dtype="bfloat16")
    assert mla.MLA.kv_cache_bytes(big) == 32768 * 576 * 2
    gqa = registry.get("gqa").resolve(Problem(heads=32, kv_heads=8, seq_q=1, seq_k=32768, head_dim=128,
                                              dtype="bfloat16", mode="decode"))
    from attnbench.variants.shared import kv_cache_bytes
    assert kv_cache_bytes(gqa) / mla.MLA.kv_cache_bytes(big) == pytest.approx(2 * 8 * 128 / 576)


def test_run_case_records_the_latent_cache_and_the_error():
    """run/case.py takes the variant's own kv_cache_bytes, and its fp64 oracle check works on MLA's
    inputs (the attention entropy, defined on q·kᵀ of equal widths, is left out)."""
    from attnbench.measure.timing import TimingPolicy
    from attnbench.run.case import run_case
    from attnbench.run.plan import Case

    p = problem(b=2, lk=37)
    fast = TimingPolicy(min_samples=1, min_time=0.0, max_time=0.05, warmup_time=0.0, warmup_calls=1)
    rec = run_case(Case("mla", "eager", p), CPU, fast, None)
    assert rec["status"] == "ok" and rec["kv_cache_bytes"] == 2 * 37 * (24 + 8) * 4
    assert rec["error"]["rel_l2"] < 1e-5 and rec["attn_entropy"] is None
