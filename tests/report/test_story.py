"""The report opens with "What this run shows": sentences computed from hand-made records (speedup
and memory saving against run's baseline, confirmed claims, failures, flags), before the contents,
with the key charts; lengths print as 512, 1k, 1.5k; decode claims O(L) per token."""

from __future__ import annotations

from attnbench.report import analysis
from attnbench.report.build import check_baseline
from attnbench.report.story import story
from conftest import results_file, valid_record

CAT = {"flash": {"family": "exact", "exact": True, "full_attention_error": False, "time": "O(L²)", "memory": "O(L²)",
                 "params": [], "backends": {"sdpa": {"time": None, "memory": "O(L)"}}},
       "performer": {"family": "linear", "exact": False, "full_attention_error": True, "time": "O(L·m)",
                     "memory": "O(L·m)", "params": ["eps"], "backends": {}}}


def ok(variant: str, backend: str, L: int, ms: float, mem: float, **extra) -> dict:
    return valid_record(**{"case_id": f"{variant}-{backend}-{L}-{extra.get('params')}", "variant": variant,
                           "backend": backend, "seq_q": L, "seq_k": L, "status": "ok", "reason": None,
                           "peak_mem_bytes": int(mem), "flags": [],
                           "latency_ms": {"median": ms, "iqr": 0.01 * ms, "n": 20}, **extra})


def records() -> list[dict]:
    Ls = (512, 1024, 1536, 2048, 4096)
    recs = [ok("flash", "eager", L, 1e-5 * L * L, 64.0 * L * L) for L in Ls]
    recs += [ok("flash", "sdpa", L, 5e-6 * L * L, 4096.0 * L) for L in Ls]
    for eps in (0.0, 1e-4):
        recs += [ok("performer", "chunked", L, 1e-3 * L, 2048.0 * L, params={"eps": eps},
                    error={"vs": "x", "rel_l2": 0.2, "max_abs": 1.0, "full_rel_l2": 0.2, "full_max_abs": 1.0})
                 for L in Ls]
    recs.append(valid_record(case_id="crash", variant="flash", backend="flex", status="error",
                             reason="RuntimeError: boom"))
    return recs


def _report(tmp_path, recs):
    from attnbench.cli import main

    path = tmp_path / "r.jsonl"
    from attnbench.core.results import make_header

    results_file(path, *recs, header={**make_header(["attnbench", "run"], {"device": "cpu"}, None), "catalogue": CAT})
    assert main(["report", str(path), "--out", str(tmp_path / "rep")]) == 0
    return (tmp_path / "rep" / "report.md").read_text(), (tmp_path / "rep" / "report.html").read_text()


def test_the_report_opens_with_its_story_and_key_charts(tmp_path):
    md, html = _report(tmp_path, records())
    head = md.split("**Contents**")[0]
    assert "## What this run shows" in head and "## Environment" not in head and "## Scaling" not in head
    assert "flash:sdpa is 2× faster than flash:eager at 4k and uses 64× less memory." in head
    assert "Memory confirmed (the fitted exponent's 95 % interval excludes the other classes): O(L) for flash:sdpa; " \
           "O(L²) for flash:eager; O(L·m) for performer:chunked" in head
    assert "performer:chunked eps=0.0001 is 41× faster than flash:eager at 4k and uses 128× less memory — an " \
           "approximation, relative L2 error 0.2 against exact attention there." in head
    assert "1 case failed: flash:flex at 64 (error)" in head
    assert "![Median latency vs sequence length" in head and "![Peak memory vs sequence length" in head
    assert md.index("## Environment") > md.index("## Not run or failed")  # details last
    assert "performer:chunked eps=0.0" in md and "performer:chunked eps=0.0001" in md
    assert "| 1.5k |" in md and "0k" not in md
    assert html.index("What this run shows") < html.index("<nav>") < html.index("Environment</h2>")


def test_the_baseline_is_runs_when_mha_eager_did_not_run():
    from attnbench.report.catalogue import annotate

    recs = annotate({"catalogue": CAT}, records())
    assert check_baseline(recs, None) == ("flash:eager", None)
    recs = annotate({"catalogue": CAT}, [r for r in records() if r["backend"] != "eager"])
    base, note = check_baseline(recs, None)
    assert note and "No baseline" in note


