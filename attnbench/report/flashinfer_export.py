"""`attnbench export --format flashinfer-trace`: results records as a FlashInfer TraceSet folder.

    definitions/<op_type>/<definition>.json                   copied from the record's definition_file
    workloads/<op_type>/<definition>.jsonl                    one workload line per workload uuid
    solutions/attnbench/<op_type>/<definition>/<name>.json   one per attnbench (variant, backend)
    traces/attnbench/<op_type>/<definition>.jsonl             one trace per exported record

Only records run from a definition's workload (`run --definition DEF --workloads W`) become traces:
a trace names a definition and a workload uuid. The evaluation's status comes from the record's
status and its `reference_check`: ok and passed -> PASSED, ok and failed -> INCORRECT_NUMERICAL,
error/oom/timeout/killed -> RUNTIME_ERROR (attnbench does not tell a compile error from a runtime
one); unsupported, unavailable and skipped cases measured nothing and are left out. Correctness is
the reference_check's max relative and absolute error. Performance is the record's mean latency
(the schema's `latency_ms` is a mean) against the mean latency of the definition's reference,
timed as the backend `reference` of the same case (`run --trust-reference`); the schema requires
both and the speedup, so a passed record without a timed reference is left out, never given an
invented one. Every left-out record is counted under its reason, which says how to get it in.

A solution is attnbench's backend, not code flashinfer-bench can call with the definition's
signature: its one source file is a small real Python module whose `build(problem, device)`
returns attnbench's own backend (`fn(q, k, v)`), and its description says so. Torch-free.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from attnbench.core.schema import first_error
from attnbench.report import flashinfer_trace as ft

AUTHOR = "attnbench"
REFERENCE_BACKEND = "reference"  # the definition's reference, timed as a backend of the same case
# op types of the published definitions, longest first: a definition named without its file is
# placed by the prefix of its name ({op_type}_{props}_{constants})
OP_TYPES = ("fused_add_rmsnorm", "gqa_ragged", "gqa_paged", "mla_ragged", "mla_paged", "dsa_paged", "mamba_ssu",
            "rmsnorm", "sampling", "gemm", "rope", "moe", "gdn")

NO_DEFINITION = ("not run from a FlashInfer Trace definition; only cases of `attnbench run --definition DEF.json "
                 "--workloads WORKLOADS.jsonl` can be traces")
NO_WORKLOAD = "no workload uuid (its var axes came from the shape options); run with --workloads to name one"
NOT_RUN = "status unsupported, unavailable or skipped: nothing was measured"
NO_CHECK = "no reference_check: its correctness was not judged against a reference"
NOT_FINITE = ("failed its reference check with output not finite where the reference's is (max_abs null), and the "
              "schema's correctness needs finite errors")
NO_REFERENCE_TIMING = ("passed, but its case has no timed reference (backend `reference`), and the schema requires "
                       "reference_latency_ms and speedup_factor; run with --trust-reference (and `reference` in "
                       "--backends when you name them)")
NO_OP_TYPE = "its definition file is missing and its name starts with no known op_type"
RUNTIME = ("error", "oom", "timeout", "killed")


@dataclass
class Export:
    """What an export writes (`files`: path relative to the folder -> text) and what it left out."""

    files: dict[str, str] = field(default_factory=dict)
    traces: int = 0
    uuids: set[str] = field(default_factory=set)
    solutions: set[str] = field(default_factory=set)
    definitions: set[str] = field(default_factory=set)
    references: int = 0  # records of the reference itself: the others' speedups
    skipped: Counter = field(default_factory=Counter)  # reason -> records
    hardware: dict[str, list[str]] = field(default_factory=dict)  # solution file -> the hardware its traces ran on
    notes: list[str] = field(default_factory=list)


def build(runs: list[tuple[dict, list[dict]]]) -> Export:
    """The TraceSet of these (header, records) runs; every object validated before it is kept."""
    ex = Export()
    refs = _reference_latencies(runs)
    traces: dict[str, list[str]] = {}
    workloads: dict[str, dict[str, str]] = {}
    for header, records in runs:
        for rec in records:
            if rec.get("backend") == REFERENCE_BACKEND and rec.get("definition"):
                ex.references += 1
                continue
            why = _trace(ex, header, rec, refs, traces, workloads)
            if why:
                ex.skipped[why] += 1
    for path, lines in traces.items():
        ex.files[path] = "".join(lines)
    for path, by_uuid in workloads.items():
        ex.files[path] = "".join(by_uuid.values())
    return ex


def _trace(ex: Export, header: dict, rec: dict, refs: dict, traces: dict, workloads: dict) -> str | None:
    """Add the record's trace (and its definition, workload, solution); the reason when it cannot be one."""
    if not rec.get("definition"):
        return NO_DEFINITION
    if not rec.get("workload"):
        return NO_WORKLOAD
    if rec["status"] not in ("ok", *RUNTIME):
        return NOT_RUN
    check = rec.get("reference_check") or {}
    if rec["status"] == "ok" and (check.get("max_abs") is None or check.get("max_rel") is None):
        return NOT_FINITE if check.get("passed") is False else NO_CHECK
    reference_ms = refs.get(_case_key(header, rec))
    if rec["status"] == "ok" and check.get("passed") and reference_ms is None:
        return NO_REFERENCE_TIMING
    name = rec["definition"]
    op_type = _definition(ex, rec)
    if op_type is None:
        return NO_OP_TYPE
    try:
        workload = ft.Workload.model_validate({"uuid": rec["workload"], "axes": rec.get("workload_axes") or {},
                                               "inputs": rec.get("workload_inputs") or {}})
        solution = _solution(header, rec, op_type)
        trace = ft.Trace(definition=name, workload=workload, solution=solution.name,
                         evaluation=_evaluation(header, rec, reference_ms))
    except ValidationError as e:
        return f"an object failed the FlashInfer Trace schema: {first_error(e)}"
    path = f"solutions/{AUTHOR}/{op_type}/{name}/{solution.name}.json"
    seen = ex.hardware.setdefault(path, [])
    seen += [h for h in solution.spec.target_hardware if h not in seen]  # every device its traces ran on
    solution.spec.target_hardware = list(seen)
    ex.files[path] = _json(solution, indent=2, exclude={"spec": {"binding"}})
    ex.solutions.add(solution.name)
    by_uuid = workloads.setdefault(f"workloads/{op_type}/{name}.jsonl", {})
    by_uuid.setdefault(workload.uuid, _json(ft.Trace(definition=name, workload=workload)) + "\n")
    traces.setdefault(f"traces/{AUTHOR}/{op_type}/{name}.jsonl", []).append(_json(trace) + "\n")
    ex.traces += 1
    ex.uuids.add(workload.uuid)
    return None


