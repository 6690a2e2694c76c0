"""One contract test over every registered (variant, CPU backend) pair.

For each pair: a small problem the variant supports (its own resolve and defaults), the backend
built and called once on seeded inputs, then:
  * output shape (B, Hq, Lq, D), the inputs' dtype, every element finite;
  * the variant's analytic FLOPs and bytes are > 0;
  * the error against a reference in float64 is within a bound chosen by the variant's declared
    `oracle` (never by its `family`, a label):
      - "softmax" (plain softmax attention at its defaults: MHA, GQA, flash, ...) against the
        independent fp64 oracle of tests/conftest.py (GQA, bottom-right causal);
      - "reference" (exact, but the scores are changed: masks, biases, rotations, a temperature)
        against the variant's own `reference` run on float64 inputs: the oracle has no notion of
        their masks and biases, so their reference is the definition (the reference itself is
        checked against independent math in tests/variants/test_sparse.py, test_positional.py, ...);
      - both with EXACT_BOUND: rel-L2 <= 1e-4, i.e. fp32 rounding (~1e-6 at these sizes) with
        margin, far below any real defect (a wrong mask or scale gives rel-L2 ~ 1e-1);
      - "eager" (approximations: Performer, linear, Linformer, Reformer) against the variant's
        reference in float64, which is exact softmax attention. They estimate it with random
        features / low-rank projections / hashing, so only a loose bound holds (APPROX_BOUND); a
        tight bound is checked too: every non-eager backend against the variant's own `eager`
        formulation fed float64 inputs (same random features).
The toy variant of docs/architecture.md's walk-through is held to the same contract at τ = 0.5.
Skipped, each with registry.decide's own reason: test-only backends, distributed variants (ring:
world_size >= 2 processes, tests/distributed/test_ring.py), Triton (no CUDA here; the kernels have their own
interpreter tests), peer packages that are missing, and combinations the variant does not support
at the chosen problem. FlexAttention cases compile (10-120 s each on this CPU): marked slow and
run only with ATTNBENCH_CONTRACT_FLEX=1 (tests/variants/test_exact.py, test_sparse.py, test_positional.py
test flex per family).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest
import torch

from attnbench.core.problem import Problem
from attnbench.variants import registry
from conftest import rel_l2

CPU = torch.device("cpu")
EXACT_BOUND = 1e-4
APPROX_BOUND = 2.0  # same order as exact attention; see test_approx_bound_rejects_a_wrong_answer
# Measured here (random normal inputs, L=128, D=32): linear 0.74, linformer (k=256) 1.01, Performer
# (256 features) 1.54, Reformer 0.0 (two 64-chunks cover every key). Exact attention's output is
# small (it averages ~L random values) while the approximations' noise does not average out, so a
# tighter bound would fail on correct code at these sizes; correctness of each backend is the tight
# check against the variant's own eager formulation below.
OWN_EAGER_BOUND = 1e-4


def contract_problem(v: registry.Variant) -> Problem:
    """B=1, Hq=2, L=128, D=32, fp32, the variant's choice of Hkv and Lk (kv_heads = seq_k = 0),
    its defaults narrowed so that patterns stay sparse at this size: block patterns get 32-token
    blocks over L=256 (Longformer: window 2·block = 64, 32 global tokens); the sliding window is
    33, so local-attention's exact window ws = w − 1 = 32 divides L and the peer computes our
    pattern (with w = 32 it would run ws = 32, one key wider a side: a documented difference,
    tests/variants/test_peers.py); grids are 8×8 (L=64, Swin windows of 4)."""
    params = dict(v.defaults)
    seq = 128
    if "block" in params:
        params["block"], seq = 32, 256
    small = {"window": 64 if "block" in params else 33, "global_tokens": 32}
    for key in small:
        if key in params:
            params[key] = min(params[key], small[key])
    if "grid" in params:
        seq = 64
        if "window" in params:
            params["window"] = 4
    raw = Problem(
        batch=1,
        heads=2,
        kv_heads=0,
        seq_q=seq,
        seq_k=0,
        head_dim=32,
        dtype="float32",
        params=tuple(sorted(params.items())),
    )
    return v.resolve(raw)


def skip_reason(v: registry.Variant, b: registry.Backend, p: Problem) -> str | None:
    decision = registry.decide(v, b.name, p, CPU)
    if b.test_only:
        return f"test-only backend ({b.description or 'fault injection'})"
    if v.distributed:
        return f"distributed: {decision.reason or 'needs world_size >= 2 processes'}"
    if b.name == "triton" and decision.runnable:
        return "triton: the kernels have their own interpreter tests"
    return None if decision.runnable else f"{decision.status}: {decision.reason}"


def _cases():
    for v in registry.all_variants():
        p = contract_problem(v)
        for b in v.backends:
            marks = []
            if why := skip_reason(v, b, p):
                marks.append(pytest.mark.skip(reason=why))
            elif b.name in ("flex", "hf-flex"):  # each compiles: 10-120 s a case here, ~2.5 CPU-min for all 13
                marks.append(pytest.mark.slow)
                if not os.environ.get("ATTNBENCH_CONTRACT_FLEX"):
                    marks.append(
                        pytest.mark.skip(
                            reason="flex compiles for seconds to minutes on CPU: set "
                            "ATTNBENCH_CONTRACT_FLEX=1 (flex is also tested per family)"
                        )
                    )
            yield pytest.param(v.name, b.name, marks=marks, id=f"{v.name}-{b.name}")


def _inputs(v: registry.Variant, p: Problem, make_qkv):
    if v.make_inputs is not None:  # e.g. Reformer's shared query/key vectors
        return v.make_inputs(p, CPU, 0)
    return make_qkv(p, seed=0)


def assert_contract(v: registry.Variant, backend: str, p: Problem, make_qkv, oracle) -> None:
    """The contract of one (variant, backend) pair at problem `p` (see the module docstring)."""
    q, k, val = _inputs(v, p, make_qkv)
    with torch.no_grad():
        out = v.backend(backend).build(p, CPU)(q, k, val)

    assert out.shape == (p.batch, p.heads, p.seq_q, p.head_dim)
    assert out.dtype == q.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert v.flops(p) > 0 and v.bytes(p) > 0

    q64, k64, v64 = (t.double() for t in (q, k, val))
    with torch.no_grad():
        if v.oracle == "softmax":
            ref = oracle(q, k, val, causal=p.causal)
        else:
            ref = v.reference(q64, k64, v64, p)
    err = rel_l2(out, ref)
    bound = APPROX_BOUND if v.oracle == "eager" else EXACT_BOUND
    assert err <= bound, f"{v.name}/{backend} rel-L2 {err:.3g} > {bound:g} against the fp64 reference"
    if v.oracle == "eager" and backend != "eager":
        with torch.no_grad():
            own = v.backend("eager").build(p, CPU)(q64, k64, v64)
        err_own = rel_l2(out, own)
        assert err_own <= OWN_EAGER_BOUND, (
            f"{v.name}/{backend} rel-L2 {err_own:.3g} against its eager formulation in fp64"
        )


@pytest.mark.parametrize("variant,backend", list(_cases()))
def test_contract(variant, backend, make_qkv, oracle):
    v = registry.get(variant)
    assert_contract(v, backend, contract_problem(v), make_qkv, oracle)


def _doc_example(tmp_path: Path):
    """The `temperature.py` of docs/architecture.md's walk-through, imported as a module."""
    doc = (Path(__file__).parents[2] / "docs" / "architecture.md").read_text()
    code = next(c for c in re.findall(r"```python\n(.*?)```", doc, re.S) if "VARIANTS = " in c)
    path = tmp_path / "temperature_example.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("temperature_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VARIANTS[0]


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_the_architecture_docs_example_variant_keeps_the_contract(tau, tmp_path, make_qkv, oracle):
    """A new variant that only declares its oracle keeps the contract whatever its family label:
    at τ = 0.5 its scores differ from plain attention's, and it is held to its own reference."""
    v = _doc_example(tmp_path)
    p = contract_problem(v).with_params(tau=tau)
    assert registry.decide(v, "sdpa", p, CPU).runnable
    assert_contract(v, "sdpa", p, make_qkv, oracle)
    if tau != 1.0:  # the check has teeth: this is not plain attention
        q, k, val = make_qkv(p, seed=0)
        out = v.backend("sdpa").build(p, CPU)(q, k, val)
        assert rel_l2(out, oracle(q, k, val, causal=p.causal)) > 10 * EXACT_BOUND


