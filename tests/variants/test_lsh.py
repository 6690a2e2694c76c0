"""Reformer LSH attention against a dense formulation of the same hashing, and its approach to
exact attention on clustered inputs as the hash rounds grow."""

import pytest
import torch
from torch.profiler import profile

import attnbench.variants.lsh as lsh
from attnbench.core.problem import Problem
from attnbench.variants import registry
from attnbench.variants.shared import softmax_attention

CPU = torch.device("cpu")
VAR = registry.get("reformer")


def _problem(length=128, hq=2, hkv=2, d=16, causal=False, batch=2, **params):
    p = Problem(batch=batch, heads=hq, kv_heads=hkv, seq_q=length, seq_k=length, head_dim=d, causal=causal)
    return VAR.resolve(p.with_params(**{**VAR.defaults, **params}))


def _union_mask(q, k, problem, rot):
    """(B, H, L, L) bool: key j is in query i's window (its sorted chunk or the one before,
    wrapping) in at least one round. Built position by position from the bucket ids."""
    chunk = problem.param("bucket_size")
    length = q.shape[-2]
    nc = length // chunk
    pos = torch.arange(length)
    union = torch.zeros(q.shape[:2] + (length, length), dtype=torch.bool)
    for r in range(rot.shape[0]):
        ranks = []
        for x in (q, k):
            b = lsh.hash_buckets(x, rot[r])  # (B, H, L)
            order = (b * length + pos).argsort(-1)  # sorted slot -> position
            rank = torch.empty_like(order)
            rank.scatter_(-1, order, pos.expand_as(order))  # position -> sorted slot
            ranks.append(rank // chunk)
        cq, ck = ranks[0][..., :, None], ranks[1][..., None, :]
        union |= (ck == cq) | ((ck == (cq - 1) % nc) if nc > 1 else False)
    return union


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(2, 2), (4, 2)])
def test_eager_equals_softmax_over_union_of_rounds(causal, heads):
    p = _problem(causal=causal, hq=heads[0], hkv=heads[1], n_hashes=3, bucket_size=16)
    q, k, v = VAR.make_inputs(p, CPU, 0)
    rot = lsh.rotations(p, CPU)
    kr, vr = (t.repeat_interleave(heads[0] // heads[1], 1) for t in (k, v))
    mask = _union_mask(q, kr, p, rot)
    expected = softmax_attention(q, kr, vr, mask=mask, causal=causal)
    out = VAR.backend("eager").build(p, CPU)(q, k, v)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_single_chunk_sees_every_key():
    p = _problem(length=32, n_hashes=2, bucket_size=32)
    q, k, v = VAR.make_inputs(p, CPU, 0)
    torch.testing.assert_close(VAR.backend("eager").build(p, CPU)(q, k, v), softmax_attention(q, k, v),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_error_falls_with_hash_rounds_on_clustered_inputs(causal):
    def error(n_hashes):
        errs = []
        for seed in range(2):
            p = _problem(length=256, batch=1, hq=1, hkv=1, d=32, causal=causal, n_hashes=n_hashes,
                         bucket_size=32, seed=seed, inputs="clustered")
            q, k, v = VAR.make_inputs(p, CPU, 0)
            out = VAR.backend("eager").build(p, CPU)(q, k, v)
            ref = softmax_attention(q, k, v, causal=causal)
            errs.append(((out - ref).norm() / ref.norm()).item())
        return sum(errs) / len(errs)

    e1, e4, e12 = error(1), error(4), error(12)
    assert e4 < 0.6 * e1 and e12 < 0.5 * e4, (e1, e4, e12)
    assert e12 < 0.1, e12


def test_profiler_ranges():
    p = _problem(n_hashes=2, bucket_size=16)
    q, k, v = VAR.make_inputs(p, CPU, 0)
    fn = VAR.backend("eager").build(p, CPU)
    with profile() as prof:
        fn(q, k, v)
    names = {e.key for e in prof.key_averages()}
    assert {"reformer.hash", "reformer.sort", "reformer.attend", "reformer.combine"} <= names


def test_supports_and_inputs():
    assert VAR.why_unsupported(_problem()) is None
    assert "multiple of bucket_size" in VAR.why_unsupported(_problem(length=100, bucket_size=64))
    from dataclasses import replace

    assert "Lq == Lk" in VAR.why_unsupported(replace(_problem(), seq_q=64))
    assert "accepted" in VAR.why_unsupported(_problem(inputs="blobs"))
    # inputs="random" gives the harness's standard normal inputs (same generator recipe)
    p = _problem()
    q, _, _ = VAR.make_inputs(p, CPU, 5)
    g = torch.Generator().manual_seed(5)
    torch.testing.assert_close(q, torch.randn(q.shape, generator=g))
    assert VAR.exact is False and VAR.time == "O(L log L)"


def test_flops_count_rounds_and_two_chunks():
    p = _problem(length=1024, hq=1, hkv=1, d=64, n_hashes=2, bucket_size=64)
    nb = 16
    per_round = 2 * 2 * (2048 * 64 * nb // 2) + 4 * 2 * 1024 * 128 * 64 + 2 * 2 * 1024 * 64
    assert VAR.flops(p) == 2 * per_round