def _definition(ex: Export, rec: dict) -> str | None:
    """Copy the record's definition file once (validated); its op_type, from the file or the name."""
    name, path = rec["definition"], rec.get("definition_file")
    known = next((p for p in ex.files if p.startswith("definitions/") and p.endswith(f"/{name}.json")), None)
    if known:
        return known.split("/")[1]
    guess = next((op for op in OP_TYPES if name == op or name.startswith(op + "_")), None)
    try:
        text = Path(path).read_text(encoding="utf-8") if path else None
    except (OSError, UnicodeDecodeError) as e:
        text, why = None, f"cannot be read ({e.strerror or e})"
    else:
        why = "is not recorded" if not path else ""
    if text is not None:
        try:
            d = ft.Definition.model_validate_json(text)
        except ValidationError as e:
            why = f"is not a valid definition ({first_error(e)})"
        else:
            if d.name != name:
                why = f"names '{d.name}', not '{name}'"
            else:
                ex.files[f"definitions/{d.op_type}/{name}.json"] = text if text.endswith("\n") else text + "\n"
                ex.definitions.add(name)
                return d.op_type
    note = f"definition '{name}': its file {path or ''} {why}; left out (its traces are kept under op_type {guess})"
    if guess and note not in ex.notes:
        ex.notes.append(" ".join(note.split()))
    return guess


def _solution(header: dict, rec: dict, op_type: str) -> ft.Solution:
    env = header.get("env") or {}
    variant, backend, version = rec["variant"], rec["backend"], env.get("attnbench", "unknown")
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{AUTHOR}_{variant}_{backend}")
    family = ((header.get("catalogue") or {}).get(variant) or {}).get("family")
    module = f"attnbench/variants/{family}.py" if family else "attnbench/variants/"
    doc = (f"attnbench {version}'s backend '{backend}' of variant '{variant}' (declared in {module}). Not this "
           f"definition's run(...) signature: attnbench builds fn(q, k, v) for its own problem description and "
           f"times it in its own harness, so flashinfer-bench cannot call this entry point as is; each trace's log "
           f"holds the attnbench command that reruns its measurement.")
    source = (f'"""{doc}"""\n\nfrom attnbench.variants import registry\n\n\n'
              f"def build(problem, device):\n"
              f'    """fn(q, k, v) -> output for `problem` (attnbench.core.problem.Problem) on `device`."""\n'
              f"    return registry.get({variant!r}).backend({backend!r}).build(problem, device)\n")
    deps = [f"attnbench == {version}"] + ([f"torch == {env['torch']}"] if env.get("torch") else [])
    spec = ft.BuildSpec(language="triton" if "triton" in backend else "python", target_hardware=[_hardware(env)],
                        entry_point="attnbench_backend.py::build", destination_passing_style=False,
                        dependencies=deps)
    return ft.Solution(name=name, definition=rec["definition"], author=AUTHOR, description=doc, spec=spec,
                       sources=[ft.SourceFile(path="attnbench_backend.py", content=source)])