def test_every_variant_outside_ring_runs_somewhere():
    """The contract problems are chosen so that no variant is skipped whole (a skip hides nothing)."""
    missing = [
        v.name
        for v in registry.all_variants()
        if not v.distributed and all(skip_reason(v, b, contract_problem(v)) for b in v.backends)
    ]
    assert not missing, f"no CPU backend runs at the contract problem: {missing}"


def test_softmax_oracle_variants_reference_matches_the_oracle(make_qkv, oracle):
    """The dense reference of every variant declaring oracle "softmax" agrees with the independent
    oracle (so the declaration is true, and 'vs oracle' and 'vs reference' mean the same for them)."""
    for v in registry.all_variants():
        if v.oracle == "softmax":
            p = contract_problem(v)
            q, k, val = (t.double() for t in make_qkv(p, seed=3))
            assert rel_l2(v.reference(q, k, val, p), oracle(q, k, val, causal=p.causal)) < 1e-12, v.name


def test_approx_bound_rejects_a_wrong_answer(make_qkv):
    """APPROX_BOUND can fail: returning V itself (no attention) is farther than it from exact
    attention for every approximation at its contract problem."""
    for v in registry.all_variants():
        if v.oracle == "eager":
            p = contract_problem(v)
            q, k, val = _inputs(v, p, make_qkv)
            ref = v.reference(q.double(), k.double(), val.double(), p)
            wrong = val.double().repeat_interleave(p.groups, dim=1)[..., -p.seq_q :, :]
            assert rel_l2(wrong, ref) > APPROX_BOUND, v.name
