"""Positional variants: rope, alibi, t5_bias, transformer_xl. Each eager reference is checked
against a formulation written here independently (complex rotation, the paper's slopes, a scalar
bucket function, the per-(i, j) Transformer-XL score); every other backend against eager;
FlexAttention (compiles: seconds per shape on CPU) in one forward shape per variant."""

import math

import pytest
import torch

import attnbench.variants  # noqa: F401
import attnbench.variants.positional as pos
from attnbench.core.problem import Problem
from attnbench.variants import registry

CPU = torch.device("cpu")


def problem(name, lq=12, lk=None, causal=False, heads=4, kv_heads=None, d=8, dtype="float32", mode="fwd", **params):
    v = registry.get(name)
    raw = Problem(batch=2, heads=heads, kv_heads=kv_heads or heads, seq_q=lq, seq_k=lk or 0, head_dim=d,
                  dtype=dtype, causal=causal, mode=mode, params=tuple(sorted({**v.defaults, **params}.items())))
    return v, v.resolve(raw)


def inputs(p, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(p.batch, p.heads, p.seq_q, p.head_dim, generator=g),
            torch.randn(p.batch, p.kv_heads, p.seq_k, p.head_dim, generator=g),
            torch.randn(p.batch, p.kv_heads, p.seq_k, p.head_dim, generator=g))


def dense(q, k, v, causal, bias=None, scores=None):
    """Independent float64 softmax attention with an optional (H, Lq, Lk) bias."""
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = scores if scores is not None else q.double() @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if bias is not None:
        s = s + bias.double()
    lq, lk = s.shape[-2:]
    if causal:
        hide = torch.tensor([[j > i + lk - lq for j in range(lk)] for i in range(lq)])
        s = s.masked_fill(hide, float("-inf"))
    return torch.softmax(s, -1) @ v


def rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ---------------------------------------------------------------- references vs independent math