def _evaluation(header: dict, rec: dict, reference_ms: float | None) -> ft.Evaluation:
    check = rec.get("reference_check") or {}
    correctness = performance = None
    if rec["status"] == "ok":
        status = "PASSED" if check.get("passed") else "INCORRECT_NUMERICAL"
        correctness = ft.Correctness(max_relative_error=float(check["max_rel"]),
                                     max_absolute_error=float(check["max_abs"]))
        if status == "PASSED":
            mean = float((rec.get("latency_ms") or {})["mean"])
            performance = ft.Performance(latency_ms=mean, reference_latency_ms=reference_ms,
                                         speedup_factor=reference_ms / mean)
    else:
        status = "RUNTIME_ERROR"
    env = header.get("env") or {}
    libs = {k: str(env[k]) for k in ("attnbench", "torch", "triton", "cuda", "python") if env.get(k)}
    return ft.Evaluation(status=status, log=_log(rec, check, env), correctness=correctness,
                         performance=performance, environment=ft.Environment(hardware=_hardware(env), libs=libs),
                         timestamp=_timestamp(header.get("created")))


def _log(rec: dict, check: dict, env: dict) -> str:
    """What attnbench knows of the run, in words: status, samples, the reference check, the repro."""
    lat = rec.get("latency_ms") or {}
    lines = [f"attnbench {env.get('attnbench', '?')}: {rec['variant']}:{rec['backend']} {rec['mode']} "
             f"{rec['dtype']} on {env.get('device_name') or rec['device']}: {rec['status']}"
             + (f" ({rec['reason']})" if rec.get("reason") else "")]
    if lat.get("n"):
        lines.append(f"latency: mean {lat.get('mean')} ms, median {lat.get('median')} ms over {lat['n']} samples")
    if check:
        tol = check.get("tolerance") or {}
        lines.append(f"reference_check against {check.get('reference')}: passed={check.get('passed')}, "
                     f"max_abs={check.get('max_abs')}, max_rel={check.get('max_rel')}, "
                     f"lse_max_abs={check.get('lse_max_abs')}, atol={tol.get('atol')}, rtol={tol.get('rtol')}")
    if rec.get("repro"):
        lines.append(f"rerun: {rec['repro']}")
    return "\n".join(lines)


def _reference_latencies(runs: list[tuple[dict, list[dict]]]) -> dict[tuple, float]:
    """Mean latency of the timed reference of each case (status ok, with samples)."""
    out = {}
    for header, records in runs:
        for rec in records:
            mean = (rec.get("latency_ms") or {}).get("mean")
            if rec.get("backend") == REFERENCE_BACKEND and rec.get("status") == "ok" and mean and mean > 0:
                out[_case_key(header, rec)] = float(mean)
    return out


def _case_key(header: dict, rec: dict) -> tuple:
    """The case a backend and the reference share: definition, workload, device and shape."""
    shape = tuple(rec.get(k) for k in ("device", "mode", "dtype", "batch", "heads", "kv_heads", "seq_q", "seq_k",
                                       "head_dim", "causal"))
    return (rec.get("definition"), rec.get("workload"), (header.get("env") or {}).get("device_name"), *shape)


def _hardware(env: dict) -> str:
    """'NVIDIA_H100_80GB_HBM3' from the device name (the schema's examples: NVIDIA_H100)."""
    name = env.get("device_name") or env.get("device") or "unknown"
    return re.sub(r"\s+", "_", str(name).strip())


def _timestamp(created: str | None) -> str:
    """The run's start (the header's `created`) as ISO 8601; for a header without it (attnbench
    always writes one) the time of this export, which is what the schema names: when the summary
    was generated."""
    try:
        return datetime.strptime(created or "", "%Y-%m-%dT%H:%M:%S%z").isoformat()
    except ValueError:
        return datetime.now().astimezone().isoformat(timespec="seconds")


def _json(obj: BaseModel, indent: int | None = None, exclude: dict | None = None) -> str:
    """One object as JSON; nullable fields are written as null (a workload line's solution and
    evaluation, a failed evaluation's performance), optional ones we leave unset are left out."""
    return json.dumps(obj.model_dump(mode="json", exclude=exclude), indent=indent, ensure_ascii=False,
                      allow_nan=False) + ("\n" if indent else "")


def check_out(out: Path, force: bool) -> None:
    """--out: a new folder, an empty one, or (with --force) an earlier export, replaced as a whole."""
    from attnbench.core.errors import UsageError

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' is a file; give a folder (the TraceSet is written there)")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write --out '{out}': directory '{out.parent}' does not exist")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "traces").is_dir():
            raise UsageError(f"--out '{out}' is a folder that holds no export (no traces/); give a new or empty "
                             f"folder, or an earlier export's with --force (it is replaced as a whole)")
        if not force:
            raise UsageError(f"--out '{out}' holds an earlier export; add --force to replace it as a whole")


def write(ex: Export, out: Path) -> None:
    """Write the folder: built in a temporary sibling under out's lock and renamed into place only
    when complete, so an interrupted or failed export leaves no partial folder (safe_io)."""
    from attnbench.core.safe_io import atomic_dir, hold_lock

    with hold_lock(out), atomic_dir(out) as tmp:
        for rel, text in sorted(ex.files.items()):
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
