"""Conclusions a user can trust: three-outcome verdicts, claims per (variant, backend),
honest samples, roofs that hold, FLOPs from the real mask, errors against an fp64 oracle, the
kernel that ran, peers that never vanish, and machine-readable verdicts."""

import json
import math

import numpy as np
import pytest
import torch

from attnbench.cli import main
from attnbench.core.problem import Problem
from attnbench.core.results import spread_text, timing_flags
from attnbench.measure import refs as refs_mod
from attnbench.measure.inputs import generate, mean_entropy
from attnbench.measure.timing import TimingPolicy, time_cpu
from attnbench.report.analysis import Claim, Fit, json_rows, parse_claim, scaling_table
from attnbench.report.verdicts import MAX_WIDTH, fit_scaling, judge
from attnbench.run import case as run_case_module
from attnbench.run.plan import expand, make_sweep
from attnbench.variants import registry

CPU = torch.device("cpu")


def _fit(lo, hi, lengths=(256, 512, 1024, 2048, 4096)):
    return Fit((lo + hi) / 2, lo, hi, len(lengths), lengths[0], lengths[-1], None, tuple(lengths), df=len(lengths) - 2)


# ---------------------------------------------------------------- 1. verdicts
@pytest.mark.parametrize("lo,hi,claim,expected", [
    (1.9, 2.1, "O(L²)", "agrees"),
    (0.85, 1.05, "O(L)", "agrees"),
    (1.4, 2.1, "O(L²)", "inconclusive"),  # covers O(L·√L)
    (1.6, 2.45, "O(L²)", "inconclusive"),  # covers only O(L²) but wider than MAX_WIDTH
    (-2.88, 8.38, "O(L²)", "inconclusive"),  # a noisy fit's interval: covers every class
    (-0.84, 2.82, "O(L²)", "inconclusive"),
    (0.9, 1.1, "O(L²)", "differs"),
    (2.5, 3.2, "O(L)", "differs"),
    (-0.1, 0.1, "O(1)", "agrees"),
])
def test_verdict_of_constructed_intervals(lo, hi, claim, expected):
    v, note = judge(_fit(lo, hi), parse_claim(claim))
    assert v == expected
    if v == "inconclusive":
        assert "covers" in note and "wide because of" in note


def test_inconclusive_names_the_classes_covered():
    v, note = judge(_fit(0.8, 1.7), parse_claim("O(L)"))
    assert v == "inconclusive" and "O(L), O(L·√L)" in note


@pytest.mark.parametrize("seed", range(20))
def test_three_lengths_never_agree(seed):
    rng = np.random.default_rng(seed)
    L = [256, 512, 1024]
    y = [L_ ** 2 * math.exp(rng.normal(0, 0.01)) for L_ in L]  # even clean O(L²) data
    for claim in ("O(L²)", "O(L)", "O(1)", "O(L³)"):
        assert judge(fit_scaling(L, y), parse_claim(claim))[0] == "too few lengths"


@pytest.mark.parametrize("seed", range(20))
def test_a_wide_interval_never_agrees(seed):
    rng = np.random.default_rng(seed)
    L = [256, 512, 1024, 2048]
    y = [L_ ** 2 * math.exp(rng.normal(0, 0.4)) for L_ in L]  # noisy: a wide interval
    fit = fit_scaling(L, y)
    v, _ = judge(fit, parse_claim("O(L²)"))
    assert v != "agrees" or fit.ci_high - fit.ci_low <= MAX_WIDTH


def test_log_claims_use_their_band():
    L = [256 * 2**i for i in range(6)]
    fit = fit_scaling(L, [x * math.log(x) for x in L])
    assert judge(fit, Claim("O(L log L)", 1.0, 1))[0] == "agrees"


