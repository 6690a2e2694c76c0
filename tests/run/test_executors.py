"""Shards partition a sweep, merge joins results files under one header, and the Ray executor
(on a local in-process cluster) gives the same cases as a local run and survives dying workers."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from attnbench.cli import main
from attnbench.core import results
from attnbench.core.errors import UsageError
from attnbench.core.merge import merge
from attnbench.measure.timing import TimingPolicy
from attnbench.run.executors import parse_shard, run_cases_ray, shard
from attnbench.run.plan import expand, make_sweep
from attnbench.run.worker import RunConfig, Worker, base_record, run_cases

CPU = torch.device("cpu")
FAST = TimingPolicy(min_samples=3, min_time=0.01, max_time=0.05, warmup_time=0.01)


def _cases(**axes):
    return expand(
        [make_sweep(**({"variants": "mha,gqa,mqa", "seq": [64, 128, 256], "heads": [2, 4], "head_dim": [16]} | axes))],
        CPU,
    )


# ---------------------------------------------------------------- shards
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shards_partition_the_case_list(n):
    cases = _cases()
    parts = [shard(cases, k, n) for k in range(n)]
    flat = [c for part in parts for c in part]
    assert len(flat) == len(cases) and set(flat) == set(cases)  # union, no duplicates
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == [shard(list(reversed(cases)), k, n)[::-1] for k in range(n)]  # order-independent


@pytest.mark.parametrize("text,want", [("0/4", (0, 4)), ("3/4", (3, 4)), (" 0/1 ", (0, 1))])
def test_parse_shard(text, want):
    assert parse_shard(text) == want


@pytest.mark.parametrize("text", ["4/4", "1", "a/b", "-1/3", "0/0", ""])
def test_parse_shard_rejects_bad_input(text):
    with pytest.raises(UsageError, match="K/N|0..N-1"):
        parse_shard(text)


# ---------------------------------------------------------------- merge
def _write(path, cases, env_changes=None):
    env = {
        "attnbench": "0.1.0",
        "device": "cpu",
        "device_name": "x",
        "torch": torch.__version__,
        "triton": None,
        "cuda": None,
        "threads": 2,
    } | (env_changes or {})
    with results.Writer(path, results.make_header(["attnbench", "run"], env, None)) as w:
        for c in cases:
            w.write(base_record(c, CPU) | {"status": "ok"})


def test_merge_joins_shards_under_one_header(tmp_path):
    cases = _cases()
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"s{k}.jsonl")
        _write(paths[-1], shard(cases, k, 3))
    _write(tmp_path / "again.jsonl", shard(cases, 0, 3)[:2])  # two duplicates
    summary = merge(paths + [tmp_path / "again.jsonl"], tmp_path / "all.jsonl")
    header, recs = results.read(tmp_path / "all.jsonl")
    assert summary == {"records": len(cases), "duplicates": 2, "files": 4}
    assert sorted(r["case_id"] for r in recs) == sorted(base_record(c, CPU)["case_id"] for c in cases)
    assert len(header["merged_from"]) == 4
    assert (tmp_path / "all.jsonl").read_text().count('"type": "header"') == 1


def test_merge_rejects_mixed_environments_unless_allowed(tmp_path, capsys):
    _write(tmp_path / "a.jsonl", _cases()[:2])
    _write(tmp_path / "b.jsonl", _cases()[2:4], {"threads": 8})
    with pytest.raises(UsageError, match="another environment.*threads"):
        merge([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path / "ab.jsonl")
    assert not (tmp_path / "ab.jsonl").exists()
    rc = main(["merge", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--out", str(tmp_path / "ab.jsonl")])
    assert rc == 2 and "--allow-env-mismatch" in capsys.readouterr().err
    rc = main(
        [
            "merge",
            str(tmp_path / "a.jsonl"),
            str(tmp_path / "b.jsonl"),
            "--out",
            str(tmp_path / "ab.jsonl"),
            "--allow-env-mismatch",
        ]
    )
    assert rc == 0 and len(results.read(tmp_path / "ab.jsonl")[1]) == 4
    rc = main(["merge", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "ab.jsonl")])
    assert rc == 2 and "--force" in capsys.readouterr().err


def test_merge_allow_mixed_env_keeps_both_measurements_of_a_case(tmp_path):
    """The same case measured with other threads has another case_id; both records are kept and
    each names its source file."""
    import attnbench.run.worker as runner

    cases = _cases()[:2]
    _write(tmp_path / "a.jsonl", cases)
    other = [
        {
            **base_record(c, CPU),
            "case_id": runner.case_id(
                c.problem.as_dict(), c.variant, c.backend, "cpu", runner.case_identity(c.backend, CPU, threads=8)
            ),
            "threads": 8,
        }
        for c in cases
    ]
    with results.Writer(tmp_path / "b.jsonl", results.make_header(["t"], {"device": "cpu", "threads": 8}, None)) as w:
        for r in other:
            w.write({**r, "status": "unsupported", "reason": "test"})
    summary = merge([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path / "ab.jsonl", allow_mixed_env=True)
    _, recs = results.read(tmp_path / "ab.jsonl")
    assert summary["records"] == 4 and summary["duplicates"] == 0
    assert sorted(r["source"] for r in recs) == sorted(
        [str(tmp_path / "a.jsonl")] * 2 + [str(tmp_path / "b.jsonl")] * 2
    )


# ---------------------------------------------------------------- Ray
def test_ray_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UsageError, match="unavailable: ray is not installed"):
        run_cases_ray([], RunConfig(device=CPU))


def test_ray_missing_hint_prints_verbatim(monkeypatch, capsys, tmp_path):
    """The hint keeps [cluster] (no rich markup), one line, exit 2, no file."""
    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "r.jsonl"
    rc = main(["run", "--variants", "mha", "--backends", "sdpa", "--seq", "64", "--executor", "ray", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "pip install 'attnbench[cluster]'" in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "exc,mention",
    [
        (ConnectionError("could not connect to 1.2.3.4:6379"), "address"),
        (RuntimeError("InvalidAuthToken: token mismatch"), "RAY_AUTH_MODE"),
    ],
)
def test_ray_connection_failure_is_one_line_with_the_fix(monkeypatch, capsys, tmp_path, exc, mention):
    """A cluster that cannot be reached (or refuses the client's authentication): one line naming
    the fix, exit 2, and no header-only results file."""
    import types

    def init(**kw):
        raise exc

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init, shutdown=lambda: None)
    monkeypatch.setitem(sys.modules, "ray", fake)
    out = tmp_path / "r.jsonl"
    rc = main(
        [
            "run",
            "--variants",
            "mha",
            "--backends",
            "sdpa",
            "--seq",
            "64",
            "--executor",
            "ray",
            "--address",
            "1.2.3.4:6379",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and mention in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory):
    """One local in-process cluster: a tiny suite plus two fault cases, on Ray and locally."""
    ray = pytest.importorskip("ray")
    attempts = tmp_path_factory.mktemp("ray") / "attempts"
    tiny = _cases(variants="mha", seq=[64], heads=[2], backends="sdpa") + _cases(
        variants="mha", seq=[64], heads=[2], kv_heads=[1], backends="sdpa"
    )  # unsupported
    faults = [
        *_cases(variants="mha", seq=[64], heads=[2], backends="fault", params={"fault": "kill"}),
        *_cases(
            variants="mha",
            seq=[64],
            heads=[2],
            backends="fault",
            params={"fault": "kill-ray-worker", "attempts_file": str(attempts)},
        ),
    ]
    cfg = RunConfig(device=CPU, time_budget=20, threads=1, policy=FAST)
    local, worker = [], Worker(cfg)
    worker.start()  # the local run's worker starts while the cluster does
    try:
        refs = worker.measure_refs(("float32",))  # the header's references, as run_sweep gives both
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            streamed = []
            on_ray = run_cases_ray(tiny + faults, cfg, on_record=streamed.append, refs=refs)
        finally:
            ray.shutdown()
        run_cases(tiny, cfg, worker, local.append, refs)
    finally:
        worker.close()
    return {
        "tiny": on_ray[: len(tiny)],
        "faults": on_ray[len(tiny) :],
        "local": local,
        "streamed": streamed,
        "attempts": attempts,
    }


@pytest.mark.slow
def test_ray_run_gives_the_same_cases_as_a_local_run(ray_run):
    assert {r["case_id"] for r in ray_run["tiny"]} == {r["case_id"] for r in ray_run["local"]}
    assert [r["status"] for r in ray_run["tiny"]] == [r["status"] for r in ray_run["local"]] == ["ok", "unsupported"]
    assert len(ray_run["streamed"]) == len(ray_run["tiny"]) + len(ray_run["faults"])
    ran = [r for r in ray_run["tiny"] if r["status"] == "ok"]
    assert all(r["executor"]["kind"] == "ray" and r["latency_ms"]["median"] > 0 for r in ran)
    # as complete as a local record: the task's worker got the header's references
    assert all(r["roofline_frac"] is not None and r["roofline_frac"] > 0 for r in ran)
    assert all(r["roofline_frac"] is not None for r in ray_run["local"] if r["status"] == "ok")
    for r in ray_run["tiny"]:
        results.validate_record(json.loads(json.dumps({"type": "record", **r})), "ray", 1)


@pytest.mark.slow
def test_a_case_that_kills_its_worker_is_a_record_not_a_retry(ray_run):
    killed = ray_run["faults"][0]  # the isolated worker's verdict: killed from outside, not an OOM
    assert killed["status"] == "killed" and "SIGKILL" in killed["reason"], killed


@pytest.mark.slow
def test_a_dying_ray_worker_is_retried_once_then_recorded_as_error(ray_run):
    dead = ray_run["faults"][1]
    assert dead["status"] == "error" and "retry" in dead["reason"]
    assert len(ray_run["attempts"].read_text().split()) == 2  # the first try and one retry
