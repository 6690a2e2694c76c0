"""A record's `repro`: the one `attnbench run` command that reruns exactly its case.

The command is built from the record (variant, backend, the resolved problem, params, device,
threads, inputs) and the run settings that change what is measured (the results header's
`settings`: time budget, sample cap, reference limit, rounds, throttled samples, CUDA graphs),
through one table, :data:`FLAGS`: each entry maps one record field or setting to one option of
`attnbench run`. A new option that changes a case is one new entry.

Rerun on the same machine (same device name, torch and backend versions) the command measures a
case with the same `case_id`; elsewhere the problem, params and settings are the same and the id
differs only by the environment it includes. Torch-free: the CLI's `show` prints it.

Honest limits: the command reruns one case through the shape options, so a record from a model
preset (`run --model`) is rerun as that case alone (same problem and params, same case_id) without
the model's annotations (`model`, `layers`, the KV-cache arithmetic); the inputs are attnbench's
seeded ones (seed 0 per case, `--inputs`), as in the first run.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any, Callable

Source = Callable[[dict, dict], Any]  # (record, settings) -> the value, None when the flag is left out


@dataclass(frozen=True)
class Flag:
    """One option of `attnbench run` and where its value comes from.

    style: `value` (--flag VALUE), `switch` (--flag when true), `pair` (--flag / --no-flag),
    `each` (a dict: --flag name=value per item, sorted by name)."""

    option: str
    source: Source
    style: str = "value"


def record(name: str, unless: Callable[[dict], bool] | None = None) -> Source:
    """The record's field `name` (left out when `unless(record)` holds)."""
    return lambda r, s: None if unless is not None and unless(r) else r.get(name)


def setting(name: str) -> Source:
    """The run setting `name` (the results header's `settings`)."""
    return lambda r, s: s.get(name)


def _from_workload(r: dict) -> bool:
    """A case imported from a definition's workload: the definition and the workload fix the shape."""
    return bool(r.get("definition")) and bool(r.get("workload"))


def _trusted(r: dict, s: dict) -> bool:
    return ((r.get("reference_check") or {}).get("reference")) == "definition"


FLAGS: tuple[Flag, ...] = (
    Flag("--definition", record("definition_file")),
    Flag("--workloads", record("workloads_file")),
    Flag("--workload", record("workload")),
    Flag("--blobs", record("blobs")),
    Flag("--trust-reference", _trusted, "switch"),
    Flag("--variants", record("variant", unless=_from_workload)),
    Flag("--backends", record("backend")),
    Flag("--mode", record("mode")),
    Flag("--dtype", record("dtype", unless=_from_workload)),
    Flag("--batch", record("batch", unless=_from_workload)),
    Flag("--heads", record("heads", unless=_from_workload)),
    Flag("--kv-heads", record("kv_heads", unless=_from_workload)),
    Flag("--seq", record("seq_q", unless=_from_workload)),
    Flag("--kv-seq", record("seq_k", unless=_from_workload)),
    Flag("--head-dim", record("head_dim", unless=_from_workload)),
    Flag("--causal", record("causal", unless=_from_workload), "pair"),
    Flag("--param", record("params", unless=_from_workload), "each"),
    Flag("--batch-spec", record("batch_spec")),
    Flag("--backend-file", record("backend_file")),
    Flag("--device", record("device")),
    Flag("--threads", record("threads")),
    Flag("--inputs", record("inputs")),
    Flag("--time-budget", setting("time_budget")),
    Flag("--sample-time", setting("sample_time")),
    Flag("--reference-limit", setting("reference_limit")),
    Flag("--rounds", setting("rounds")),
    Flag("--keep-throttled", setting("keep_throttled"), "switch"),
    Flag("--cuda-graph", setting("cuda_graph"), "switch"),
)


def text(value: Any) -> str:
    """A value as the command line writes it: numbers in their shortest exact form, booleans
    as true/false, lists comma-separated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ",".join(text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def arguments(rec: dict, settings: dict | None) -> list[str]:
    """The arguments after `attnbench run` that rerun this record's case, in FLAGS order."""
    settings = settings or {}
    args: list[str] = []
    for flag in FLAGS:
        value = flag.source(rec, settings)
        if value is None:
            continue
        if flag.style == "switch":
            args += [flag.option] if value else []
        elif flag.style == "pair":
            args.append(flag.option if value else "--no-" + flag.option[2:])
        elif flag.style == "each":
            for name in sorted(value):
                args += [flag.option, f"{name}={text(value[name])}"]
        else:
            args += [flag.option, text(value)]
    return args


def command(rec: dict, settings: dict | None) -> str:
    """The record's `repro`: `attnbench run ...`, shell-quoted (paste it into a POSIX shell)."""
    return shlex.join(["attnbench", "run", *arguments(rec, settings)])
