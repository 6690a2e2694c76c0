"""Exact variants (mha, causal, cross, mqa, gqa, flash): every backend available on the CPU
against an independent float64 oracle, with the relative rule of flash-attention's tests:

    err(backend in dtype vs fp64 oracle) <= 3 * err(oracle computed in dtype vs fp64 oracle) + 1e-6

Causal masks with Lq != Lk are bottom-right aligned. With Lq > Lk the first Lq - Lk queries see no
key at all; we expect zeros for those rows (eager's choice). torch 2.13 SDPA (`causal_lower_right`)
also returns zeros on the CPU, despite the UserWarning "Lower right causal bias will produce NaNs
in the output when seq_len_q > seq_len_kv"; flex and the tiled eager loop return zeros too.
"""

import functools
import math
import time
import warnings

import pytest
import torch
import torch.nn.functional as F

import attnbench
from attnbench.core.problem import Problem
from attnbench.variants import registry

CPU = torch.device("cpu")
EXACT = ("mha", "causal", "cross", "mqa", "gqa", "flash")
DTYPES = ("float32", "float16", "bfloat16")
SLOW_BACKENDS = ("flex", "hf-flex")  # compiles take seconds: tested on two shapes below (hf-flex: test_hf_backends)


def oracle(q, k, v, causal: bool, compute=torch.float64):
    """softmax(QKᵀ/√D, bottom-right causal)·V in `compute` precision, written independently of
    attnbench: K/V heads indexed per query head, the mask from torch.tril with offset Lk - Lq,
    rows with no visible key set to 0. q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D) -> (B, Hq, Lq, D)."""
    q, k, v = (t.to(compute) for t in (q, k, v))
    hq, hkv, lq, lk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    kv_of = torch.arange(hq) // (hq // hkv)  # query head h reads K/V head h // G
    k, v = k[:, kv_of], v[:, kv_of]
    s = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])  # (B, Hq, Lq, Lk)
    allowed = torch.ones(lq, lk, dtype=torch.bool)
    if causal:
        allowed = allowed.tril(diagonal=lk - lq)  # j <= i + (Lk - Lq)
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.where(allowed.any(-1)[:, None], p, torch.zeros((), dtype=compute))  # empty rows -> 0
    return torch.einsum("bhij,bhjd->bhid", p, v)


