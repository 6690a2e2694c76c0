"""The run settings: built once from defaults, the suite and the command line; the same whichever
command measures a suite."""

from __future__ import annotations

import re

import pytest
import torch

from attnbench.cli import main
from attnbench.core.errors import UsageError
from attnbench.run import settings as S
from attnbench.run.session import resolved

CPU = torch.device("cpu")


def test_layers_suite_then_command_line():
    suite = {"description": "x", "sweep": [{}], "time_budget": 13, "sample_time": 0.5, "rounds": 2}
    s = S.build(suite, "x", time_budget=5.0, threads=None)
    assert (s.time_budget, s.sample_time, s.rounds, s.threads, s.inputs) == (5.0, 0.5, 2, None, "randn")
    assert S.build(None, None) == S.RunSettings()


@pytest.mark.parametrize("key, value, says", [
    ("time_budget", "abc", "suite 'x': time_budget = 'abc'"),
    ("time_budget", float("inf"), "finite positive seconds"),
    ("rounds", 0, "at least 1"),
    ("reference_limit", 1.5, "whole number"),
    ("sample_time", True, "sample_time"),
    ("inputs", "gauss", "randn | peaked"),
    ("device", "tpu", "unknown device 'tpu' (device); accepted: auto, cpu, cuda"),
])
def test_one_validation_names_the_suite_key(key, value, says):
    with pytest.raises(UsageError, match=re.escape(says)):
        S.build({key: value}, "x")


def test_a_bad_option_names_the_option():
    with pytest.raises(UsageError, match="--threads = 0"):
        S.build(None, None, threads=0)


def test_unknown_suite_key_is_refused_with_the_one_list():
    with pytest.raises(UsageError, match="unknown key 'time_buget' .did you mean \"time_budget\""):
        S.check_suite_keys({"time_buget": 1, "sweep": []}, "x")
    assert set(S.SUITE_KEYS) == {"description", "sweep", *S.SETTING_KEYS}


def test_inputs_agree_with_the_measuring_code():
    from attnbench.measure.inputs import INPUTS

    assert S.INPUTS == INPUTS


def _settings_of(monkeypatch, argv: list[str]) -> S.RunSettings:
    """The settings a command hands to session.run_sweep (the sweep itself is not run)."""
    seen = []

    def fake_run_sweep(sweeps, settings, out, **kw):
        seen.append(settings)
        raise KeyboardInterrupt  # stop here: run exits 130 / the gate's interrupted exit

    monkeypatch.setattr("attnbench.run.session.run_sweep", fake_run_sweep)
    assert main(argv) == 130
    [got] = seen
    return got


def test_baseline_save_and_run_measure_a_suite_the_same_way(monkeypatch, tmp_path):
    """The header's `settings` is resolved(settings) in session.run_sweep: equal inputs there
    mean equal headers."""
    threads = torch.get_num_threads()
    try:
        run = _settings_of(monkeypatch, ["run", "--suite", "quick", "--device", "cpu",
                                         "--out", str(tmp_path / "r.jsonl")])
        base = _settings_of(monkeypatch, ["baseline", "save", "--suite", "quick", "--runs", "1", "--device", "cpu",
                                          "--out", str(tmp_path / "b.jsonl")])
    finally:
        torch.set_num_threads(threads)
    a, b = resolved(run, CPU).header(), resolved(base, CPU).header()
    assert a == b
    assert (a["time_budget"], a["sample_time"], a["reference_limit"]) == (13.0, 0.5, 16777216)  # quick.toml's
    assert set(a) == {"time_budget", "sample_time", "reference_limit", "rounds", "inputs", "threads", "device",
                      "keep_throttled", "cuda_graph"}


def test_a_suite_with_mode_and_modes_is_refused(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text('[[sweep]]\nvariants = ["mha"]\nmode = "fwd"\nmodes = ["decode"]\n', encoding="utf-8")
    from attnbench.run.plan import load_suite

    with pytest.raises(UsageError, match="both mode and modes"):
        load_suite(str(suite))
