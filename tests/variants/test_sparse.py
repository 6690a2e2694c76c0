"""Sparse patterns (attnbench/patterns.py) and the sparse variants: sliding_window, longformer,
bigbird, strided. Masks are checked against masks built here with explicit loops over (i, j);
every backend against the eager reference; FlexAttention (it compiles: seconds per shape on
CPU) in one forward shape per variant."""

import math

import pytest
import torch

import attnbench.variants  # noqa: F401
import attnbench.variants.sparse as sparse
from attnbench.core.problem import Problem
from attnbench.run import plan as sweep
from attnbench.variants import patterns as pat
from attnbench.variants import registry

CPU = torch.device("cpu")


def problem(name, lq=24, lk=None, causal=False, heads=2, kv_heads=None, d=8, dtype="float32", mode="fwd", **params):
    v = registry.get(name)
    raw = Problem(batch=2, heads=heads, kv_heads=kv_heads or heads, seq_q=lq, seq_k=lk or lq, head_dim=d,
                  dtype=dtype, causal=causal, mode=mode, params=tuple(sorted({**v.defaults, **params}.items())))
    return v, v.resolve(raw)


def inputs(p, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(p.batch, p.heads, p.seq_q, p.head_dim, generator=g)
    k = torch.randn(p.batch, p.kv_heads, p.seq_k, p.head_dim, generator=g)
    v = torch.randn(p.batch, p.kv_heads, p.seq_k, p.head_dim, generator=g)
    return tuple(t.to(dtype) for t in (q, k, v))


def dense(q, k, v, mask):
    """Independent masked softmax attention in float64 (mask: (Lq, Lk) bool)."""
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = q.double() @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v


def rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ---------------------------------------------------------------- masks built with loops


def loop_window(lq, lk, w, causal):
    m = torch.zeros(lq, lk, dtype=torch.bool)
    for i in range(lq):
        ip = i + lk - lq
        for j in range(lk):
            m[i, j] = (ip - w < j <= ip) if causal else (ip - w < j < ip + w)
    return m


def loop_blocks(n, block, rule, causal):
    """Token mask of a block rule(r, c) -> bool over n tokens, and-ed with j <= i if causal."""
    m = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            m[i, j] = rule(i // block, j // block) and (j <= i or not causal)
    return m


def longformer_rule(half, g, dil):
    return lambda r, c: (abs(r - c) <= half * dil and (r - c) % dil == 0) or r < g or c < g


def strided_rule(s):
    return lambda r, c: abs(r - c) < s or (r - c) % s == 0


def fixed_rule(s, c_sum):
    return lambda r, c: r // s == c // s or c % s >= s - c_sum


@pytest.mark.parametrize("lq,lk", [(9, 9), (5, 12), (1, 12)])
@pytest.mark.parametrize("w", [1, 3, 20])
@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_mask_and_mask_mod(lq, lk, w, causal):
    want = loop_window(lq, lk, w, causal)
    assert torch.equal(pat.sliding_window_mask(lq, lk, w, causal), want)
    qi, kj = torch.arange(lq)[:, None], torch.arange(lk)[None, :]
    mod = pat.sliding_window_mod(w, lk - lq)(0, 0, qi, kj)  # the flex mask_mod on the full grid
    assert torch.equal(mod & (kj <= qi + lk - lq) if causal else mod, want)


def test_layout_mask_mod_equals_layout_to_mask():
    layout = pat.bigbird_layout(5, 3, 2, 1, seed=3)
    for lq in (20, 17):  # ragged last block included
        token = pat.layout_to_mask(layout, 4, lq, lq)
        qi, kj = torch.arange(lq)[:, None], torch.arange(lq)[None, :]
        assert torch.equal(pat.layout_mask_mod(layout, 4)(0, 0, qi, kj), token)
        assert torch.equal(token, loop_blocks(lq, 4, lambda r, c: bool(layout[r, c]), False))


@pytest.mark.parametrize("causal", [False, True])
def test_layouts_match_loop_rules(causal):
    for n, b in ((22, 2), (21, 2)):  # 11 blocks; the second with a ragged last block
        nb = pat.num_blocks(n, b)
        cases = [(pat.longformer_layout(nb, 1, 1), longformer_rule(1, 1, 1)),
                 (pat.longformer_layout(nb, 2, 0, dilation=2), longformer_rule(2, 0, 2)),
                 (pat.strided_layout(nb, 3), strided_rule(3)),
                 (pat.fixed_layout(nb, 4, 2), fixed_rule(4, 2))]
        for layout, rule in cases:
            assert torch.equal(pat.pattern_mask(layout, b, n, n, causal), loop_blocks(n, b, rule, causal))


@pytest.mark.parametrize("causal", [False, True])
def test_bigbird_layout_structure_and_seed(causal):
    nb, w, g, r = 12, 3, 2, 2
    lay = pat.bigbird_layout(nb, w, g, r, seed=7, causal=causal)
    assert torch.equal(lay, pat.bigbird_layout(nb, w, g, r, seed=7, causal=causal))  # deterministic
    assert not torch.equal(lay, pat.bigbird_layout(nb, w, g, r, seed=8, causal=causal))
    glob = {0, nb - 1}  # BigBird-ITC: first and last block
    for row in range(nb):
        base = {c for c in range(nb) if abs(row - c) <= 1 or c in glob or row in glob}
        got = set(lay[row].nonzero().flatten().tolist())
        assert base <= got
        extra = got - base
        if row in glob:
            assert not extra
        else:
            pool = {c for c in range(nb) if c not in base and (c <= row or not causal)}
            assert extra <= pool and len(extra) == min(r, len(pool))


# ---------------------------------------------------------------- variant references


def independent_mask(name, p):
    n = p.seq_q
    if name == "sliding_window":
        return loop_window(p.seq_q, p.seq_k, p.param("window"), p.causal)
    b = p.param("block")
    if name == "longformer":
        rule = longformer_rule(p.param("window") // (2 * b), p.param("global_tokens") // b, p.param("dilation"))
    elif name == "strided":
        s = p.param("stride") // b
        rule = strided_rule(s) if p.param("pattern") == "strided" else fixed_rule(s, p.param("summary"))
    else:  # bigbird: random blocks come from the seeded layout (checked structurally above)
        lay = pat.bigbird_layout(pat.num_blocks(n, b), p.param("window_blocks"), p.param("global_blocks"),
                                 p.param("random_blocks"), p.param("seed"), p.causal)
        rule = lambda r, c: bool(lay[r, c])  # noqa: E731
    return loop_blocks(n, b, rule, p.causal)


CASES = [
    ("sliding_window", dict(window=5)),
    ("sliding_window", dict(window=4, lk=30)),
    ("longformer", dict(window=8, global_tokens=4, block=4)),
    ("longformer", dict(window=8, global_tokens=0, dilation=2, block=2, lq=23)),
    ("bigbird", dict(block=4, window_blocks=3, global_blocks=2, random_blocks=1, seed=1)),
    ("strided", dict(block=4, stride=8)),
    ("strided", dict(block=2, stride=6, pattern="fixed", summary=2, lq=23)),
]


@pytest.mark.parametrize("name,kw", CASES)
@pytest.mark.parametrize("causal", [False, True])
def test_reference_and_flops_against_loop_mask(name, kw, causal):
    kw = dict(kw)
    v, p = problem(name, lq=kw.pop("lq", 24), lk=kw.pop("lk", None), causal=causal, **kw)
    assert v.why_unsupported(p) is None
    mask = independent_mask(name, p)
    q, k, vv = inputs(p)
    assert torch.allclose(v.reference(q, k, vv, p).double(), dense(q, k, vv, mask), atol=1e-5)
    assert v.flops(p) == 4 * p.batch * p.heads * p.head_dim * int(mask.sum())
    assert torch.equal(v.picture(p) > 0, mask)


@pytest.mark.parametrize("name,kw", CASES)
def test_backends_match_eager_fwd_and_bwd(name, kw):
    kw = dict(kw)
    lq, lk = kw.pop("lq", 24), kw.pop("lk", None)
    for causal, kv_heads in ((False, 2), (True, 1)):
        v, p = problem(name, lq=lq, lk=lk, causal=causal, kv_heads=kv_heads, mode="fwd+bwd", **kw)
        q, k, vv = (t.requires_grad_() for t in inputs(p))
        ref = v.backend("eager").build(p, CPU)(q, k, vv)
        dout = torch.randn_like(ref)
        g_ref = torch.autograd.grad(ref, (q, k, vv), dout)
        for b in v.backends:
            # eager is the reference; flex has no CPU backward; triton and peer packages are
            # tested in their own files (triton under the interpreter, peers against our math)
            if b.name in ("eager", "flex", "hf-flex", "triton") or b.name.startswith("peer:"):
                continue
            out = b.build(p, CPU)(q, k, vv)
            assert torch.allclose(out, ref, atol=1e-5), (name, b.name, causal)
            for g1, g2 in zip(torch.autograd.grad(out, (q, k, vv), dout), g_ref):
                assert torch.allclose(g1, g2, atol=1e-4), (name, b.name, causal)


@pytest.mark.parametrize("lq,lk,w,causal,chunk", [(37, 37, 8, True, None), (37, 37, 8, False, 5),
                                                  (20, 50, 3, True, 7), (1, 50, 16, False, None),
                                                  (10, 10, 100, False, None)])
def test_chunked_plan_shapes(lq, lk, w, causal, chunk):
    v, p = problem("sliding_window", lq=lq, lk=lk, causal=causal, heads=4, kv_heads=2, window=w)
    q, k, vv = inputs(p)
    plan = sparse.chunk_plan(lq, lk, w, causal, CPU, chunk)
    out = sparse.chunked_sliding_window(q, k, vv, plan)
    assert torch.allclose(out.double(), dense(q, k, vv, loop_window(lq, lk, w, causal)), atol=1e-5)
    assert plan.blocked.numel() <= 3 * plan.n_chunks * plan.chunk * min(w, lk) + 1  # O(L·w), no L×L


def test_sliding_window_decode_sees_last_window_keys():
    for causal in (False, True):
        v, p = problem("sliding_window", lq=1, lk=40, causal=causal, window=6, mode="decode")
        q, k, vv = inputs(p)
        last = dense(q, k[:, :, -6:], vv[:, :, -6:], torch.ones(1, 6, dtype=torch.bool))
        for b in ("eager", "sdpa", "chunked"):
            assert torch.allclose(v.backend(b).build(p, CPU)(q, k, vv).double(), last, atol=1e-5), b


@pytest.mark.parametrize("name,backend,dtype", [("sliding_window", "chunked", torch.float16),
                                                ("bigbird", "sdpa", torch.bfloat16)])
def test_low_precision_error_bounded_by_reference_error(name, backend, dtype):
    v, p = problem(name, lq=64, d=16, causal=True, dtype=str(dtype).split(".")[1],
                   **({"window": 16} if name == "sliding_window" else {"block": 8}))
    q, k, vv = inputs(p)
    ref32 = v.reference(q, k, vv, p)
    ref_low = v.reference(*(t.to(dtype) for t in (q, k, vv)), p)
    out = v.backend(backend).build(p, CPU)(*(t.to(dtype) for t in (q, k, vv)))
    assert out.dtype == dtype
    assert rel_l2(out, ref32) <= 3 * rel_l2(ref_low, ref32) + 1e-4


FLEX = [("sliding_window", dict(window=24)),
        ("longformer", dict(window=64, global_tokens=32, block=32)),
        ("bigbird", dict(block=32, random_blocks=1)),
        ("strided", dict(block=32, stride=64))]


@pytest.mark.parametrize("name,kw", FLEX)
def test_flex_forward_matches_eager(name, kw):
    # one shape (L=192: a ragged last 128-tile for flex) per variant; the three layout variants
    # share the mask_mod code, shapes and causality, so FlexAttention compiles them once
    v, p = problem(name, lq=192, d=16, causal=True, **kw)
    q, k, vv = inputs(p)
    out = v.backend("flex").build(p, CPU)(q, k, vv)
    assert torch.allclose(out, v.reference(q, k, vv, p), atol=1e-5)


def test_flex_block_size_64_matches_eager_and_bad_sizes_are_unsupported():
    """The BlockMask tile is a flex parameter: 64 (L=200: a ragged last tile) gives the same
    attention; a size that is not a power of two >= 16 is declared unsupported, with the rule."""
    v, p = problem("sliding_window", lq=200, d=16, causal=True, window=40)
    q, k, vv = inputs(p)
    flex = v.backend("flex")
    out = flex.build(p.with_params(block_size=64), CPU)(q, k, vv)
    assert torch.allclose(out, v.reference(q, k, vv, p), atol=1e-5)
    for bad in (48, 8):
        assert flex.why_unsupported(p.with_params(block_size=bad), CPU) == (
            f"bad block_size {bad}; accepted: a power of two >= 16 (FlexAttention's default: 128)")
    assert flex.why_unsupported(p.with_params(block_size=64), CPU) is None


# ---------------------------------------------------------------- resolve, supports, reasons


def test_strided_auto_stride_grows_as_sqrt_l():
    v, p4 = problem("strided", lq=4096)
    assert p4.param("stride") == 64 * 8  # √(4096/64) = 8 blocks
    _, p16 = problem("strided", lq=16384)
    assert p16.param("stride") == 64 * 16
    ratio = v.flops(p16) / v.flops(p4)  # O(L·√L): 4× the length, ≈ 8× the work (dense: 16×)
    assert 6 < ratio < 10


@pytest.mark.parametrize("name,kw,needle", [
    ("bigbird", dict(lq=64, lk=128, block=8), "self-attention"),
    ("longformer", dict(window=100), "multiple of 2·block"),
    ("longformer", dict(dilation=0), "dilation"),
    ("bigbird", dict(window_blocks=2), "odd"),
    ("strided", dict(pattern="diagonal"), "pattern"),
    ("strided", dict(stride=96, block=64), "multiple of block"),
    ("strided", dict(pattern="fixed", stride=128, block=64, summary=3), "summary"),
    ("sliding_window", dict(lq=64, lk=32), "seq_q <= seq_k"),
    ("sliding_window", dict(window=0), "window"),
])
def test_unsupported_problems_have_reasons(name, kw, needle):
    v, p = problem(name, **{"lq": kw.pop("lq", 256), **kw})
    reason = v.why_unsupported(p)
    assert reason and needle in reason


def test_sweep_records_reasons_for_decode_and_cpu_backward():
    cases = sweep.expand([sweep.make_sweep(variants="bigbird,sliding_window", seq=[256], modes="decode,bwd")], CPU)
    by = {(c.variant, c.backend, c.problem.mode): c for c in cases}
    assert by[("bigbird", "eager", "decode")].status == "unsupported"
    assert "decode" in by[("bigbird", "eager", "decode")].reason
    assert by[("sliding_window", "chunked", "decode")].status is None  # runnable
    assert by[("sliding_window", "flex", "bwd")].status == "unsupported"
    assert "backward" in by[("sliding_window", "flex", "bwd")].reason
    assert by[("sliding_window", "chunked", "bwd")].status is None
