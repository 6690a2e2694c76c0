"""show-pattern of the input-selected forms: dsa draws each query's selected tokens, nsa each query's
selected blocks and window (what the report gallery and `attnbench show-pattern` render); and dsa's
`scale` option, which a model preset (DeepSeek-V3.2's YaRN scale) sets."""

from __future__ import annotations

import torch

from attnbench.core.problem import Problem
from attnbench.report.gallery import picture
from attnbench.variants import dsa, nsa
from conftest import rel_l2


def test_dsa_picture_draws_topk_selected_tokens_per_query():
    t, _ = picture("dsa", 512, {"topk": 64})
    counts = t.sum(1)
    assert torch.equal(counts, torch.arange(1, 513).clamp(max=64).float())  # min(topk, visible) each row
    assert bool(torch.all(torch.triu(t, 1) == 0))  # causal
    band = torch.tril(torch.ones(512, 512)) - torch.tril(torch.ones(512, 512), -64)
    assert not torch.equal(t[64:], band[64:])  # chosen by the indexer, not the last 64 tokens


def test_nsa_picture_is_the_selected_blocks_and_the_window():
    p = nsa.NSA.resolve(Problem(batch=1, heads=4, kv_heads=0, seq_q=512, seq_k=512, head_dim=64, mode="fwd",
                                params=(("topk_blocks", 4), ("window", 32))))
    t = nsa.picture(p)
    win = nsa.window_mask(p, "cpu").float()
    assert bool(torch.all(t >= win)) and bool(torch.all(torch.triu(t, 1) == 0))
    # query 511 (block 7): blocks 0, 6, 7 forced and one chosen by the compressed branch, 4 × 64 tokens;
    # the window (32) lies inside its own block
    assert float(t[-1].sum()) == 256 and bool(torch.all(t[-1, 448:] == 1)) and bool(torch.all(t[-1, :64] == 1))
    assert float(t[-1, 64:384].sum()) == 64  # exactly one whole block among 1..5


def test_dsa_scale_option_scales_the_softmax_only():
    base = dict(batch=1, heads=2, kv_heads=0, seq_q=1, seq_k=96, head_dim=128, mode="decode")
    p0 = dsa.DSA.resolve(Problem(**base, params=(("topk", 32),)))
    same = dsa.DSA.resolve(Problem(**base, params=(("scale", dsa.mla.scale(p0)), ("topk", 32))))
    other = dsa.DSA.resolve(Problem(**base, params=(("scale", 2 * dsa.mla.scale(p0)), ("topk", 32))))
    q, k, v = dsa.make_inputs(p0, torch.device("cpu"))
    ref = dsa.DSA.reference(q.double(), k.double(), v.double(), p0)
    assert rel_l2(dsa.DSA.reference(q.double(), k.double(), v.double(), same), ref) < 1e-12
    assert rel_l2(dsa.DSA.reference(q.double(), k.double(), v.double(), other), ref) > 1e-3
