"""--kv-layout is an axis: mha/gqa/mqa decode and prefill run on the paged-KV implementation at
each layout; other variants are unsupported with the reason."""

from __future__ import annotations

import pytest
import torch

from attnbench.core.errors import UsageError
from attnbench.run.plan import expand, make_sweep
from attnbench.variants import registry

CPU = torch.device("cpu")


def test_gqa_and_mqa_run_both_layouts_on_the_paged_backends():
    sw = make_sweep(variants="gqa,mqa", modes="decode", kv_layout=["paged", "dense"], seq_dist="uniform:64..128",
                    batch=[4], heads=[8])
    cases = expand([sw], CPU)
    got = {(c.backend, c.problem.kv_heads, c.problem.param("kv_layout")) for c in cases}
    kv = {name: registry.get(name).resolve(_problem()).kv_heads for name in ("gqa", "mqa")}
    assert kv["mqa"] == 1 and kv["gqa"] not in (1, 8)
    want = {(b, h, layout) for b in ("eager", "sdpa", "flex", "triton") for h in kv.values()
            for layout in ("paged", "dense")}
    assert got == want
    assert {c.variant for c in cases} == {"paged"}
    runnable = {(c.backend, c.problem.param("kv_layout")) for c in cases if c.status is None}
    assert {("eager", "paged"), ("sdpa", "dense"), ("flex", "paged"), ("flex", "dense")} <= runnable
    assert all(c.problem.param("seq_dist") == "uniform:64..128" and c.problem.seq_q == 1 for c in cases)


def _problem():
    from attnbench.core.problem import Problem

    return Problem(batch=4, heads=8, kv_heads=0, seq_q=1, seq_k=128, head_dim=64, mode="decode")


def test_a_variant_without_a_paged_implementation_is_unsupported_with_the_reason():
    [case, *_] = expand([make_sweep(variants="flash", modes="decode", kv_layout="paged")], CPU)
    assert case.status == "unsupported" and "--kv-layout applies to mha, gqa, mqa" in case.reason


def test_a_repeated_layout_merges_and_a_bad_one_names_what_is_accepted():
    assert make_sweep(variants="gqa", kv_layout=["paged", "dense,paged"]).kv_layout == ("paged", "dense")
    with pytest.raises(UsageError, match="accepted: dense, paged"):
        make_sweep(variants="gqa", kv_layout=["ragged"])
    with pytest.raises(UsageError, match="go with --kv-layout"):
        make_sweep(variants="gqa", page_size=16)


def test_without_a_layout_the_exact_variants_are_unchanged():
    cases = expand([make_sweep(variants="gqa", modes="decode")], CPU)
    assert {c.variant for c in cases} == {"gqa"}