def test_a_decode_series_claims_o_l_per_token():
    recs = [ok("flash", "eager", L, 1e-3 * L, 1.0 * L, mode="decode", seq_q=1) for L in (1024, 2048, 4096, 8192)]
    from attnbench.report.catalogue import annotate

    [row] = analysis.scaling_table(annotate({"catalogue": CAT}, recs), "flash:eager")
    assert row["time_claim"] == "O(L) per token (a full forward: O(L²))" and row["time_verdict"] == "agrees"
    assert any("Latency confirmed (the fitted exponent's 95 % interval excludes the other classes): O(L) per token for "
               "flash:eager." == s for s in story(annotate({"catalogue": CAT}, recs),
                                                                       "flash:eager", None))


def test_a_noisy_ratio_says_it_is_indicative_only():
    recs = records()
    for r in recs:
        if r["backend"] == "sdpa" and r["seq_q"] == 4096:
            r["flags"] = ["contended"]
    from attnbench.report.catalogue import annotate

    text = " ".join(story(annotate({"catalogue": CAT}, recs), "flash:eager", None))
    assert "(noisy: contended; indicative only)" in text


def test_a_one_length_comparison_is_a_bar_or_dot_chart(tmp_path):
    recs = [r for r in records() if r["seq_q"] == 1024 or r["status"] != "ok"]
    md, _ = _report(tmp_path, recs)
    assert "![Median latency at L = 1k (fwd, float32, 4 series)]" in md
    assert "One length was measured, so each series is a" in (tmp_path / "rep" / "report.html").read_text()
    assert "vs sequence length" not in md.split("## Throughput")[0]


def test_the_story_charts_draw_a_few_series_of_many(tmp_path):
    recs = records() + [ok("flash", f"b{i}", L, 1e-5 * L * L * (1 + i / 10), 64.0 * L * L)
                        for i in range(4) for L in (512, 1024, 1536, 2048, 4096)]
    md, _ = _report(tmp_path, recs)
    head = md.split("**Contents**")[0]
    assert "(charts/story-latency-" in head and "6 of 8 series" in head
    assert "(charts/latency-" in md.split("**Contents**")[1]  # every series still drawn in Scaling


def test_an_approximation_worse_than_zeros_is_not_a_headline():
    """linformer 40× faster at error 3 against exact attention is no headline: the story names its
    error among the approximations and headlines the fastest one closer than returning zeros,
    whose speedup carries its error beside it."""
    from attnbench.report.catalogue import annotate

    cat = {**CAT, "linformer": {**CAT["performer"], "params": []}}
    recs = records() + [ok("linformer", "sdpa", L, 2.5e-4 * L, 1024.0 * L,
                           error={"vs": "x", "rel_l2": 3.0, "max_abs": 9.0, "full_rel_l2": 3.0, "full_max_abs": 9.0})
                        for L in (512, 1024, 1536, 2048, 4096)]
    text = story(annotate({"catalogue": cat}, recs), "flash:eager", None)
    assert not any(s.startswith("linformer:sdpa is") for s in text)
    assert any(s.startswith("performer:chunked eps=0.0001 is 41× faster than flash:eager at 4k")
               and "— an approximation, relative L2 error 0.2 against exact attention there" in s for s in text)
    [acc] = [s for s in text if s.startswith("Approximation error")]
    assert "linformer:sdpa 3 at 4k" in acc and "1 at or above 1, worse than returning zeros (their speedups are " \
                                               "not headlined)" in acc


def test_an_exact_bfloat16_result_is_not_called_an_approximation():
    """bfloat16 SDPA 2.2e-3 from the fp64 reference is exact within bfloat16's budget (1.6e-2): its
    speedup is an exact series', with no approximation error beside it."""
    from attnbench.report.catalogue import annotate

    def bf16(backend, L, ms, err):
        return ok("flash", backend, L, ms, 1.0 * L, dtype="bfloat16",
                  error={"vs": "fp64 reference", "rel_l2": err, "max_abs": err, "judged_by": "rel_l2"})

    recs = [bf16("eager", L, 1e-5 * L * L, 2.0e-3) for L in (512, 1024)]
    recs += [bf16("sdpa", L, 5e-6 * L * L, 2.2e-3) for L in (512, 1024)]
    text = story(annotate({"catalogue": CAT}, recs), "flash:eager", None)
    assert text[0] == "flash:sdpa is 2× faster than flash:eager at 1k and uses 1× less memory."
    assert not any("approximation" in s.lower() for s in text)
