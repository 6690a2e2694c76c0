"""core/repro.py: the command built from a record and the run's settings (the rerun itself is
tested end to end in tests/run/test_repro_rerun.py)."""

from __future__ import annotations

import shlex

from attnbench.core import repro
from tests.conftest import valid_record

SETTINGS = {"time_budget": 2.0, "sample_time": 0.5, "reference_limit": None, "rounds": 1, "inputs": "randn",
            "threads": 1, "device": "cpu", "keep_throttled": False, "cuda_graph": False}


def _args(rec: dict, settings: dict | None = SETTINGS) -> list[str]:
    argv = shlex.split(repro.command(rec, settings))
    assert argv[:2] == ["attnbench", "run"]
    return argv[2:]


def _opts(args: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            out.setdefault(args[i], []).append(args[i + 1])
            i += 2
        else:
            out.setdefault(args[i], []).append("")
            i += 1
    return out


def test_every_field_of_the_case_and_each_setting_becomes_its_option():
    rec = valid_record(variant="sliding_window", backend="flex", mode="decode", dtype="bfloat16", batch=3,
                       heads=8, kv_heads=2, seq_q=1, seq_k=4096, head_dim=128, causal=True, inputs="peaked",
                       params={"window": 256, "softcap": 50.0, "sink_logit": "learned"}, threads=4)
    o = _opts(_args(rec))
    assert o["--variants"] == ["sliding_window"] and o["--backends"] == ["flex"] and o["--mode"] == ["decode"]
    assert o["--dtype"] == ["bfloat16"] and o["--batch"] == ["3"] and o["--heads"] == ["8"]
    assert o["--kv-heads"] == ["2"] and o["--seq"] == ["1"] and o["--kv-seq"] == ["4096"]
    assert o["--head-dim"] == ["128"] and "--causal" in o and "--no-causal" not in o
    assert o["--param"] == ["sink_logit=learned", "softcap=50", "window=256"]  # sorted by name
    assert o["--device"] == ["cpu"] and o["--threads"] == ["4"] and o["--inputs"] == ["peaked"]
    assert o["--time-budget"] == ["2"] and o["--sample-time"] == ["0.5"] and o["--rounds"] == ["1"]
    assert "--reference-limit" not in o  # null: the default, left out
    assert "--keep-throttled" not in o and "--cuda-graph" not in o


def test_switches_and_the_no_causal_pair():
    rec = valid_record(causal=False)
    o = _opts(_args(rec, SETTINGS | {"keep_throttled": True, "cuda_graph": True, "reference_limit": 4096}))
    assert "--no-causal" in o and "--causal" not in o
    assert "--keep-throttled" in o and "--cuda-graph" in o and o["--reference-limit"] == ["4096"]


def test_values_are_shell_quoted_and_floats_exact():
    rec = valid_record(params={"scale": 0.08838834764831845, "pattern": "a b;rm -rf x", "grid": None})
    o = _opts(_args(rec))
    assert o["--param"] == ["pattern=a b;rm -rf x", "scale=0.08838834764831845"]
    assert "'pattern=a b;rm -rf x'" in repro.command(rec, SETTINGS)


def _definition_record(**changes) -> dict:
    """A record of `run --definition`: its files' paths among the params, as the import writes them."""
    params = {"definition": "/d/def.json", "workloads": "/d/w.jsonl", "blobs": "/data/set", "kv_layout": "paged",
              "page_size": 1, "seq_dist": "fixed", "workload": "0c2489b2", "axes": None, "lengths": None,
              "seq_dist_given": None, "trust_reference": True}
    return valid_record(variant="paged", mode="decode", seq_q=1, seq_k=362, dtype="bfloat16", params=params,
                        definition="gqa_paged_decode_h32_kv4_d128_ps1", definition_file="/d/def.json",
                        workload="0c2489b2", reference_check={"passed": True, "reference": "definition"}) | changes


def test_a_case_from_a_definition_workload_is_rerun_from_its_files_not_its_shape():
    o = _opts(_args(_definition_record()))
    assert o["--definition"] == ["/d/def.json"] and o["--workloads"] == ["/d/w.jsonl"]
    assert o["--workload"] == ["0c2489b2"] and o["--blobs"] == ["/data/set"] and "--trust-reference" in o
    # the definition fixes these; `run --definition` refuses them
    assert not {"--variants", "--mode", "--dtype", "--heads", "--kv-heads", "--head-dim", "--causal", "--no-causal",
                "--param", "--seq", "--kv-seq", "--batch", "--inputs"} & set(o)
    assert o["--backends"] == ["sdpa"] and o["--device"] == ["cpu"]


def test_a_definition_case_from_the_shape_options_gives_them_back():
    synthetic = {"workloads": None, "workload": None, "blobs": None, "lengths": "1,1,1;300,500,300",
                 "seq_dist_given": "300,500"}
    rec = _definition_record(workload=None, reference_check={"passed": True, "reference": "attnbench-fp64"})
    o = _opts(_args(rec | {"batch": 3, "params": rec["params"] | synthetic}))
    assert o["--batch"] == ["3"] and o["--seq-dist"] == ["300,500"] and o["--seq"] == ["300"]
    assert not {"--workloads", "--workload", "--blobs", "--trust-reference", "--kv-seq"} & set(o)
    prefill = {"workloads": None, "workload": None, "lengths": "128,128;512,512", "seq_dist_given": "fixed"}
    o = _opts(_args(rec | {"mode": "fwd", "batch": 2, "params": rec["params"] | prefill}))
    assert o["--seq"] == ["128"] and o["--kv-seq"] == ["512"] and o["--seq-dist"] == ["fixed"]


def test_the_reference_backend_is_rerun_trusted():
    rec = _definition_record(backend="reference", reference_check=None)
    assert "--trust-reference" in _opts(_args(rec))


def test_without_settings_the_record_alone_still_names_the_case():
    o = _opts(_args(valid_record(), None))
    assert o["--variants"] == ["mha"] and "--time-budget" not in o


def test_a_mixed_batch_is_rerun_from_its_spec_alone():
    rec = valid_record(variant="paged", backend="sdpa", batch=5, seq_q=64, seq_k=96, causal=True,
                       params={"batch_spec": "2q64s96_3q1s80", "kv_layout": "paged", "page_size": 16},
                       batch_spec="2q64s96_3q1s80")
    o = _opts(_args(rec))
    assert o["--batch-spec"] == ["2q64s96_3q1s80"]
    assert not {"--batch", "--seq", "--kv-seq", "--seq-dist"} & set(o)  # run refuses them beside a spec
    assert o["--param"] == ["kv_layout=paged", "page_size=16"]


def test_a_users_backend_file_travels_with_its_case_and_an_entry_point_needs_nothing():
    rec = valid_record(backend="my-softmax",
                       backend_source={"kind": "file", "where": "/home/u/my kernel.py", "sha256": "ab"})
    assert _opts(_args(rec))["--backend-file"] == ["/home/u/my kernel.py"]
    rec["backend_source"] = {"kind": "entry point", "where": "mine = pkg.mod:BACKENDS", "sha256": None}
    assert "--backend-file" not in _opts(_args(rec))