@pytest.mark.parametrize("causal,lk", [(False, None), (True, 20)])
def test_rope_matches_complex_rotation(causal, lk):
    v, p = problem("rope", lq=12, lk=lk, causal=causal, kv_heads=2, base=100.0)
    q, k, vv = inputs(p)
    d = p.head_dim

    def rot(x, start):  # pair (x[m], x[m + D/2]) as a complex number, times e^{i·pos·θ_m}
        z = torch.complex(x[..., :d // 2].double(), x[..., d // 2:].double())
        theta = torch.tensor([100.0 ** (-2 * m / d) for m in range(d // 2)], dtype=torch.float64)
        pos_ = torch.arange(start, start + x.shape[-2], dtype=torch.float64)[:, None]
        z = z * torch.polar(torch.ones_like(pos_ * theta), pos_ * theta)
        return torch.cat([z.real, z.imag], -1)

    want = dense(rot(q, p.seq_k - p.seq_q), rot(k, 0), vv, causal)
    assert torch.allclose(v.reference(q, k, vv, p).double(), want, atol=1e-5)


def test_rope_scores_depend_on_relative_position_only():
    cq, sq, ck, sk = pos.rope_tables(4, 4, 8, 10000.0)
    x, y = torch.randn(8), torch.randn(8)
    s = pos.rotate(x.expand(4, 8), cq, sq) @ pos.rotate(y.expand(4, 8), ck, sk).T  # (i, j)
    assert torch.allclose(s[1, 0], s[3, 2], atol=1e-5) and torch.allclose(s[0, 2], s[1, 3], atol=1e-5)


PAPER_SLOPES = {8: [2.0 ** -(h + 1) for h in range(8)],
                6: [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3],
                4: [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]}


@pytest.mark.parametrize("heads", [8, 6])
@pytest.mark.parametrize("causal,lk", [(False, None), (True, 15)])
def test_alibi_matches_paper_slopes(heads, causal, lk):
    assert pos.alibi_slopes(heads).tolist() == PAPER_SLOPES[heads]
    v, p = problem("alibi", lq=10, lk=lk, causal=causal, heads=heads, kv_heads=heads // 2)
    q, k, vv = inputs(p)
    off = p.seq_k - p.seq_q
    bias = torch.tensor([[[-m * abs(i + off - j) for j in range(p.seq_k)] for i in range(p.seq_q)]
                         for m in PAPER_SLOPES[heads]])
    assert torch.allclose(v.reference(q, k, vv, p).double(), dense(q, k, vv, causal, bias), atol=1e-5)
    pic = v.picture(p)
    assert torch.allclose(pic.nan_to_num(0.0), bias[0].float() * (~pic.isnan()))


def t5_bucket_scalar(rel, bidirectional, num_buckets, max_distance):
    """T5's bucket of one relative position (key − query), written with Python scalars."""
    ret = 0
    if bidirectional:
        num_buckets //= 2
        if rel > 0:
            ret = num_buckets
        n = abs(rel)
    else:
        n = max(-rel, 0)
    exact = num_buckets // 2
    if n < exact:
        return ret + n
    large = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact))
    return ret + min(large, num_buckets - 1)


@pytest.mark.parametrize("causal", [False, True])
def test_t5_bias_matches_scalar_buckets(causal):
    v, p = problem("t5_bias", lq=20, lk=20 + 40 * causal, causal=causal, num_buckets=8, max_distance=12)
    q, k, vv = inputs(p)
    table = pos.t5_table(p)
    off = p.seq_k - p.seq_q
    bias = torch.zeros(p.heads, p.seq_q, p.seq_k)
    for i in range(p.seq_q):
        for j in range(p.seq_k):
            bias[:, i, j] = table[t5_bucket_scalar(j - (i + off), not causal, 8, 12)]
    assert torch.allclose(pos.t5_bias(p), bias)
    assert torch.allclose(v.reference(q, k, vv, p).double(), dense(q, k, vv, causal, bias), atol=1e-5)
    buckets = pos.t5_buckets(torch.arange(-300, 300), True, 32, 128)
    assert buckets.min() == 0 and buckets.max() == 31  # every bucket in range, the far ones saturate


def xl_loops(q, k, v, p):
    """score(i, j) = ((q_i + u)·k_j + (q_i + v)·(R_{i'−j} W_r)) / √D with R the sinusoid,
    computed pair by pair."""
    w_r, u, vb = (t.double() for t in pos.xl_weights(p))
    b_, h_, lq, d = q.shape
    lk, g = k.shape[-2], q.shape[1] // k.shape[1]
    scores = torch.zeros(b_, h_, lq, lk, dtype=torch.float64)
    for i in range(lq):
        for j in range(lk):
            dist = i + lk - lq - j
            r = torch.tensor([math.sin(dist * 10000 ** (-2 * m / d)) for m in range(d // 2)]
                             + [math.cos(dist * 10000 ** (-2 * m / d)) for m in range(d // 2)], dtype=torch.float64)
            for h in range(h_):
                kj, qi = k[:, h // g, j].double(), q[:, h, i].double()  # (B, D)
                content = ((qi + u[h]) * kj).sum(-1)
                position = (qi + vb[h]) @ (r @ w_r[h])
                scores[:, h, i, j] = (content + position) / math.sqrt(d)
    return dense(q, k, v, p.causal, scores=scores)


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_xl_matches_per_pair_formula(causal):
    v, p = problem("transformer_xl", lq=6, causal=causal, heads=2, kv_heads=1, mem_len=5)
    assert p.seq_k == 11 and p.param("mem_len") == 5
    q, k, vv = inputs(p)
    want = xl_loops(q, k, vv, p)
    assert torch.allclose(v.reference(q, k, vv, p).double(), want, atol=1e-5)
    w_r, u, vb = pos.xl_weights(p)
    dist = torch.arange(p.seq_k - 1, -p.seq_q, -1)
    r_all = pos.sinusoid(dist, p.head_dim) @ w_r
    for chunk in (1, 4, 6):  # row chunks, including a ragged last one
        got = pos.xl_chunked(q, k, vv, r_all, u, vb, causal, chunk)
        assert torch.allclose(got.double(), want, atol=1e-5), chunk


def test_rel_shift_moves_each_row():
    x = torch.arange(12.0).view(3, 4)  # Lq = 3, P = 4
    assert pos.rel_shift(x)[:, :2].tolist() == [[2.0, 3.0], [5.0, 6.0], [8.0, 9.0]]  # row i from column 2 − i


# ---------------------------------------------------------------- backends vs eager


BACKEND_CASES = [("rope", {}), ("alibi", {}), ("t5_bias", dict(num_buckets=8, max_distance=12)),
                 ("transformer_xl", dict(mem_len=7))]


@pytest.mark.parametrize("name,kw", BACKEND_CASES)
@pytest.mark.parametrize("mode", ["fwd+bwd", "decode"])
def test_backends_match_eager(name, kw, mode):
    for causal, kv_heads in ((False, 4), (True, 2)):
        lq, lk = (1, 30) if mode == "decode" else (20, None)
        v, p = problem(name, lq=lq, lk=lk, causal=causal, kv_heads=kv_heads, mode=mode, **kw)
        q, k, vv = (t.requires_grad_() for t in inputs(p))
        ref = v.backend("eager").build(p, CPU)(q, k, vv)
        assert torch.allclose(ref, v.reference(q, k, vv, p), atol=1e-6)
        dout = torch.randn_like(ref)
        g_ref = torch.autograd.grad(ref, (q, k, vv), dout)
        for b in v.backends:
            if b.name in ("eager", "flex"):
                continue
            out = b.build(p, CPU)(q, k, vv)
            assert torch.allclose(out, ref, atol=1e-5), (name, b.name, causal)
            for g1, g2 in zip(torch.autograd.grad(out, (q, k, vv), dout), g_ref):
                assert torch.allclose(g1, g2, atol=1e-4), (name, b.name, causal)


@pytest.mark.parametrize("name,backend,dtype", [("alibi", "sdpa", torch.bfloat16),
                                                ("transformer_xl", "chunked", torch.float16)])
def test_low_precision_error_bounded_by_reference_error(name, backend, dtype):
    v, p = problem(name, lq=64, d=16, causal=True, dtype=str(dtype).split(".")[1], mem_len=32)
    q, k, vv = inputs(p)
    ref32 = v.reference(q, k, vv, p)
    ref_low = v.reference(*(t.to(dtype) for t in (q, k, vv)), p)
    out = v.backend(backend).build(p, CPU)(*(t.to(dtype) for t in (q, k, vv)))
    assert out.dtype == dtype
    assert rel_l2(out, ref32) <= 3 * rel_l2(ref_low, ref32) + 1e-4


@pytest.mark.parametrize("name,causal", [("rope", False), ("alibi", True), ("t5_bias", True)])
def test_flex_forward_matches_eager(name, causal):
    v, p = problem(name, lq=128, d=16, causal=causal)
    q, k, vv = inputs(p)
    out = v.backend("flex").build(p, CPU)(q, k, vv)
    assert torch.allclose(out, v.reference(q, k, vv, p), atol=1e-5)


# ---------------------------------------------------------------- cost models and reasons


def test_flop_models():
    v, p = problem("rope", lq=16, lk=24, causal=True, kv_heads=2)
    rot = 6 * p.batch * (p.heads * p.seq_q + p.kv_heads * p.seq_k) * p.head_dim // 2
    assert v.flops(p) == 4 * p.batch * p.heads * p.head_dim * p.attended_pairs() + rot
    v, p = problem("alibi", lq=16, causal=True)
    assert v.flops(p) == 4 * p.batch * p.heads * p.head_dim * 16 * 17 // 2
    v, p = problem("transformer_xl", lq=16, causal=True, mem_len=8)
    pairs = sum(min(i + 8 + 1, 24) for i in range(16))
    assert v.flops(p) == 6 * p.batch * p.heads * p.head_dim * pairs + 2 * p.heads * 24 * p.head_dim ** 2


def test_transformer_xl_resolve_memory_from_kv_seq():
    _, p = problem("transformer_xl", lq=100)
    assert (p.seq_k, p.param("mem_len")) == (612, 512)
    _, p = problem("transformer_xl", lq=1, lk=300, mode="decode")
    assert p.param("mem_len") == 299


@pytest.mark.parametrize("name,kw,needle", [
    ("rope", dict(d=7), "even head_dim"),
    ("transformer_xl", dict(lq=20, lk=10), "seq_k >= seq_q"),
    ("t5_bias", dict(num_buckets=7), "num_buckets"),
    ("t5_bias", dict(max_distance=4), "max_distance"),
    ("alibi", dict(heads=4, kv_heads=3), "divide"),
])
def test_unsupported_problems_have_reasons(name, kw, needle):
    v, p = problem(name, **kw)
    reason = v.why_unsupported(p)
    assert reason and needle in reason


def test_pictures():
    for name in ("rope", "alibi", "t5_bias", "transformer_xl"):
        v, p = problem(name, lq=16, causal=True, mem_len=4)
        pic = v.picture(p)
        assert pic.shape == (p.seq_q, p.seq_k)
        assert pic[-1].isfinite().all() and pic[0, -1].isnan()  # causal: hidden pairs are NaN