def max_err(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


def inputs(p: Problem, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(p.batch, p.heads, p.seq_q, p.head_dim, generator=g)
    k = torch.randn(p.batch, p.kv_heads, p.seq_k, p.head_dim, generator=g)
    v = torch.randn(p.batch, p.kv_heads, p.seq_k, p.head_dim, generator=g)
    return tuple(t.to(p.torch_dtype) for t in (q, k, v))


def check_close(out, q, k, v, p: Problem):
    """The relative rule against the fp64 oracle of the same (rounded) inputs."""
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all(), "non-finite output"
    truth = oracle(q, k, v, p.causal)
    own = max_err(oracle(q, k, v, p.causal, compute=q.dtype), truth)
    err = max_err(out, truth)
    assert err <= 3 * own + 1e-6, f"err {err:.3g} > 3 × {own:.3g} + 1e-6 (oracle in {p.dtype})"


# (variant, axes before resolve): kv_heads/seq_k 0 = the variant's choice
SHAPES = {
    "mha": [dict(heads=4, kv_heads=4, seq_q=48, seq_k=48), dict(heads=4, kv_heads=4, seq_q=48, seq_k=48, causal=True)],
    "causal": [dict(heads=4, kv_heads=4, seq_q=40, seq_k=40), dict(heads=4, kv_heads=4, seq_q=24, seq_k=56),
               dict(heads=4, kv_heads=4, seq_q=56, seq_k=24)],
    "cross": [dict(heads=4, kv_heads=0, seq_q=40, seq_k=0), dict(heads=4, kv_heads=4, seq_q=24, seq_k=56, causal=True)],
    "mqa": [dict(heads=4, kv_heads=0, seq_q=33, seq_k=33, causal=True), dict(heads=4, kv_heads=1, seq_q=1, seq_k=70)],
    "gqa": [dict(heads=8, kv_heads=0, seq_q=40, seq_k=40), dict(heads=8, kv_heads=2, seq_q=20, seq_k=52, causal=True)],
    "flash": [dict(heads=2, kv_heads=2, seq_q=300, seq_k=300, causal=True),  # > one 256-key tile
              dict(heads=4, kv_heads=2, seq_q=290, seq_k=40, causal=True),  # Lq > Lk: empty rows
              dict(heads=2, kv_heads=1, seq_q=17, seq_k=270)],
}


def resolved(variant: str, axes: dict, dtype: str = "float32", mode: str = "fwd") -> Problem:
    raw = Problem(batch=1, head_dim=32, dtype=dtype, mode=mode, **axes)
    p = registry.get(variant).resolve(raw)
    assert registry.get(variant).why_unsupported(p) is None, (variant, p)
    return p


def _cases():
    for variant in EXACT:
        for i, axes in enumerate(SHAPES[variant]):
            for b in registry.get(variant).backends:
                if b.test_only or b.name in SLOW_BACKENDS or b.why_unavailable(CPU):
                    continue
                for dtype in DTYPES:
                    yield pytest.param(variant, i, b.name, dtype, id=f"{variant}-{i}-{b.name}-{dtype}")


@functools.lru_cache(maxsize=None)
def problem_and_oracle(variant: str, shape: int, dtype: str):
    """The resolved problem, its inputs, the fp64 truth and the oracle's own error in `dtype`
    (shared by every backend of one variant, shape and dtype)."""
    p = resolved(variant, SHAPES[variant][shape], dtype)
    q, k, v = inputs(p)
    truth = oracle(q, k, v, p.causal)
    return p, (q, k, v), truth, max_err(oracle(q, k, v, p.causal, compute=q.dtype), truth)


@pytest.mark.parametrize("variant,shape,backend,dtype", list(_cases()))
def test_backend_matches_oracle(variant, shape, backend, dtype):
    p, (q, k, v), truth, own = problem_and_oracle(variant, shape, dtype)
    b = registry.get(variant).backend(backend)
    reason = b.why_unsupported(p, CPU)
    if reason is not None:  # declared unsupported: a reason, not a silent wrong answer
        assert isinstance(reason, str) and reason
        pytest.skip(f"declared unsupported: {reason}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Lower right causal bias")
        out = b.build(p, CPU)(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all(), "non-finite output"
    err = max_err(out, truth)
    assert err <= 3 * own + 1e-6, f"err {err:.3g} > 3 × {own:.3g} + 1e-6 (oracle in {dtype})"


def test_variant_resolution():
    assert resolved("mqa", dict(heads=8, kv_heads=0, seq_q=16, seq_k=16)).kv_heads == 1
    assert resolved("gqa", dict(heads=8, kv_heads=0, seq_q=16, seq_k=16)).kv_heads == 2
    assert resolved("gqa", dict(heads=2, kv_heads=0, seq_q=16, seq_k=16)).kv_heads == 1
    assert resolved("causal", dict(heads=4, kv_heads=4, seq_q=16, seq_k=16)).causal
    assert resolved("cross", dict(heads=4, kv_heads=0, seq_q=40, seq_k=0)).seq_k == 20
    assert resolved("mha", dict(heads=4, kv_heads=0, seq_q=40, seq_k=0)).seq_k == 40
    assert "kv_heads == heads" in registry.get("mha").why_unsupported(Problem(heads=8, kv_heads=2))
    assert "kv_heads == 1" in registry.get("mqa").why_unsupported(Problem(heads=8, kv_heads=2))
    assert "divide" in registry.get("gqa").why_unsupported(Problem(heads=8, kv_heads=3))
    assert registry.get("causal").why_unsupported(Problem(causal=False))


def test_reference_matches_oracle():
    """Each variant's own reference (the runner's oracle) in fp32, incl. empty causal rows."""
    for variant in EXACT:
        for axes in SHAPES[variant]:
            p = resolved(variant, axes)
            q, k, v = inputs(p)
            out = registry.get(variant).reference(q, k, v, p)
            assert max_err(out, oracle(q, k, v, p.causal)) < 1e-5, (variant, axes)


@pytest.mark.parametrize("lq,lk", [(9, 4), (5, 2)])
def test_rows_without_visible_keys_are_zero(lq, lk):
    """Lq > Lk causal: queries 0..Lq-Lk-1 see no key. Every CPU backend returns 0 there."""
    p = resolved("causal", dict(heads=2, kv_heads=2, seq_q=lq, seq_k=lk))
    q, k, v = inputs(p)
    for b in registry.get("causal").backends:
        if b.name in SLOW_BACKENDS or b.why_unavailable(CPU) or b.why_unsupported(p, CPU):
            continue
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Lower right causal bias")
            out = b.build(p, CPU)(q, k, v)
        assert torch.equal(out[:, :, : lq - lk], torch.zeros_like(out[:, :, : lq - lk])), b.name
        assert out[:, :, lq - lk:].abs().sum() > 0, b.name


@pytest.mark.parametrize("variant,hq,hkv,lq,lk,causal", [("gqa", 8, 2, 32, 32, True), ("gqa", 8, 4, 16, 48, False),
                                                        ("mqa", 4, 1, 32, 32, False), ("mqa", 4, 1, 1, 64, True)])
def test_gqa_mqa_against_sdpa_enable_gqa(variant, hq, hkv, lq, lk, causal):
    p = resolved(variant, dict(heads=hq, kv_heads=hkv, seq_q=lq, seq_k=lk, causal=causal))
    q, k, v = inputs(p)
    if causal and lq != lk:
        from torch.nn.attention.bias import causal_lower_right
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(lq, lk), enable_gqa=True)
    else:
        want = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    for b in registry.get(variant).backends:
        if b.test_only or b.name in SLOW_BACKENDS or b.why_unavailable(CPU):
            continue
        got = b.build(p, CPU)(q, k, v)
        assert max_err(got, want) < 1e-5, b.name


@pytest.mark.parametrize("variant,axes", [
    ("gqa", dict(heads=8, kv_heads=2, seq_q=40, seq_k=72, causal=True)),  # bottom-right, Lq < Lk
    ("causal", dict(heads=4, kv_heads=4, seq_q=72, seq_k=40)),  # Lq > Lk: empty rows
])
def test_flex_backend(variant, axes):
    p = resolved(variant, axes)
    b = registry.get(variant).backend("flex")
    if b.why_unavailable(CPU):
        pytest.skip(b.why_unavailable(CPU))
    q, k, v = inputs(p)
    check_close(b.build(p, CPU)(q, k, v), q, k, v, p)
    assert "backward" in b.why_unsupported(resolved(variant, axes, mode="bwd"), CPU)


def grads(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    return torch.autograd.grad(fn(q, k, v), (q, k, v), dout)


@pytest.mark.parametrize("variant,axes", [
    ("mha", dict(heads=4, kv_heads=4, seq_q=32, seq_k=32, causal=True)),
    ("cross", dict(heads=4, kv_heads=4, seq_q=20, seq_k=44, causal=True)),
    ("causal", dict(heads=4, kv_heads=4, seq_q=44, seq_k=20)),  # empty rows: zero gradient there
    ("gqa", dict(heads=8, kv_heads=2, seq_q=24, seq_k=24, causal=False)),
])
def test_backward_eager_vs_sdpa(variant, axes):
    p = resolved(variant, axes, mode="bwd")
    var = registry.get(variant)
    q, k, v = inputs(p)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    want = grads(lambda a, b, c: oracle(a, b, c, p.causal), q.double(), k.double(), v.double(), dout.double())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Lower right causal bias")
        ge = grads(var.backend("eager").build(p, CPU), q, k, v, dout)
        gs = grads(var.backend("sdpa").build(p, CPU), q, k, v, dout)
    for name, a, b, w in zip("qkv", ge, gs, want):
        assert a.shape == b.shape == w.shape
        assert torch.isfinite(a).all() and torch.isfinite(b).all(), name
        assert max_err(a, b) < 1e-4, name
        assert max_err(a, w) < 1e-4, name
    if p.seq_q > p.seq_k and p.causal:  # queries that see no key get no gradient
        assert torch.equal(ge[0][:, :, : p.seq_q - p.seq_k], torch.zeros_like(ge[0][:, :, : p.seq_q - p.seq_k]))
        assert torch.equal(gs[0][:, :, : p.seq_q - p.seq_k], torch.zeros_like(gs[0][:, :, : p.seq_q - p.seq_k]))


def test_library_attend_matches_oracle():
    q, k, v = inputs(Problem(batch=1, heads=8, kv_heads=2, seq_q=24, seq_k=40, head_dim=32))
    out = attnbench.attend(q, k, v, variant="gqa", backend="sdpa", causal=True)
    assert max_err(out, oracle(q, k, v, True)) < 1e-5


@pytest.mark.parametrize("scores", ["qk", "kq", "auto"])
@pytest.mark.parametrize("hq,hkv,lq,lk,causal", [
    (32, 1, 1, 300, False),  # MQA decode: 32 rows
    (8, 2, 16, 70, True),  # 64 rows: the last size auto times, causal mask on it
    (8, 2, 17, 70, True),  # 68 rows: auto takes Q·Kᵀ untimed
    (4, 4, 9, 4, True),  # Lq > Lk: rows without a visible key
    (4, 2, 1, 513, False),  # decode, odd cache length
])
def test_grouped_score_orientations_match_oracle(hq, hkv, lq, lk, causal, scores):
    """grouped computes the scores as Q·Kᵀ or as K·Qᵀ transposed; each, and auto's pick,
    against the fp64 oracle."""
    p = resolved("gqa", dict(heads=hq, kv_heads=hkv, seq_q=lq, seq_k=lk, causal=causal)).with_params(scores=scores)
    q, k, v = inputs(p)
    out = registry.get("gqa").backend("grouped").build(p, CPU)(q, k, v)
    check_close(out, q, k, v, p)


def test_grouped_auto_keeps_the_orientation_it_timed_faster(monkeypatch):
    """auto calls faster_scores once, at setup, for few rows per KV head, and the call then uses
    that orientation; with many rows it takes Q·Kᵀ without timing."""
    from attnbench.variants import exact

    used, timed = [], []
    real = exact._scores
    monkeypatch.setattr(exact, "_scores", lambda qg, k, scores: used.append(scores) or real(qg, k, scores))
    monkeypatch.setattr(exact, "faster_scores", lambda p, d: timed.append(p) or "kq")
    backend = registry.get("gqa").backend("grouped")
    decode = resolved("gqa", dict(heads=8, kv_heads=2, seq_q=1, seq_k=100))
    fn = backend.build(decode, CPU)
    assert len(timed) == 1 and not used  # timed at setup, nothing computed yet
    fn(*inputs(decode))
    assert used == ["kq"] and len(timed) == 1
    prefill = resolved("gqa", dict(heads=8, kv_heads=2, seq_q=100, seq_k=100))  # 400 rows
    backend.build(prefill, CPU)(*inputs(prefill))
    assert used == ["kq", "qk"] and len(timed) == 1


def test_faster_scores_picks_by_time(monkeypatch):
    """The pick follows the clock: made to see K·Qᵀ as slow, it answers qk, and the other way. The
    delay (50 ms) is far past a stall of the other side on a loaded machine (2 ms was not: a
    fresh-clone run beside another test run picked wrong once)."""
    from attnbench.variants import exact

    p = resolved("gqa", dict(heads=8, kv_heads=2, seq_q=1, seq_k=64))
    real = exact._scores
    for slow, want in (("kq", "qk"), ("qk", "kq")):
        def delayed(qg, k, scores, slow=slow):
            if scores == slow:
                time.sleep(0.05)
            return real(qg, k, scores)

        monkeypatch.setattr(exact, "_scores", delayed)
        assert exact.faster_scores(p, CPU, calls=3) == want


def test_grouped_unknown_scores_is_unsupported_with_the_choices():
    p = resolved("gqa", dict(heads=8, kv_heads=2, seq_q=1, seq_k=64)).with_params(scores="fast")
    why = registry.get("gqa").backend("grouped").why_unsupported(p, CPU)
    assert why == "unknown scores 'fast'; accepted: auto, qk, kq"


@pytest.mark.parametrize("lq,lk", [(1, 300), (300, 1000), (256, 256)])
def test_flex_gets_a_full_block_mask_rather_than_none(lq, lk):
    """Without a mask FlexAttention is still handed a BlockMask, every tile full: called with none,
    its compiled CPU kernel held memory growing as B·H·Lq·Lk (backends/flex.full_block_mask)."""
    from attnbench.variants.backends.flex import full_block_mask

    bm = full_block_mask(lq, lk, 128, torch.device("cpu"))
    assert bm.shape[-2:] == (lq, lk)
    assert bool(bm.to_dense().all())  # every (query tile, key tile) pair attended
    assert int(bm.kv_num_blocks.sum()) == 0  # as full tiles: no mask function evaluated
