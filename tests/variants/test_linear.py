"""Performer, linear (elu+1) and Linformer against independent formulations."""

import math

import pytest
import torch

import attnbench.variants.linear as lin
from attnbench.core.problem import Problem
from attnbench.run import plan as sweep
from attnbench.variants import registry
from attnbench.variants.shared import softmax_attention

CPU = torch.device("cpu")


def _problem(name, lq=96, lk=96, hq=4, hkv=4, d=16, causal=False, **params):
    var = registry.get(name)
    p = Problem(batch=2, heads=hq, kv_heads=hkv, seq_q=lq, seq_k=lk, head_dim=d, causal=causal)
    return var, var.resolve(p.with_params(**{**var.defaults, **params}))


def _inputs(p, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(p.batch, p.heads, p.seq_q, p.head_dim, generator=g) * scale
    k = torch.randn(p.batch, p.kv_heads, p.seq_k, p.head_dim, generator=g) * scale
    v = torch.randn(p.batch, p.kv_heads, p.seq_k, p.head_dim, generator=g)
    return q, k, v


def _quadratic_form(fq, fk, v, causal):
    """out = (A ⊙ M) V / rowsum(A ⊙ M) with A = φ(Q)φ(K)ᵀ materialised (bottom-right causal M)."""
    groups = fq.shape[1] // fk.shape[1]
    fk, v = fk.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    a = fq.double() @ fk.double().transpose(-2, -1)
    if causal:
        lq, lk = a.shape[-2:]
        a = a * (torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + lk - lq)
    den = a.sum(-1, keepdim=True)
    return torch.where(den > 0, (a @ v.double()) / torch.where(den > 0, den, 1), 0).float()


def _favor_plain(x, w):
    """φ(x) = exp(Wx' − |x'|²/2)/√m, x' = x/D^¼, without any stabiliser (independent form)."""
    x = x.double() / x.shape[-1] ** 0.25
    return torch.exp(x @ w.double().T - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(w.shape[0])


def _favor_floored(x, w, eps, over):
    """φ(x) = exp(Wx' − |x'|²/2 − max Wx') + eps, the max of the raw projection over `over`
    (written out here in float64, independently of attnbench)."""
    x = x.double() / x.shape[-1] ** 0.25
    r = x @ w.double().T
    return torch.exp(r - (x * x).sum(-1, keepdim=True) / 2 - r.amax(over, keepdim=True)) + eps


SHAPES = [dict(), dict(lq=40, lk=130), dict(lq=130, lk=40), dict(hq=4, hkv=2), dict(lq=1, lk=77)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_performer_matches_quadratic_form(causal, shape):
    var, p = _problem("performer", causal=causal, nb_features=32, chunk=16, **shape)
    q, k, v = _inputs(p)
    w = lin.random_features(32, p.head_dim, seed=0)
    expected = _quadratic_form(_favor_plain(q, w), _favor_plain(k, w), v, causal)
    for backend in ("eager", "chunked"):
        out = var.backend(backend).build(p, CPU)(q, k, v)
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4, msg=backend)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_performer_eps_matches_quadratic_form(causal, shape):
    """With eps the floor is relative to the max over every key (chunked: a first pass finds it),
    so large logits (scale 1.5) and several key blocks (BLOCK_ROWS = 64 here) are the test."""
    var, p = _problem("performer", causal=causal, nb_features=32, chunk=16, eps=1e-3, **shape)
    q, k, v = _inputs(p, scale=1.5)
    w = lin.random_features(32, p.head_dim, seed=0)
    expected = _quadratic_form(_favor_floored(q, w, 1e-3, -1), _favor_floored(k, w, 1e-3, (-2, -1)), v, causal)
    plain = _quadratic_form(_favor_plain(q, w), _favor_plain(k, w), v, causal)
    assert (expected - plain).abs().max() > 1e-2  # the floor changes the answer at this scale
    old = lin.BLOCK_ROWS
    lin.BLOCK_ROWS = 64
    try:
        for backend in ("eager", "chunked"):
            out = var.backend(backend).build(p, CPU)(q, k, v)
            torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4, msg=backend)
    finally:
        lin.BLOCK_ROWS = old


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_linear_matches_quadratic_form(causal, shape):
    var, p = _problem("linear", causal=causal, chunk=16, **shape)
    q, k, v = _inputs(p, scale=1.0)
    phi = lambda x: torch.nn.functional.elu(x) + 1  # noqa: E731
    expected = _quadratic_form(phi(q), phi(k), v, causal)
    for backend in ("eager", "chunked"):
        out = var.backend(backend).build(p, CPU)(q, k, v)
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4, msg=backend)


