"""A record's `repro`: the one `attnbench run` command that reruns exactly its case.

The command is built from the record (variant, backend, the resolved problem, params, device,
threads, inputs) and the run settings that change what is measured (the results header's
`settings`: time budget, sample cap, reference limit, rounds, throttled samples, CUDA graphs),
through one table, :data:`FLAGS`: each entry maps one record field or setting to one option of
`attnbench run`. A new option that changes a case is one new entry.

A case of a FlashInfer Trace definition (`run --definition`) is rerun from its files instead of
its shape: the definition, the workloads file and the workload's uuid, the blobs folder, and
--trust-reference when its reference ran (the definition fixes the variant, mode, dtype, heads and
parameters, and `run --definition` refuses those options); one made from the shape options gets
back --batch, --seq, --kv-seq and --seq-dist from its `lengths`.

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


def record(name: str, when: Callable[[dict], bool] | None = None) -> Source:
    """The record's field `name`, where `when(record)` holds (always without it)."""
    return lambda r, s: r.get(name) if when is None or when(r) else None


def param(name: str) -> Source:
    """The record's parameter `name` (a definition case keeps its files' paths there)."""
    return lambda r, s: (r.get("params") or {}).get(name)


def setting(name: str) -> Source:
    """The run setting `name` (the results header's `settings`)."""
    return lambda r, s: s.get(name)


def _plain(r: dict) -> bool:
    """A case of a variant (not of a FlashInfer Trace definition, whose op fixes the variant,
    mode, dtype, heads, head dim, mask and parameters: `run --definition` refuses those options)."""
    return not r.get("definition")


def _trusted(r: dict, s: dict) -> bool:
    """The definition's reference code ran: as the oracle (reference_check against it) or timed."""
    check = r.get("reference_check") or {}
    return bool(r.get("definition")) and (check.get("reference") == "definition" or r.get("backend") == "reference")


def _lengths(r: dict) -> tuple[list[int], list[int]] | None:
    """A definition case without a workload file: its per-sequence (query, key) lengths, the
    `lengths` parameter 'q1,q2;k1,k2' that --batch, --seq, --kv-seq and --seq-dist made."""
    if _plain(r) or r.get("workload"):
        return None
    try:
        q, kv = str((r.get("params") or {}).get("lengths")).split(";")
        return [int(x) for x in q.split(",")], [int(x) for x in kv.split(",")]
    except ValueError:
        return None


def _mixed(r: dict) -> bool:
    """A mixed batch (`--batch-spec`): the spec alone gives the batch and the lengths, and
    `run` refuses --batch, --seq, --kv-seq and --seq-dist beside it."""
    return bool(r.get("batch_spec"))


def _batch(r: dict, s: dict) -> int | None:
    if _mixed(r):
        return None
    return r.get("batch") if _plain(r) or _lengths(r) else None


def _params(r: dict, s: dict) -> dict | None:
    """--param: the case's parameters, less the spec a mixed batch records among them."""
    if not _plain(r):
        return None
    params = r.get("params") or {}
    return {k: v for k, v in params.items() if k != "batch_spec"} if _mixed(r) else params


def _seq(r: dict, s: dict) -> int | None:
    """--seq: the query length; a synthetic definition case's own (decode: the keys' length, as
    the options took it; --seq-dist other than fixed draws the lengths and ignores it)."""
    if _mixed(r):
        return None
    if _plain(r):
        return r.get("seq_q")
    ql = _lengths(r)
    if ql is None:
        return None
    q, kv = ql
    return kv[0] if r.get("mode") == "decode" or q == kv else q[0]


def _kv_seq(r: dict, s: dict) -> int | None:
    if _mixed(r):
        return None
    if _plain(r):
        return r.get("seq_k")
    ql = _lengths(r)
    return ql[1][0] if ql and r.get("mode") != "decode" and ql[0] != ql[1] else None


def _backend_file(r: dict, s: dict) -> str | None:
    """A user's backend file (an installed package's entry point needs no option: it loads itself)."""
    src = r.get("backend_source") or {}
    return src.get("where") if src.get("kind") == "file" else None


FLAGS: tuple[Flag, ...] = (
    Flag("--definition", record("definition_file")),
    Flag("--workloads", param("workloads")),
    Flag("--workload", record("workload")),
    Flag("--blobs", param("blobs")),
    Flag("--trust-reference", _trusted, "switch"),
    Flag("--variants", record("variant", _plain)),
    Flag("--backends", record("backend")),
    Flag("--mode", record("mode", _plain)),
    Flag("--dtype", record("dtype", _plain)),
    Flag("--batch", _batch),
    Flag("--heads", record("heads", _plain)),
    Flag("--kv-heads", record("kv_heads", _plain)),
    Flag("--seq", _seq),
    Flag("--kv-seq", _kv_seq),
    Flag("--seq-dist", lambda r, s: None if _lengths(r) is None else param("seq_dist_given")(r, s)),
    Flag("--head-dim", record("head_dim", _plain)),
    Flag("--causal", record("causal", _plain), "pair"),
    Flag("--param", _params, "each"),
    Flag("--batch-spec", record("batch_spec")),
    Flag("--backend-file", _backend_file),
    Flag("--device", record("device")),
    Flag("--threads", record("threads")),
    Flag("--inputs", record("inputs", _plain)),
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
            for name in sorted(k for k, v in value.items() if v is not None):  # None: the default, left out
                args += [flag.option, f"{name}={text(value[name])}"]
        else:
            args += [flag.option, text(value)]
    return args


def command(rec: dict, settings: dict | None) -> str:
    """The record's `repro`: `attnbench run ...`, shell-quoted (paste it into a POSIX shell)."""
    return shlex.join(["attnbench", "run", *arguments(rec, settings)])
