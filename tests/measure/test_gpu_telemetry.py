"""Energy, clock sampling and throttle exclusion without a GPU: a fake NVML (pynvml's functions
monkeypatched: a 250 W device whose energy counter refreshes every 20 ms and which throttles in
a 0.4 s square wave) and a fake powercap tree, end to end through records, tables and the report."""

from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import pytest
import torch

from attnbench.measure import clocks, energy, telemetry
from attnbench.measure.timing import TimingPolicy

CPU = torch.device("cpu")
SW_THERMAL = telemetry.THROTTLE_BITS["sw_thermal"]


class FakeGpu:
    """A GPU as NVML reports it: constant power, a coarse energy counter, throttling by reading."""

    # throttled for 4 clock readings, then not for 4, and so on: every loop of >= 10 readings sees
    # both states, however the sampler thread is scheduled. (Throttling by wall time, half of every
    # 0.4 s, failed once in CI: with the readings bunched at the loop's two ends, both fell in
    # throttled halves.)
    def __init__(self, power_w: float = 250.0, flip_every: int = 4, throttles: bool = True):
        self.t0, self.power_w, self.flip_every, self.throttles = time.perf_counter(), power_w, flip_every, throttles
        self.reads = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def power_mw(self) -> int:
        self.reads += 1  # Nvml.clocks() reads the power first: one reading, one count
        return int(self.power_w * 1000)

    def throttled(self) -> bool:
        return self.throttles and (self.reads // self.flip_every) % 2 == 0

    def install(self, monkeypatch) -> None:
        import pynvml

        fake = {
            "nvmlInit": lambda: None,
            "nvmlDeviceGetHandleByIndex": lambda i: "gpu0",
            "nvmlDeviceGetClockInfo": lambda h, which: (
                2619 if which == pynvml.NVML_CLOCK_MEM else (1500 if self.throttled() else 1980)),
            "nvmlDeviceGetPowerUsage": lambda h: self.power_mw(),
            "nvmlDeviceGetCurrentClocksEventReasons": lambda h: SW_THERMAL if self.throttled() else 0,
            # mJ, refreshed every 20 ms
            "nvmlDeviceGetTotalEnergyConsumption": lambda h: int(self.power_w * 1000 * (self.elapsed() // 0.02) * 0.02),
            "nvmlDeviceGetMemoryInfo": lambda h, version=None: SimpleNamespace(used=1 << 30),
        }
        for name, fn in fake.items():
            monkeypatch.setattr(pynvml, name, fn, raising=False)


@pytest.fixture
def fake_gpu(monkeypatch):
    gpu = FakeGpu()
    gpu.install(monkeypatch)
    return gpu


# ---------------------------------------------------------------- RAPL: a fake powercap tree
def powercap(root, packages: dict[int, tuple[int, int]]):
    """packages: index -> (energy_uj, max_energy_range_uj); each with a core sub-zone."""
    for i, (uj, wrap) in packages.items():
        z = root / f"intel-rapl:{i}"
        (z / f"intel-rapl:{i}:0").mkdir(parents=True)
        (z / "name").write_text(f"package-{i}\n")
        (z / "energy_uj").write_text(f"{uj}\n")
        (z / "max_energy_range_uj").write_text(f"{wrap}\n")
        (z / f"intel-rapl:{i}:0" / "energy_uj").write_text("999999\n")  # inside its package: never added
    return root


def test_rapl_sums_packages_and_handles_wraparound(tmp_path):
    root = powercap(tmp_path, {0: (1_000_000 - 100, 1_000_000), 1: (5_000, 2_000_000)})
    meter = energy.rapl_meter(root)
    assert meter.reason is None and meter.source == "rapl"
    before = meter.read()
    (root / "intel-rapl:0" / "energy_uj").write_text("50\n")  # wrapped: 100 + 50 µJ
    (root / "intel-rapl:1" / "energy_uj").write_text("5300\n")  # 300 µJ
    assert meter.delta_j(before, meter.read()) == pytest.approx(450e-6)


def test_rapl_absent_or_unreadable_says_why(tmp_path):
    assert "no RAPL package counters" in energy.rapl_meter(tmp_path / "nothing").reason
    root = tmp_path / "pc"
    (root / "intel-rapl:0" / "energy_uj").mkdir(parents=True)  # unreadable as a number: a directory
    (root / "intel-rapl:0" / "max_energy_range_uj").write_text("1000\n")
    meter = energy.rapl_meter(root)
    assert meter.read is None and "unreadable" in meter.reason
    out = energy.measure(lambda: None, lambda: None, meter, 1e-3, 8, max_loop_s=1.0)
    assert out["energy_j"] is None and out["reason"] == meter.reason


def test_energy_loop_per_call_and_per_token_from_rapl(tmp_path):
    """Each call adds exactly 10 µJ to the fake counter (starting 30 µJ below the wrap)."""
    wrap = 10**9
    root = powercap(tmp_path, {0: (wrap - 30, wrap)})
    counter = root / "intel-rapl:0" / "energy_uj"

    def call():
        counter.write_text(f"{(int(counter.read_text()) + 10) % wrap}\n")

    meter = energy.rapl_meter(root)
    out = energy.measure(call, lambda: None, meter, per_call_s=1e-4, tokens=4, max_loop_s=1.0)
    assert out["reason"] is None and out["calls"] >= 1
    assert out["loop_s"] >= meter.min_loop_s
    assert out["energy_j"] == pytest.approx(10e-6)
    assert out["energy_j_per_token"] == pytest.approx(2.5e-6)


def test_a_loop_too_short_for_the_counter_is_null_with_the_reason(fake_gpu):
    meter = energy.nvml_meter(telemetry.Nvml())
    assert meter.min_loop_s == pytest.approx(1.0)  # 100 ms refresh, 10 % resolution
    out = energy.measure(lambda: None, lambda: None, meter, 1e-3, 1, max_loop_s=0.5)
    assert out["energy_j"] is None and "must last >= 1 s" in out["reason"] and "0.5 s" in out["reason"]


def test_nvml_energy_matches_the_fake_power(fake_gpu):
    meter = energy.nvml_meter(telemetry.Nvml())
    out = energy.measure(lambda: time.sleep(1e-3), lambda: None, meter, 1e-3, tokens=2, max_loop_s=2.0)
    # one 20 ms refresh missed at either end at most: within 2 × 0.02 s / 1 s of 250 W
    assert out["mean_power_w"] == pytest.approx(250.0, rel=0.05)
    assert out["energy_j"] * out["calls"] == pytest.approx(250.0 * out["loop_s"], rel=0.05)


def test_without_nvml_the_meter_says_why():
    nvml = telemetry.Nvml.__new__(telemetry.Nvml)
    nvml.handle, nvml.reason = None, "no CUDA device (CPU run)"
    assert energy.meter_for("cuda", nvml).reason == "no CUDA device (CPU run)"


# ---------------------------------------------------------------- clocks: flagging and exclusion
def test_the_flush_buffer_is_twice_the_devices_l2(monkeypatch):
    from attnbench.measure import timing

    props = SimpleNamespace(L2_cache_size=50 * 2**20)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    assert timing.l2_flush_bytes(torch.device("cuda", 0)) == 100 * 2**20
    props.L2_cache_size = 0  # not reported: the fallback, which the L2 check then calls unchecked
    assert timing.l2_flush_bytes(torch.device("cuda", 0)) == timing.FLUSH_FALLBACK


def test_flag_samples_uses_the_reading_in_force_and_those_during():
    r = [clocks.Reading(0.0, 1980, 2619, 250.0, 0), clocks.Reading(1.0, 1500, 2619, 250.0, SW_THERMAL),
         clocks.Reading(2.0, 1980, 2619, 250.0, 0), clocks.Reading(3.0, None, None, None, None)]
    spans = ((0.1, 0.2), (0.5, 1.5), (1.2, 1.4), (2.1, 2.9), (-1.0, -0.5))
    assert clocks.flag_samples(spans, r) == [False, True, True, False, None]  # the last: before any reading
    assert clocks.kept_samples((1.0, 2.0, 3.0), [False, True, None], keep=False) == [1.0, 3.0]
    assert clocks.kept_samples((1.0, 2.0, 3.0), [False, True, None], keep=True) == [1.0, 2.0, 3.0]
    assert clocks.kept_samples((1.0, 2.0), [True, True], keep=False) == [1.0, 2.0]  # all throttled: kept, noted


def _case():
    from attnbench.run.plan import expand, make_sweep

    return expand([make_sweep(variants="mha", backends="sdpa", seq="128", heads=2, head_dim=16)], CPU)[0]


def _measure(keep: bool):
    from attnbench.run.case import run_case
    from attnbench.run.worker import base_record

    case = _case()
    policy = TimingPolicy(min_samples=10, min_time=0.3, max_time=0.6, target_rel_iqr=0.0, min_block_time=2e-3)
    rec = base_record(case, CPU) | run_case(case, CPU, policy, None, telemetry.Nvml(), keep_throttled=keep,
                                            energy_max_s=1.5)
    return {"type": "record", **rec}


def test_run_case_samples_clocks_excludes_throttled_and_measures_energy(fake_gpu, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # the terminal tables unwrapped
    rec = _measure(keep=False)
    clk, n = rec["clocks"], len(rec["samples_ms"])
    assert clk["available"] and clk["readings"] >= 10
    assert clk["sm_clock_mhz"]["min"] == 1500 and clk["sm_clock_mhz"]["max"] == 1980
    assert clk["mem_clock_mhz"]["median"] == 2619 and clk["throttle_reasons"] == ["sw_thermal"]
    assert 0 < clk["excluded"] < n and clk["excluded"] == len(clk["throttled_samples"])
    assert clk["excluded_frac"] == pytest.approx(clk["excluded"] / n)
    assert rec["latency_ms"]["n"] == n - clk["excluded"]  # the median is of the unthrottled samples
    assert "throttled" in rec["flags"] and rec["timing"]["mode"] == "cpu-block"
    en = rec["energy"]
    assert en["source"] == "nvml" and en["loop_s"] >= 1.0 and en["mean_power_w"] == pytest.approx(250, rel=0.05)
    assert en["energy_j_per_token"] == pytest.approx(en["energy_j"] / 128)

    from attnbench.cli import main
    from attnbench.core.results import make_header, read
    from attnbench.report.build import build_report
    from attnbench.variants.registry import describe

    path = tmp_path / "gpu.jsonl"
    header = make_header(["test"], {"device": "cpu", "device_name": "fake", "threads": 1}, None, describe(["mha"]))
    path.write_text(json.dumps(header) + "\n" + json.dumps(rec) + "\n")
    _, records = read(path)
    assert records[0]["energy"]["energy_j"] == en["energy_j"]
    assert main(["show", str(path)]) in (0, None)
    shown = capsys.readouterr().out
    assert "energy/call (/token)" in shown and "throttled (excl.)" in shown and "Energy: nvml counter" in shown
    from rich.console import Console

    from attnbench.cli.run_output import print_table

    console = Console(record=True, width=250)
    print_table(records, "run", None, console)
    table = console.export_text()
    assert "energy/call" in table and re.search(r"\d (J|mJ|µJ|nJ) ", table)
    assert "ms*: samples timed while the GPU throttled" in table
    build_report([path], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "energy/call (/token)" in md and "throttled (excl.)" in md
    assert f"{clk['excluded']} ({100 * clk['excluded_frac']:.0f} % excluded)" in md


def test_keep_throttled_keeps_every_sample(fake_gpu):
    rec = _measure(keep=True)
    assert rec["clocks"]["excluded"] == 0 and rec["clocks"]["throttled_samples"]
    assert rec["latency_ms"]["n"] == len(rec["samples_ms"])


def test_on_the_cpu_without_nvml_no_sampler_runs_and_records_say_why():
    from attnbench.run.case import measure_timing

    nvml = telemetry.Nvml.__new__(telemetry.Nvml)
    nvml.handle, nvml.reason = None, "no CUDA device (CPU run)"
    x = torch.ones(32, 32)
    policy = TimingPolicy(min_samples=3, min_time=0.0, max_time=0.05)
    timing, stats, clk, fields = measure_timing(lambda: x @ x, CPU, policy, nvml, "fwd", cuda_graph=True)
    assert clk == {"available": False, "reason": "no CUDA device (CPU run)"}
    assert stats.n == len(timing.samples_ms) and fields["mode"] == "cpu-block"
    assert fields["cuda_graph"]["status"] == "unavailable" and "CUDA device" in fields["cuda_graph"]["reason"]
    assert len(timing.spans) == len(timing.samples_ms)


def test_the_l2_check_on_a_cpu_is_unavailable_with_the_reason():
    from attnbench.measure import l2

    out = l2.check(CPU)
    assert out["status"] == "unavailable" and "cpu" in out["reason"] and out["flush_bytes"] is None


def test_l2_verdicts():
    from attnbench.measure import l2

    warm = [1.0, 1.1, 1.0, 1.05, 0.98]
    assert l2.verdict(warm, [2.0, 2.1, 1.9, 2.05, 2.2])[0] == "verified"
    assert l2.verdict(warm, [1.0, 1.02, 1.1, 0.99, 1.04])[0] == "not verified"
    assert l2.verdict(warm, [0.9, 1.0, 1.3, 1.6, 1.7])[0] == "inconclusive"  # slower, but the ranges overlap


def test_run_cuda_graph_on_a_cpu_says_unavailable_once(capsys):
    from attnbench.cli.run import _say_cuda_graph_unavailable
    from attnbench.run.settings import build

    assert build(cuda_graph=True).cuda_graph is True  # a run setting; the records carry the reason too
    _say_cuda_graph_unavailable(CPU)
    err = capsys.readouterr().err
    assert err.startswith("--cuda-graph: unavailable: CUDA graphs need a CUDA device") and err.count("\n") == 1


def test_the_plan_counts_the_energy_loop(tmp_path):
    assert energy.planned_loop_seconds("cuda", 1.25) == pytest.approx(1.0)
    assert energy.planned_loop_seconds("cuda", 0.5) == 0.0  # the loop would not run: null energy
    assert energy.planned_loop_seconds("cpu", 10.0, tmp_path / "none") == 0.0
    assert energy.planned_loop_seconds("cpu", 10.0, powercap(tmp_path, {0: (0, 10**9)})) == energy.MIN_LOOP_S
