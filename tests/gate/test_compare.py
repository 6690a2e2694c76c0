"""The regression gate on synthetic results files: statistics, verdicts, exit codes, formats.

No benchmark runs here: results files are written with attnbench.core.results.Writer from samples
drawn with a seeded generator, so every verdict is deterministic.
"""

from __future__ import annotations

import itertools
import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from attnbench.cli import main
from attnbench.core.errors import UsageError
from attnbench.core.results import RECORD_FIELDS, Writer, case_id, make_header
from attnbench.gate.compare import Options, compare, confirm, parse_fraction
from attnbench.gate.sides import build_side, load_run
from attnbench.gate.stats import bootstrap_ratio, mann_whitney, seed_for
from attnbench.measure.timing import Stats

ENV = {
    "attnbench": "0.1.0",
    "git_commit": None,
    "python": "3.11.7",
    "platform": "Linux",
    "torch": "2.13.0+cpu",
    "triton": "3.9.0",
    "cuda": None,
    "device": "cpu",
    "cpu_model": "AMD EPYC",
    "cpu_count": 2,
    "threads": 1,
    "device_name": "AMD EPYC",
    "driver": None,
    "nvml": "unavailable",
}


def record(
    i: int, samples, status: str = "ok", peak: int = 8 << 20, variant: str = "mha", backend: str = "sdpa"
) -> dict:
    prob = dict(
        batch=1,
        heads=4,
        kv_heads=4,
        seq_q=64 * (i + 1),
        seq_k=64 * (i + 1),
        head_dim=64,
        dtype="float32",
        causal=False,
        mode="fwd",
        params={},
    )
    rec = {f: None for f in RECORD_FIELDS}
    rec.update(
        case_id=case_id(prob, variant, backend, "cpu"),
        variant=variant,
        backend=backend,
        device="cpu",
        **prob,
        status=status,
        threads=1,
    )
    if status == "ok":
        rec.update(
            latency_ms=Stats.of(list(samples)).__dict__,
            samples_ms=[float(s) for s in samples],
            peak_mem_bytes=peak,
            mem_source="cpu-vmhwm",
        )
    else:
        rec["reason"] = "RuntimeError: injected"
    return rec


def write(path, records, env=ENV, gemm_ms=100.0):
    refs = {
        "gemm": {"float32": {"n": 2048, "dtype": "float32", "median_ms": gemm_ms, "flops_per_s": 1e11}},
        "copy": {"bytes": 1 << 28, "median_ms": 50.0, "bytes_per_s": 1e10},
    }
    with Writer(path, make_header(["test"], env, refs)) as w:
        for r in records:
            w.write(r)
    return str(path)


def noisy(rng, median: float, n: int = 40, noise: float = 0.03):
    return median * np.exp(rng.normal(0.0, noise, n))


