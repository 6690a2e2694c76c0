"""registry.decide's Decision and the declared fields of a Variant (oracle, distributed, decode_check)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from attnbench.core.problem import Problem
from attnbench.variants import registry
from attnbench.variants.base import ORACLES, Decision

CPU = torch.device("cpu")


def test_decide_answers_with_a_decision():
    mha = registry.get("mha")
    ok = registry.decide(mha, "sdpa", mha.resolve(Problem(heads=4, kv_heads=0)), CPU)
    assert ok == Decision() and ok.runnable and ok.status == "runnable" and ok.reason == ""
    no = registry.decide(mha, "sdpa", mha.resolve(Problem(heads=4, kv_heads=2)), CPU)
    assert not no.runnable and no.status == "unsupported" and "kv_heads == heads" in no.reason
    missing = registry.decide(mha, "nope", mha.resolve(Problem(heads=4, kv_heads=0)), CPU)
    assert missing.status == "unsupported" and "no backend 'nope'" in missing.reason


def test_a_decision_has_no_truth_value_and_is_consistent():
    """`if decision:` would read the old API (None = runnable) backwards: it raises instead."""
    with pytest.raises(TypeError, match="runnable"):
        bool(Decision("unsupported", "why"))
    with pytest.raises(ValueError):
        Decision("unsupported")  # not runnable needs a reason
    with pytest.raises(ValueError):
        Decision("runnable", "a reason for nothing")


def test_every_variant_declares_a_known_oracle_and_exact_follows_it():
    for v in registry.all_variants():
        assert v.oracle in ORACLES, v.name
        assert v.exact == (v.oracle != "eager"), v.name
        assert not v.decode_check or "decode" in v.modes, v.name
        if v.oracle == "eager":  # the tight check needs the variant's own eager formulation
            assert "eager" in v.backend_names(), v.name
    with pytest.raises(ValueError, match="accepted: softmax, reference, eager"):
        replace(registry.get("mha"), oracle="plain")


def test_family_is_a_label_only(monkeypatch):
    """Relabelling changes nothing that is decided: the plan hands a case to the ranks by the
    variant's `distributed` declaration, not by its family."""
    from attnbench.run.plan import Case, is_distributed

    ring, mha = registry.get("ring"), registry.get("mha")
    monkeypatch.setitem(registry._CATALOGUE, "ring", replace(ring, family="exact"))
    monkeypatch.setitem(registry._CATALOGUE, "mha", replace(mha, family="distributed"))
    p = Problem(heads=4, kv_heads=4, params=(("world_size", 2),))
    assert is_distributed(Case("ring", "eager", p))
    assert not is_distributed(Case("mha", "sdpa", p))
