"""FlashInfer Trace files, read and checked: a *definition* (one operation: its axes, typed inputs
and outputs, a PyTorch `reference`) and a *workloads* file (JSONL, one workload per line: the var
axes' values and where each input comes from). Torch-free: `run --dry-run` and the plan read them.

Written from flashinfer-bench's schema pages (docs/flashinfer-trace/definition.mdx, workload.mdx):

    definition  name, op_type, axes {name: {type: const, value} | {type: var}}, inputs and outputs
                {name: {shape: [axis, ...] | null (a scalar), dtype}}, reference (code defining
                run(...)), optional description, tags, constraints
    workload    {uuid, axes {var axis: int}, inputs {name: {type: random} | {type: scalar, value}
                | {type: safetensors, path, tensor_key}}}; a line of the published files is a trace
                {definition, workload, solution: null, evaluation: null}, a bare workload is accepted too

Every mistake is one UsageError line naming the file, the line and the field. Honest limits: the
`constraints` strings are kept, not evaluated (they are Python over tensors); the reference is
text here (only the worker runs it, and only with --trust-reference).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from attnbench.core.errors import UsageError

# The op types `run --definition` maps onto attnbench's backends, in the order they were added.
MAPPED_OPS = ("gqa_paged", "gqa_ragged", "mla_paged", "mla_ragged", "dsa_paged", "gdn")


class Axis(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["const", "var"]
    value: Optional[StrictInt] = None
    description: Optional[StrictStr] = None


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    shape: Optional[list[StrictStr]]
    dtype: StrictStr
    description: Optional[StrictStr] = None


class Definition(BaseModel):
    """One operation (definition.mdx)."""

    model_config = ConfigDict(extra="allow")

    name: StrictStr
    op_type: StrictStr
    axes: dict[str, Axis]
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    reference: StrictStr
    description: Optional[StrictStr] = None
    tags: list[StrictStr] = Field(default_factory=list)
    constraints: list[StrictStr] = Field(default_factory=list)

    def const_axes(self) -> dict[str, int]:
        return {k: a.value for k, a in self.axes.items() if a.type == "const"}

    def var_axes(self) -> list[str]:
        return [k for k, a in self.axes.items() if a.type == "var"]

    @property
    def stage(self) -> str:
        """decode | prefill: the "stage:" tag, else the name (…_decode_… / …_prefill_…); DSA's sparse
        attention is one query per token over its own top-k rows: decode."""
        if self.op_type == "dsa_paged":
            return "decode"
        for t in self.tags:
            if t.startswith("stage:"):
                return t.split(":", 1)[1]
        return "decode" if "decode" in self.name else "prefill"


class RandomInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["random"]


class ScalarInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["scalar"]
    value: Union[StrictBool, StrictInt, float]


class SafetensorsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["safetensors"]
    path: StrictStr
    tensor_key: StrictStr


InputSpec = Union[RandomInput, ScalarInput, SafetensorsInput]


class Workload(BaseModel):
    """One workload (workload.mdx)."""

    model_config = ConfigDict(extra="forbid")

    uuid: StrictStr
    axes: dict[str, StrictInt]
    inputs: dict[str, InputSpec]


def _first(e: ValidationError, where: str) -> str:
    from attnbench.core.schema import first_error

    return first_error(e, where)


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} '{path}' does not exist; give a FlashInfer Trace {what} file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {what} '{path}': {getattr(e, 'strerror', None) or e}") from None
    return text


def load_definition(path: Path) -> Definition:
    """The definition in `path` (a JSON object); UsageError, one line, when it is not one."""
    text = _read_json(path, "definition")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"definition '{path}' is not JSON: {e.msg} at line {e.lineno}; accepted: a "
                         "FlashInfer Trace definition (name, op_type, axes, inputs, outputs, reference)") from None
    if not isinstance(data, dict):
        raise UsageError(f"definition '{path}' is not a JSON object; accepted: a FlashInfer Trace definition")
    try:
        d = Definition.model_validate(data)
    except ValidationError as e:
        raise UsageError(_first(e, f"definition '{path}': ")) from None
    for name, spec in {**d.inputs, **d.outputs}.items():
        for axis in spec.shape or []:
            if axis not in d.axes:
                raise UsageError(f"definition '{path}': tensor '{name}' names axis '{axis}', which is not among "
                                 f"its axes ({', '.join(d.axes)})")
    for name, a in d.axes.items():
        if a.type == "const" and a.value is None:
            raise UsageError(f"definition '{path}': const axis '{name}' has no value")
    return d


def check_mapped(d: Definition, path: Path) -> None:
    """UsageError naming an op type attnbench cannot run, and those it can."""
    if d.op_type not in MAPPED_OPS:
        raise UsageError(f"definition '{path}': op_type '{d.op_type}' is not one attnbench can run; "
                         f"accepted: {', '.join(MAPPED_OPS)}")
    if d.op_type == "dsa_paged" and "sparse_indices" not in d.inputs:
        raise UsageError(f"definition '{path}': of op_type dsa_paged attnbench runs the sparse attention "
                         "(inputs q_nope, q_pe, ckv_cache, kpe_cache, sparse_indices), not the top-k indexer")
    if d.op_type == "gdn" and d.stage not in ("decode", "prefill", "mtp"):
        raise UsageError(f"definition '{path}': gdn stage '{d.stage}' is not mapped; accepted: gdn decode, prefill "
                         "and mtp")


def load_workloads(path: Path, d: Definition, uuids: list[str] | None = None) -> list[Workload]:
    """The workloads of `path` (JSONL) for definition `d`, in file order; with `uuids`, only those
    (each must be there). A line naming another definition, or lacking one of `d`'s var axes or
    inputs, is a UsageError naming the line."""
    text = _read_json(path, "workloads")
    out: list[Workload] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"workloads '{path}' line {n}: "
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{where}not JSON ({e.msg}); accepted: one workload (or trace) object per line") from None
        if isinstance(data, dict) and "workload" in data:
            named = data.get("definition")
            if named is not None and named != d.name:
                raise UsageError(f"{where}is a workload of '{named}', not of '{d.name}'")
            data = data["workload"]
        try:
            w = Workload.model_validate(data)
        except ValidationError as e:
            raise UsageError(_first(e, where)) from None
        missing = [a for a in d.var_axes() if a not in w.axes]
        if missing:
            raise UsageError(f"{where}no value for var axis '{missing[0]}' of '{d.name}'")
        absent = [i for i in d.inputs if i not in w.inputs]
        if absent:
            raise UsageError(f"{where}no source for input '{absent[0]}' of '{d.name}'")
        out.append(w)
    if not out:
        raise UsageError(f"workloads '{path}' has no workload")
    if uuids:
        have = {w.uuid: w for w in out}
        unknown = [u for u in uuids if u not in have]
        if unknown:
            raise UsageError(f"--workload {unknown[0]}: not in '{path}' ({len(out)} workloads there)")
        out = [have[u] for u in dict.fromkeys(uuids)]
    return out


def blob_path(spec: SafetensorsInput, blobs: Path | None) -> Path | None:
    """Where a safetensors input lives: an absolute path as given; a relative one ("./blob/...")
    under --blobs (the dataset root). None when it is not there."""
    p = Path(spec.path)
    where = p if p.is_absolute() else (blobs / p if blobs is not None else None)
    return where if where is not None and where.is_file() else None