@pytest.mark.parametrize("name", ["performer", "linear"])
def test_chunked_equals_eager_large_logits_and_backward(name):
    # Larger inputs make the key max-subtraction matter (running max vs one global max).
    var, p = _problem(name, lq=200, lk=200, causal=True, chunk=64, nb_features=64)
    q, k, v = (t.requires_grad_(True) for t in _inputs(p, scale=1.5))
    outs, grads = [], []
    for backend in ("eager", "chunked"):
        out = var.backend(backend).build(p, CPU)(q, k, v)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v)))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-4)
    for ga, gb in zip(*grads):
        torch.testing.assert_close(gb, ga, atol=1e-4, rtol=1e-3)


def test_performer_noncausal_equals_causal_last_row():
    # The last query of a causal run sees every key: it equals the non-causal output.
    _, pc = _problem("performer", causal=True, nb_features=64)
    var, pn = _problem("performer", causal=False, nb_features=64)
    q, k, v = _inputs(pn)
    for backend in ("eager", "chunked"):
        oc = var.backend(backend).build(pc, CPU)(q, k, v)
        on = var.backend(backend).build(pn, CPU)(q, k, v)
        torch.testing.assert_close(oc[..., -1, :], on[..., -1, :], atol=1e-5, rtol=1e-4)


def test_performer_error_falls_with_features():
    """Relative error against exact attention, averaged over 4 feature draws, falls as m grows."""
    var, p = _problem("performer", lq=128, lk=128, d=16, nb_features=16)
    q, k, v = _inputs(p, scale=0.5)
    ref = softmax_attention(q, k, v)

    def error(m):
        errs = []
        for seed in range(4):
            pm = p.with_params(nb_features=m, seed=seed)
            out = var.backend("chunked").build(pm, CPU)(q, k, v)
            errs.append(((out - ref).norm() / ref.norm()).item())
        return sum(errs) / len(errs)

    e16, e256, e1024 = error(16), error(256), error(1024)
    assert e256 < 0.7 * e16, (e16, e256)
    assert e1024 < 0.8 * e256, (e256, e1024)


def test_random_features_orthogonal_blocks():
    w = lin.random_features(40, 16, seed=3)
    block = w[:16] / w[:16].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)
    assert torch.equal(w, lin.random_features(40, 16, seed=3))
    assert not torch.equal(w, lin.random_features(40, 16, seed=4))


def test_linformer_matches_explicit_projection():
    for hkv in (4, 1):
        var, p = _problem("linformer", lq=50, lk=120, hkv=hkv, k=24)
        q, k, v = _inputs(p, scale=1.0)
        e, f = lin.linformer_projections(p, CPU)
        assert e.shape == f.shape == (24, 120)
        kp = torch.einsum("rn,bhnd->bhrd", e, k)
        vp = torch.einsum("rn,bhnd->bhrd", f, v)
        expected = softmax_attention(q, kp, vp)
        for backend in ("eager", "sdpa"):
            torch.testing.assert_close(var.backend(backend).build(p, CPU)(q, k, v), expected, atol=1e-5, rtol=1e-4)


def test_linformer_causal_and_decode_unsupported():
    var, p = _problem("linformer", causal=True)
    assert "mixes future positions" in var.why_unsupported(p)
    _, pd = _problem("linformer", lq=1, lk=96)
    from dataclasses import replace

    assert "cannot decode" in var.why_unsupported(replace(pd, mode="decode"))
    cases = sweep.expand([sweep.make_sweep(variants="linformer", seq=[256], causal=[True])], CPU)
    assert cases and all(c.status == "unsupported" and "future" in c.reason for c in cases)


def test_flop_models_are_linear_in_length():
    for name, extra in (("performer", {}), ("linear", {}), ("linformer", {})):
        var, p1 = _problem(name, lq=1024, lk=1024, **extra)
        _, p2 = _problem(name, lq=2048, lk=2048, **extra)
        assert var.flops(p2) == pytest.approx(2 * var.flops(p1))
    var, p = _problem("performer", lq=1000, lk=1000, hq=1, hkv=1, d=64, nb_features=256)
    # features 2·(L+L)·m·D, products 2·L·m·D twice, normaliser 2·L·m (batch 2)
    assert var.flops(p) == 2 * (4 * 2 * 1000 * 256 * 64 + 2 * 1000 * 256)


@pytest.mark.parametrize("name", ["performer", "linear"])
def test_chunked_causal_over_several_blocks(name):
    """Lengths past BLOCK_ROWS: full blocks, a partial block and a short leftover chunk."""
    length = 2 * lin.BLOCK_ROWS + 3 * 32 + 5
    var, p = _problem(name, lq=length, lk=length, hq=1, hkv=1, d=8, causal=True, chunk=32, nb_features=16)
    q, k, v = _inputs(p)
    eager = var.backend("eager").build(p, CPU)(q, k, v)
    torch.testing.assert_close(var.backend("chunked").build(p, CPU)(q, k, v), eager, atol=1e-5, rtol=1e-4)
