"""Graph attention: the edge-list scatter softmax against the dense masked reference and a
per-node loop; the graphs themselves."""

import math
from dataclasses import replace

import pytest
import torch

import attnbench.variants.graph as graph
from attnbench.core.problem import Problem
from attnbench.variants import registry

CPU = torch.device("cpu")
VAR = registry.get("gat")


def _problem(length=100, hq=2, hkv=2, d=8, **params):
    p = Problem(batch=2, heads=hq, kv_heads=hkv, seq_q=length, seq_k=length, head_dim=d)
    return VAR.resolve(p.with_params(**{**VAR.defaults, **params}))


def _inputs(p, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(p.batch, h, p.seq_k, p.head_dim, generator=g) for h in (p.heads, p.kv_heads, p.kv_heads))


def _node_loop(q, k, v, dst, src):
    """For each node, softmax over its neighbours' scores, written out."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    out = torch.zeros_like(q)
    for i in range(q.shape[2]):
        nb = src[dst == i]
        s = torch.einsum("bhd,bhnd->bhn", q[:, :, i], k[:, :, nb]) / math.sqrt(q.shape[-1])
        out[:, :, i] = torch.einsum("bhn,bhnd->bhd", torch.softmax(s, -1), v[:, :, nb])
    return out


@pytest.mark.parametrize("params,length,heads", [
    ({}, 100, (2, 2)), ({"graph": "ring", "degree": 5}, 50, (4, 2)), ({"graph": "grid"}, 49, (2, 1)),
    ({"degree": 200}, 30, (2, 2)),  # degree above L: the complete graph
])
def test_edge_softmax_against_dense_and_loop(params, length, heads):
    p = _problem(length=length, hq=heads[0], hkv=heads[1], **params)
    assert VAR.why_unsupported(p) is None
    q, k, v = _inputs(p)
    dst, src = graph.edges(p)
    expected = _node_loop(q, k, v, dst, src)
    torch.testing.assert_close(VAR.reference(q, k, v, p), expected, atol=1e-5, rtol=1e-4)
    for b in VAR.backends:
        torch.testing.assert_close(b.build(p, CPU)(q, k, v), expected, atol=1e-5, rtol=1e-4, msg=b.name)


def test_random_graph_shape():
    p = _problem(length=200, degree=16)
    dst, src = graph.edges(p)
    assert len(dst) == 200 * 16 == graph.num_edges(p)
    assert torch.equal(torch.bincount(dst, minlength=200), torch.full((200,), 16))  # out-degree
    pairs = dst * 200 + src
    assert len(pairs.unique()) == len(pairs)  # no duplicate edge
    assert bool(graph.dense_mask(p).diagonal().all())  # self-loops
    assert torch.equal(src, graph.edges(p)[1])  # deterministic
    assert not torch.equal(src, graph.edges(p.with_params(seed=1))[1])


def test_ring_and_grid_neighbours():
    ring = graph.dense_mask(_problem(length=10, graph="ring", degree=3))
    assert ring[0].nonzero().flatten().tolist() == [0, 1, 9]
    grid = graph.dense_mask(_problem(length=9, graph="grid"))
    assert grid[4].sum() == 5 and grid[0].sum() == 3  # centre: itself + 4; corner: itself + 2
    assert graph.num_edges(_problem(length=9, graph="grid")) == int(grid.sum())


def test_unsupported_with_reasons():
    assert "no causal order" in VAR.why_unsupported(replace(_problem(), causal=True))
    assert "Lq == Lk" in VAR.why_unsupported(replace(_problem(), seq_q=1, mode="decode"))
    assert "square" in VAR.why_unsupported(_problem(length=50, graph="grid"))
    assert "accepted" in VAR.why_unsupported(_problem(graph="tree"))


def test_flops_and_picture():
    p = _problem(length=1024, hq=1, hkv=1, d=64)
    assert VAR.flops(p) == 4 * 2 * 1024 * 16 * 64  # 4·B·H·E·D
    assert VAR.time == "O(L·d)" and VAR.full_attention_error  # E = L·degree edges
    assert VAR.picture(p).shape == (1024, 1024)
    assert VAR.picture(_problem(length=8192)).shape == (64, 64)
