"""`attnbench check`: the oracle each backend is held to, and that a wrong backend fails."""

from __future__ import annotations

import torch

from attnbench.run import check
from attnbench.variants import registry
from attnbench.variants.registry import Backend

CPU = torch.device("cpu")


def test_approximations_are_checked_against_their_own_formulation():
    """Performer, linear and Linformer estimate exact attention (error ~1 at these shapes), so
    their backends are held to their eager formulation in fp64, which is skipped as the oracle."""
    rows = check.run_checks(["performer", "linear", "linformer"], CPU, backends=["eager", "chunked", "sdpa"],
                            dtypes=("float32", "bfloat16"))
    ran = [r for r in rows if r.passed is not None]
    assert {r.backend for r in ran} == {"chunked", "sdpa"}
    assert all(r.passed for r in ran), [r for r in ran if not r.passed]
    assert all("eager formulation" in r.note for r in ran)
    fp32 = [r for r in ran if r.dtype == "float32"]
    assert fp32 and max(r.rel_l2 for r in fp32) < 1e-5  # fp32 rounding, not the estimator's error
    eager = [r for r in rows if r.backend == "eager" and "causal" not in r.shape]
    assert eager and all(r.passed is None and "oracle" in r.note for r in eager)


def test_a_wrong_backend_fails_the_check():
    var = registry.get("mha")
    p = check.check_problem(var, "float32", causal=False)
    good = var.backend("sdpa")

    def off_by_a_little(problem, device):
        fn = good.build(problem, device)
        return lambda q, k, v: fn(q, k, v) * (1 + 1e-3)

    assert check.check_backend(var, good, p, CPU).passed
    row = check.check_backend(var, Backend("sdpa", off_by_a_little), p, CPU)
    assert row.passed is False and row.max_abs > row.bound


def test_pinned_sdpa_kernels_declare_what_cuda_refuses():
    """Decided from the problem alone (no GPU needed): fp32 flash/cuDNN, GQA on the efficient kernel."""
    cuda = torch.device("cuda")
    mha, gqa = registry.get("mha"), registry.get("gqa")
    p32 = check.check_problem(mha, "float32", causal=False)
    p16 = check.check_problem(mha, "float16", causal=False)
    g16 = check.check_problem(gqa, "float16", causal=False)
    assert "float16 or bfloat16" in mha.backend("sdpa-flash").why_unsupported(p32, cuda)
    assert "float16 or bfloat16" in mha.backend("sdpa-cudnn").why_unsupported(p32, cuda)
    assert mha.backend("sdpa-flash").why_unsupported(p16, cuda) is None
    assert "enable_gqa" in gqa.backend("sdpa-efficient").why_unsupported(g16, cuda)
    assert mha.backend("sdpa-efficient").why_unsupported(p32, cuda) is None
    assert mha.backend("sdpa-flash").why_unsupported(p32, CPU) is None  # the CPU flash kernel takes fp32


def test_flex_recompiles_fail_loudly_instead_of_running_eagerly():
    from attnbench.variants.backends import flex as _flex

    _flex.no_silent_eager_fallback()
    cfg = torch._dynamo.config
    assert cfg.recompile_limit >= _flex.RECOMPILE_LIMIT
    assert cfg.fail_on_recompile_limit_hit is True


def test_the_decode_check_is_declared_not_inferred_from_the_family(monkeypatch):
    """`check` adds its decode problem where the variant declares decode_check, whatever its label."""
    from dataclasses import replace

    mha = registry.get("mha")
    for label, declared in (("exact", False), ("a-new-label", True)):
        v = replace(mha, name="relabelled", family=label, decode_check=declared, backends=(mha.backend("sdpa"),))
        monkeypatch.setitem(registry._CATALOGUE, "relabelled", v)
        rows = check.run_checks(["relabelled"], CPU, dtypes=("float32",))
        assert rows and all(r.passed for r in rows), rows
        assert any("decode" in r.shape for r in rows) == declared, (label, [r.shape for r in rows])