def fifty(seed: int, slow: dict[int, float] | None = None, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    slow = slow or {}
    return [record(i, noisy(rng, (0.5 + 0.1 * i) * scale * slow.get(i, 1.0))) for i in range(50)]


@pytest.fixture
def pair(tmp_path):
    def make(cur_records, base_records=None, **kw):
        base = write(tmp_path / "base.jsonl", base_records if base_records is not None else fifty(1))
        cur = write(tmp_path / "cur.jsonl", cur_records, **kw)
        return base, cur

    return make


def run_cli(capsys, *args):
    rc = main(["compare", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------ Mann–Whitney, by hand
def test_mann_whitney_exact_small_samples():
    r = mann_whitney([1, 2, 3], [4, 5, 6])  # U = 0: 1 of the C(6,3) = 20 orderings, two-sided
    assert (r.u, r.method) == (0.0, "exact") and r.p == pytest.approx(0.1)
    assert mann_whitney([4, 5, 6], [1, 2, 3]).u == 9.0
    r = mann_whitney([1, 3, 5], [2, 4, 6])  # U = 3; P(U <= 3) = (1+1+2+3)/20
    assert r.u == 3.0 and r.p == pytest.approx(0.7)
    r = mann_whitney(list(range(1, 11)), list(range(11, 21)))  # 2 / C(20, 10)
    assert r.p == pytest.approx(2 / 184756)


def test_mann_whitney_normal_approximation_with_ties():
    # pooled ranks: 1 | 2,2,2 -> 3 | 3,3 -> 5.5 | 7 | 8; R1 = 1+3+3+5.5 = 12.5; U1 = 12.5 - 10 = 2.5
    # var = 4*4/12 * (9 - ((27-3) + (8-2)) / 56) = 11.2857; z = (5.5 - 0.5) / 3.3594 = 1.4884
    r = mann_whitney([1, 2, 2, 3], [2, 3, 4, 5])
    assert (r.u, r.method) == (2.5, "normal")
    assert r.p == pytest.approx(0.13664, abs=2e-5)


def test_mann_whitney_normal_without_ties_large():
    r = mann_whitney(list(range(25)), list(range(25, 50)))  # 625 cells > exact limit
    assert r.method == "normal" and r.u == 0.0
    sd = math.sqrt(625 / 12 * 51)
    assert r.p == pytest.approx(math.erfc((312.5 - 0.5) / sd / math.sqrt(2)), rel=1e-9)
    assert mann_whitney([1.0] * 8, [1.0] * 8).p == 1.0  # all tied: no evidence


def test_exact_p_matches_enumeration():
    """The exact two-sided p-value equals the one counted over every ordering of 4 x's and 5 y's."""
    m, n = 4, 5
    counts = [0] * (m * n + 1)
    for xs in itertools.combinations(range(m + n), m):  # positions of the x's in the ordering
        ys = [p for p in range(m + n) if p not in xs]
        counts[sum(1 for x in xs for y in ys if x > y)] += 1
    total = sum(counts)
    for x in ([0, 1, 2, 3], [0, 2, 5, 7], [1, 4, 6, 8]):
        y = [v for v in range(m + n) if v not in x]
        r = mann_whitney(x, y)
        u = int(r.u)
        expected = min(1.0, 2 * min(sum(counts[: u + 1]), sum(counts[u:])) / total)
        assert r.method == "exact" and r.p == pytest.approx(expected, rel=1e-12), (x, u)


def test_bootstrap_ratio_is_reproducible_and_covers_the_truth():
    rng = np.random.default_rng(3)
    base, cur = noisy(rng, 1.0), noisy(rng, 1.2)
    a = bootstrap_ratio(base, cur, seed_for("k"))
    b = bootstrap_ratio(base, cur, seed_for("k"))
    assert a == b and a.lo < 1.2 < a.hi and a.lo < a.ratio < a.hi


def test_several_runs_are_resampled_as_runs_not_as_independent_samples():
    rng = np.random.default_rng(4)
    base = [noisy(rng, 1.0, noise=0.01), noisy(rng, 1.0, noise=0.01), noisy(rng, 1.25, noise=0.01)]
    cur = [noisy(rng, 1.25, noise=0.01) for _ in range(3)]  # the same as the baseline's third run
    pooled = bootstrap_ratio(np.concatenate(base), np.concatenate(cur), seed_for("k"))
    runs = bootstrap_ratio(base, cur, seed_for("k"))
    assert pooled.ratio == pytest.approx(runs.ratio) == pytest.approx(1.25, abs=0.02)
    assert pooled.lo > 1.15  # as if independent: a "confirmed" +25 % that run-to-run drift made
    assert runs.lo < 1.03  # resampling runs puts that drift into the interval


# ------------------------------------------------------------------ verdicts and exit codes
def test_one_injected_15pct_slowdown_in_fifty_is_detected(pair, capsys):
    base, cur = pair(fifty(2, slow={17: 1.15}))
    rc, out, _ = run_cli(capsys, base, cur, "--format", "json")
    doc = json.loads(out)
    regressed = [c["label"] for c in doc["cases"] if c["verdict"] == "regression"]
    assert rc == 1 and doc["exit_code"] == 1  # one regression is enough to fail
    assert regressed == ["mha/sdpa fwd B1 H4/4 L1152x1152 D64 float32"]


def test_three_percent_noise_without_slowdown_passes(pair, capsys):
    base, cur = pair(fifty(2))
    rc, out, _ = run_cli(capsys, base, cur, "--format", "json")
    doc = json.loads(out)
    assert rc == 0 and "regression" not in doc["counts"]
    assert doc["counts"].get("same", 0) >= 45


def test_environment_mismatch_exits_3_naming_the_fields(pair, capsys):
    base, cur = pair(fifty(2), env=ENV | {"threads": 2, "torch": "2.12.0"})
    rc, out, err = run_cli(capsys, base, cur)
    assert rc == 3
    assert "threads" in err and "torch" in err and "INCOMPARABLE" in out
    rc, _, _ = run_cli(capsys, base, cur, "--allow-env-mismatch")
    assert rc == 0


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "empty", "missing", "not-attnbench"])
def test_bad_baseline_exits_3_with_a_clear_message(pair, capsys, tmp_path, damage):
    base, cur = pair(fifty(2))
    text = open(base).read()
    if damage == "corrupt":
        lines = text.splitlines(keepends=True)
        text = "".join(lines[:5] + ["{not json\n"] + lines[5:])
    elif damage == "truncated":
        text = text[: len(text) - 200]
    elif damage == "empty":
        text = ""
    elif damage == "not-attnbench":
        text = '{"hello": 1}\n'
    if damage == "missing":
        base = str(tmp_path / "nope.jsonl")
    else:
        open(base, "w").write(text)
    rc, _, err = run_cli(capsys, base, cur)
    words = {
        "corrupt": "corrupt",
        "truncated": "truncated",
        "empty": "empty",
        "missing": "does not exist",
        "not-attnbench": "not an attnbench",
    }
    assert rc == 3 and words[damage] in err and err.count("\n") == 1


def test_bad_options_exit_3(pair, capsys):
    base, cur = pair(fifty(2))
    for args in (
        ["--threshold", "ten"],
        ["--threshold", "5%", "--warn", "8%"],
        ["--metric", "speed"],
        ["--normalize", "mha"],
        ["--format", "html"],
        ["--report", "x.csv"],
        ["--alpha", "2"],
    ):
        rc, _, err = run_cli(capsys, base, cur, *args)
        assert rc == 3 and "error:" in err, args
    with pytest.raises(UsageError):
        parse_fraction("150%", "--threshold")
    assert parse_fraction("10%", "t") == parse_fraction("0.1", "t") == pytest.approx(0.1)


def test_errors_in_current_run_exit_2_and_unmatched_are_reported(pair, capsys):
    recs = fifty(2)
    recs[3] = record(3, [], status="error")
    recs.append(record(60, noisy(np.random.default_rng(0), 1.0)))  # a new case
    del recs[10]  # a case the current run lost
    base, cur = pair(recs)
    rc, out, _ = run_cli(capsys, base, cur, "--format", "json")
    counts = json.loads(out)["counts"]
    assert rc == 2 and counts["error"] == 1 and counts["new"] == 1 and counts["missing"] == 1


def test_not_run_on_both_sides_is_not_an_error(pair, capsys):
    base_recs, cur_recs = fifty(1), fifty(2)
    base_recs[4] = record(4, [], status="unsupported")
    cur_recs[4] = record(4, [], status="unsupported")
    base, cur = pair(cur_recs, base_records=base_recs)
    rc, out, _ = run_cli(capsys, base, cur, "--format", "json")
    assert rc == 0 and json.loads(out)["counts"]["n/a"] == 1


def test_gemm_normalization_cancels_a_uniformly_slower_machine(pair, capsys):
    base, cur = pair(fifty(2, scale=1.25), gemm_ms=125.0)  # everything 25 % slower, GEMM too
    rc, _, _ = run_cli(capsys, base, cur)
    assert rc == 1
    rc, out, _ = run_cli(capsys, base, cur, "--normalize", "gemm", "--format", "json")
    assert rc == 0 and "regression" not in json.loads(out)["counts"]


def test_case_normalization_uses_the_named_case_of_each_run(pair, capsys):
    slow = {i: 1.25 for i in range(50) if i != 7}  # all but case 7 got slower ...
    base, cur = pair(fifty(2, slow=slow))
    rc, out, _ = run_cli(capsys, base, cur, "--normalize", "mha:sdpa:seq=192", "--format", "json")
    doc = json.loads(out)  # ... measured relative to case 2 (L=192, itself slowed) only case 7 moved
    moved = [c["label"] for c in doc["cases"] if c["verdict"] == "improvement"]
    assert rc == 0 and moved == ["mha/sdpa fwd B1 H4/4 L512x512 D64 float32"]
    assert doc["counts"]["reference"] == 1
    rc, _, err = run_cli(capsys, base, cur, "--normalize", "mha:sdpa:seq=100")
    assert rc == 3 and "no such case" in err


def test_memory_is_compared_with_its_own_threshold(pair, capsys):
    recs = fifty(2)
    recs[5]["peak_mem_bytes"] = int(1.10 * (8 << 20))  # +10 % and +0.8 MiB: below the 1 MiB floor
    recs[6]["peak_mem_bytes"] = 2 * (8 << 20)
    base, cur = pair(recs)
    rc, out, _ = run_cli(capsys, base, cur, "--metric", "memory", "--format", "json")
    doc = json.loads(out)
    assert rc == 1 and [c["label"] for c in doc["cases"] if c["verdict"] == "regression"] == [
        "mha/sdpa fwd B1 H4/4 L448x448 D64 float32"
    ]
    rc, _, _ = run_cli(capsys, base, cur)  # latency gated: memory shown, does not fail
    assert rc == 0


def test_large_improvement_flags_a_stale_baseline(pair, capsys):
    base, cur = pair(fifty(2, slow={9: 0.6}))
    rc, out, _ = run_cli(capsys, base, cur, "--format", "markdown")
    assert rc == 0 and "baseline may be stale" in out


def test_too_few_samples_is_inconclusive(pair, capsys):
    recs = fifty(2, slow={0: 1.5})
    recs[0] = record(0, recs[0]["samples_ms"][:4])
    base, cur = pair(recs)
    rc, out, _ = run_cli(capsys, base, cur, "--format", "json")
    case0 = next(c for c in json.loads(out)["cases"] if "L64x64" in c["label"])
    assert rc == 0 and case0["verdict"] == "inconclusive" and "too few samples" in case0["why"]


def test_a_baseline_holding_several_runs_is_split_into_runs(tmp_path):
    runs = [fifty(1)[:5], fifty(3)[:5], fifty(4)[:5]]
    path = write(tmp_path / "base.jsonl", [r for run in runs for r in run])  # as `baseline save --runs 3`
    side = build_side([load_run(path)], "mha:sdpa:seq=192")
    assert side.paths == (path,) and len(side.cases) == 5
    for key, m in side.cases.items():
        assert len(m.groups) == 3 and m.runs == 3
        if key == side.reference_key:  # each run divided by its own reference case's median
            assert [float(np.median(g)) for g in m.groups] == pytest.approx([1.0, 1.0, 1.0])


# ------------------------------------------------------------------ formats
def test_junit_parses_and_marks_the_regression(pair, capsys, tmp_path):
    base, cur = pair(fifty(2, slow={17: 1.15}))
    xml_path, md_path = tmp_path / "gate.xml", tmp_path / "gate.md"
    rc, _, _ = run_cli(capsys, base, cur, "--report", str(xml_path), "--report", str(md_path))
    root = ET.parse(xml_path).getroot()
    cases = root.findall(".//testcase")
    assert rc == 1 and len(cases) == 50 and len(root.findall(".//failure")) == 1
    assert root.find("testsuite").get("failures") == "1"
    md = md_path.read_text()
    assert md.splitlines()[0].startswith("**FAIL** — attnbench gate: 1 regression")
    assert "<details>" in md and md.index("| regression |") < md.index("<details>")


def test_markdown_starts_with_the_verdict_line_when_passing(pair, capsys):
    base, cur = pair(fifty(2))
    rc, out, _ = run_cli(capsys, base, cur, "--format", "markdown")
    assert rc == 0 and out.splitlines()[0].startswith("**PASS** — attnbench gate: 0 regressions")


# ------------------------------------------------------------------ the gate's confirmation
def test_confirm_needs_the_rerun_alone_to_regress(tmp_path):
    rng = np.random.default_rng(5)
    base = build_side([load_run(write(tmp_path / "b.jsonl", [record(0, noisy(rng, 1.0))]))])
    slow1 = load_run(write(tmp_path / "c1.jsonl", [record(0, noisy(rng, 1.3))]))
    fine2 = load_run(write(tmp_path / "c2.jsonl", [record(0, noisy(rng, 1.0))]))
    slow2 = load_run(write(tmp_path / "c3.jsonl", [record(0, noisy(rng, 1.3))]))
    o = Options()
    first = compare(base, build_side([slow1]), o)
    assert first.exit_code == 1
    keys = {c.key for c in first.cases}
    unconfirmed = confirm(
        first, compare(base, build_side([slow1, fine2]), o), compare(base, build_side([fine2]), o), keys
    )
    assert unconfirmed.exit_code == 0 and unconfirmed.cases[0].verdict == "inconclusive"
    assert "re-run alone same" in unconfirmed.cases[0].note
    confirmed = confirm(
        first, compare(base, build_side([slow1, slow2]), o), compare(base, build_side([slow2]), o), keys
    )
    assert confirmed.exit_code == 1 and len(confirmed.current) == 2


def test_shown_medians_pool_every_run_like_the_ratio(tmp_path):
    """A side of several runs shows the median of all their samples, the same median the ratio
    uses, not the first run's (which made a 2-run side read 18 ms → 11 ms next to '+94 %')."""
    rng = np.random.default_rng(3)
    base_runs = [
        load_run(write(tmp_path / f"b{i}.jsonl", [record(0, noisy(rng, m, n=20))]))
        for i, m in enumerate((10.0, 30.0, 30.0))
    ]
    cur = load_run(write(tmp_path / "c.jsonl", [record(0, noisy(rng, 20.0, n=60))]))
    base = build_side(base_runs)
    (result,) = compare(base, build_side([cur]), Options()).cases
    pooled = float(np.median(np.concatenate([r.records[0]["samples_ms"] for r in base_runs])))
    assert result.base_ms == pytest.approx(pooled) and result.base_ms > 25
    assert (result.cur_ms < result.base_ms) == (result.latency.ratio < 1)


def test_two_files_with_no_case_in_common_exit_3_with_one_line(pair, capsys):
    rng = np.random.default_rng(3)
    base, cur = pair([record(i, noisy(rng, 1.0), backend="flex") for i in range(3)])
    rc, out, err = run_cli(capsys, base, cur)
    assert rc == 3 and out == ""
    assert len(err.strip().splitlines()) == 1 and "share no case" in err
    assert "50 cases of mha:sdpa" in err and "3 cases of mha:flex" in err


def test_a_case_that_became_wrong_fails_the_gate_whatever_its_speed(pair, capsys):
    """The current side's case 3 is as fast as before but its output is 0.1 off its fp64 reference
    (float32 at Lk 256 allows 4.1e-6): verdict wrong (exit 2, a JUnit failure), never a speed
    verdict. The other way round there is no speed to compare with: new, exit 0."""
    cur = fifty(2)
    cur[3]["error"] = {"vs": "fp64 reference", "rel_l2": 0.1, "max_abs": 0.3, "judged_by": "rel_l2"}
    base, cur_path = pair(cur)
    rc, out, _ = run_cli(capsys, base, cur_path, "--format", "junit")
    assert rc == 2
    [failure] = ET.fromstring(out).iter("failure")
    assert failure.get("type") == "wrong" and failure.get("message").startswith(
        "wrong output, not compared for speed: error 1.0e-01 > 4.1e-06 allowed for float32 at Lk 256")
    rc, out, _ = run_cli(capsys, cur_path, base, "--format", "json")
    [case] = [c for c in json.loads(out)["cases"] if "L256x256" in c["label"]]
    assert rc == 0 and case["verdict"] == "new" and "the baseline's output was wrong" in case["why"]