# ---------------------------------------------------------------- 2. claims per (variant, backend)
def test_fused_backends_claim_linear_memory_and_list_shows_both(capsys):
    mha = registry.get("mha")
    assert mha.claims("eager") == ("O(L²)", "O(L²)")
    assert mha.claims("sdpa") == ("O(L²)", "O(L)") and mha.claims("flex") == ("O(L²)", "O(L)")
    assert mha.claims("sdpa-math") == ("O(L²)", "O(L²)")  # the math path materialises scores
    assert main(["list", "--json", "--device", "cpu"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    b = {x["name"]: x for x in rows["mha"]["backends"]}
    assert rows["mha"]["complexity"]["memory"] == "O(L²)" and b["sdpa"]["complexity"]["memory"] == "O(L)"


# ---------------------------------------------------------------- 10. show --json
def _rec(backend, L, mem, ms):
    return {"type": "record", "case_id": f"{backend}-{L}", "variant": "mha", "backend": backend, "device": "cpu",
            "dtype": "float32",
            "mode": "fwd", "batch": 1, "heads": 8, "kv_heads": 8, "seq_q": L, "seq_k": L, "head_dim": 64,
            "causal": False, "params": {}, "status": "ok", "latency_ms": {"median": ms, "iqr": 0.0, "n": 10},
            "peak_mem_bytes": mem}


def test_show_json_has_the_scaling_rows(tmp_path, capsys):
    from attnbench.core import results

    lengths = [256, 512, 1024, 2048, 4096]
    recs = [_rec("eager", L, 32 * L * L + 2048 * L, 1e-5 * L * L) for L in lengths[:4]]
    recs += [_rec("sdpa", L, 2048 * L + 1e6, 1e-6 * L * L) for L in lengths]
    full = [{**{f: None for f in results.RECORD_FIELDS}, **r} for r in recs]
    path = tmp_path / "r.jsonl"
    with results.Writer(path, results.make_header(["t"], {}, None)) as w:
        for r in full:
            w.write({k: v for k, v in r.items() if k != "type"})
    assert main(["show", str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["scaling"]
    assert {"series", "shape", "metric", "exponent", "ci_low", "ci_high", "lengths", "claim", "verdict"} <= set(rows[0])
    got = {(r["series"], r["metric"]): r for r in rows}
    assert got[("mha:eager", "memory")]["verdict"] == "agrees" and got[("mha:eager", "memory")]["claim"] == "O(L²)"
    assert got[("mha:sdpa", "memory")]["verdict"] == "agrees" and got[("mha:sdpa", "memory")]["claim"] == "O(L)"
    assert got[("mha:sdpa", "memory")]["lengths"] == lengths
    assert got[("mha:sdpa", "memory")]["shape"] == "fwd float32 B1 H8 D64 cpu"
    assert json_rows(scaling_table(full))[0].keys() == rows[0].keys()


# ---------------------------------------------------------------- 4. honest samples
def test_spread_is_never_shown_below_three_samples_and_high_variance_is_marked():
    assert spread_text({"median": 10.0, "iqr": 0.0, "n": 1}) == "n=1"
    assert spread_text({"median": 10.0, "iqr": 5.0, "n": 2}) == "n=2"
    assert spread_text({"median": 10.0, "iqr": 1.2, "n": 12}) == "(! 12%)"
    assert spread_text({"median": 10.0, "iqr": 0.5, "n": 12}) == "5"
    assert timing_flags({"median": 10.0, "iqr": 0.0, "n": 1}) == ["low_samples"]
    assert timing_flags({"median": 10.0, "iqr": 2.0, "n": 4}) == ["low_samples", "high_variance"]
    assert timing_flags({"median": 10.0, "iqr": 0.5, "n": 10}) == []


class FakeClock:
    """A clock that only the timed function advances: first call 30 ms, then 0.1 ms per call."""

    def __init__(self):
        self.ns, self.calls = 0, 0

    def perf_counter_ns(self):
        return self.ns

    def perf_counter(self):
        return self.ns / 1e9

    def call(self):
        self.calls += 1
        self.ns += 30_000_000 if self.calls == 1 else 100_000


def test_first_call_is_never_a_sample_and_a_steady_call_warms_up(monkeypatch):
    import attnbench.measure.timing as timing

    clock = FakeClock()
    monkeypatch.setattr(timing, "time", clock)
    t = time_cpu(clock.call, TimingPolicy(min_samples=3, max_samples=3, min_time=0.0, warmup_time=0.0))
    assert t.first_call_ms == pytest.approx(30.0) and t.samples_ms == pytest.approx((0.1, 0.1, 0.1))
    assert t.calls_per_sample == 10  # 0.1 ms calls timed in blocks of 1 ms
    assert clock.calls == 1 + 1 + 3 * 10  # the first call, one steady warm-up call, the samples


# ---------------------------------------------------------------- 5. roofs
REFS = {"gemm": {"float32": {"n": 1024, "flops_per_s": 1e11}},
        "copy": {"bytes_per_s": 1e10, "levels": [{"bytes": 256 << 10, "bytes_per_s": 1e11},
                                                  {"bytes": 32 << 20, "bytes_per_s": 3e10},
                                                  {"bytes": 256 << 20, "bytes_per_s": 1e10}]}}


def test_each_case_is_held_to_the_roof_of_its_working_set():
    small = refs_mod.roof(1e4, 1e5, 1e5, "float32", REFS)  # 100 KB: the 256 KiB level
    big = refs_mod.roof(1e4, 1e5, 100e6, "float32", REFS)  # 100 MB: DRAM
    assert small["level_bytes"] == 256 << 10 and big["level_bytes"] == 256 << 20
    assert small["flops_per_s"] == pytest.approx(0.1 * 1e11) and small["bound"] == "memory"
    assert big["flops_per_s"] == pytest.approx(0.1 * 1e10)
    assert refs_mod.roof(1e7, 1e5, 1e5, "float32", REFS)["bound"] == "compute"
    assert refs_mod.above_roof_reason(1.02, small, "float32", REFS) is None
    assert "memory roof" in refs_mod.above_roof_reason(1.5, small, "float32", REFS)


@pytest.mark.slow  # one case through run_case: the profiler's first start takes seconds
@pytest.mark.parametrize("gemm", [1e6, 1e15])
def test_roofline_frac_is_at_most_1_05_or_flagged(gemm):
    (case,) = expand([make_sweep(variants="mha", backends="sdpa", seq="128", heads=["2"])], CPU)
    refs = json.loads(json.dumps(REFS))
    refs["gemm"]["float32"]["flops_per_s"] = gemm
    rec = run_case_module.run_case(case, CPU, TimingPolicy(min_samples=3, min_time=0.0, max_time=0.05), refs)
    assert rec["roofline_frac"] <= 1.05 or ("above_roof" in rec["flags"] and rec["roof"]["reason"])
    assert ("above_roof" in rec["flags"]) == (gemm == 1e6)
    assert rec["latency_ms"]["n"] >= 1 and rec["inputs"] == "randn" and 0 < rec["attn_entropy"] <= 1


# ---------------------------------------------------------------- 6. FLOPs from the real mask
def _swin_mask_by_regions(hg, wg, w, s):
    """Swin as its paper's code builds it: on the grid rolled by (−s, −s), label the regions
    [0, n−w), [n−w, n−s), [n−s, n) of each axis, attend within a w×w window and one label; then
    map back to the original positions."""
    def region(n):
        r = torch.zeros(n, dtype=torch.long)
        r[n - w:] = 1
        if s:
            r[n - s:] = 2
        return r

    rows, cols = torch.meshgrid(torch.arange(hg), torch.arange(wg), indexing="ij")
    rs, cs = (rows - s) % hg, (cols - s) % wg  # shifted coordinates of each original token
    win = (rs // w) * (wg // w) + cs // w
    label = region(hg)[rs] * 3 + region(wg)[cs] if s else torch.zeros_like(rs)
    win, label = win.flatten(), label.flatten()
    return (win[:, None] == win[None, :]) & (label[:, None] == label[None, :])


def _problem(name, L, **params):
    v = registry.get(name)
    p = Problem(batch=2, heads=3, kv_heads=3, seq_q=L, seq_k=L, head_dim=16).with_params(**{**v.defaults, **params})
    return v, v.resolve(p)


@pytest.mark.parametrize("L,params", [(256, {}), (1024, {}), (4096, {}), (225, {"window": 5}),
                                      (324, {"window": 6, "shift": 2}), (320, {"grid": "8x40"}),
                                      (256, {"shift": 0})])
def test_swin_flops_count_the_shifted_window_mask(L, params):
    v, p = _problem("swin", L, **params)
    assert v.why_unsupported(p) is None
    from attnbench.variants.vision import _window_params, grid_of

    (hg, wg), (w, s) = grid_of(p), _window_params(p)
    pairs = int(_swin_mask_by_regions(hg, wg, w, s).sum())
    assert v.flops(p) == 4 * p.batch * p.heads * p.head_dim * pairs
    if s:
        assert pairs < L * w * w  # the wrapped tokens are masked: L·w² overcounts


@pytest.mark.parametrize("L,window,causal", [(1000, 96, False), (1000, 96, True), (777, 256, False)])
def test_sliding_window_flops_count_an_independent_band(L, window, causal):
    v, p = _problem("sliding_window", L, window=window)
    p = p.__class__(**{**p.__dict__, "causal": causal})
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    band = ((i - j).abs() < window) & ((j <= i) if causal else True)
    assert v.flops(p) == 4 * p.batch * p.heads * p.head_dim * int(band.sum())


@pytest.mark.parametrize("name", ["longformer", "bigbird", "strided"])
@pytest.mark.parametrize("L,causal", [(1000, False), (1024, False), (1000, True)])
def test_block_sparse_flops_count_their_token_mask(name, L, causal):
    v, p = _problem(name, L)
    p = p.__class__(**{**p.__dict__, "causal": causal})
    if v.why_unsupported(p) is not None:
        pytest.skip(v.why_unsupported(p))
    mask = v.picture(p)  # the (L, L) token mask the reference attends, causal included
    assert mask.shape == (L, L)
    assert v.flops(p) == 4 * p.batch * p.heads * p.head_dim * int(mask.sum())


@pytest.mark.parametrize("graph", ["random", "ring", "grid"])
def test_gat_flops_count_the_edges_of_its_mask(graph):
    from attnbench.variants.graph import dense_mask

    v, p = _problem("gat", 1024 if graph == "grid" else 1000, graph=graph)
    assert v.flops(p) == 4 * p.batch * p.heads * p.head_dim * int(dense_mask(p).sum())


# ---------------------------------------------------------------- 7. errors vs fp64
def test_eager_error_is_against_fp64_not_itself():
    v, p = _problem("mha", 256)
    q, k, v_ = run_case_module.make_inputs(v, p, CPU)
    out = v.backend("eager").build(p, CPU)(q, k, v_)
    err = run_case_module.compute_error(v, p, out, q, k, v_)
    assert err["vs"] == "fp64 reference" and 1e-9 < err["rel_l2"] < 1e-5


def test_an_approximation_records_its_error_against_its_own_formulation():
    """linformer: far from exact attention (rel_l2 = full_rel_l2, its approximation error) but within
    float32's rounding of its own formulation fed fp64 inputs (own_rel_l2, what correctness judges);
    its eager backend is that formulation, so it gets a reason instead of a self-comparison."""
    from attnbench.core.correctness import judge

    v, p = _problem("linformer", 256)
    q, k, v_ = run_case_module.make_inputs(v, p, CPU)
    out = v.backend("sdpa").build(p, CPU)(q, k, v_)
    err = run_case_module.compute_error(v, p, out, q, k, v_, backend="sdpa")
    assert err["rel_l2"] == err["full_rel_l2"] > 0.1 and 1e-9 < err["own_rel_l2"] < 1e-5
    assert err["judged_by"] == "own_rel_l2" and judge({"status": "ok", "dtype": "float32", "seq_k": 256,
                                                       "error": err}).state == "correct"
    eager = v.backend("eager").build(p, CPU)(q, k, v_)
    err = run_case_module.compute_error(v, p, eager, q, k, v_, backend="eager")
    assert "own_rel_l2" not in err and "judged_by" not in err and "own formulation" in err["own_reason"]
    v, p = _problem("mha", 64)
    q, k, v_ = run_case_module.make_inputs(v, p, CPU)
    exact = run_case_module.compute_error(v, p, v.backend("sdpa").build(p, CPU)(q, k, v_), q, k, v_, backend="sdpa")
    assert exact["judged_by"] == "rel_l2" and "own_rel_l2" not in exact


def test_peaked_inputs_are_peaked_and_documented_names_are_checked():
    shape = (1, 4, 512, 64)
    ent = {n: mean_entropy(*generate(n, shape, shape)[:2], causal=False) for n in ("randn", "peaked")}
    assert ent["randn"] > 0.85 and ent["peaked"] < ent["randn"] - 0.2
    assert main(["run", "--variants", "mha", "--seq", "128", "--inputs", "trained", "--out", "/dev/null"]) == 2


# ---------------------------------------------------------------- 8. the kernel that ran
@pytest.mark.parametrize("backend,expect", [("sdpa", "flash_attention"), ("sdpa-math", "sdpa math path"),
                                            ("eager", "aten::bmm")])
def test_kernel_names_the_attention_operator(backend, expect):
    v, p = _problem("mha", 256)
    q, k, v_ = run_case_module.make_inputs(v, p, CPU)
    fn = v.backend(backend).build(p, CPU)
    for _ in range(3):  # the same name every time
        _, kernel = run_case_module.measure_memory_and_kernel(lambda: fn(q, k, v_), CPU, None)
        assert expect in kernel.split(",")[0] or kernel.startswith(expect)
        assert not any(x in kernel for x in ("empty_strided", "aten::expand", "isneginf", "aten::all"))


# ---------------------------------------------------------------- 9. peers never vanish
def test_performer_compares_with_the_peer_at_its_eps_by_default():
    cases = expand([make_sweep(variants="performer", seq="1k")], CPU)
    by = {(c.backend, dict(c.problem.params)["eps"]) for c in cases}
    peer = registry.get("performer").backend("peer:performer-pytorch")
    if peer.why_unavailable(CPU) is not None:
        pytest.skip(peer.why_unavailable(CPU))
    assert ("peer:performer-pytorch", 1e-4) in by and ("chunked", 1e-4) in by and ("chunked", 0.0) in by
    explicit = expand([make_sweep(variants="performer", seq="1k", params={"eps": 0.0})], CPU)
    (p,) = [c for c in explicit if c.backend == "peer:performer-pytorch"]
    assert p.status == "unsupported" and "--param eps=0.0001" in p.reason
