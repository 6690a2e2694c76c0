"""The FlashInfer Trace objects as pydantic models, written from the published schema pages
(flashinfer-bench docs/flashinfer-trace: definition, workload, solution, trace): our own code,
no flashinfer-bench dependency. `attnbench export` validates every object it writes with them.

What is checked beyond the field types: a definition's tensor shapes name declared axes, its
input and output names do not overlap, its `reference` parses as Python with a top-level `run`
(parsed, never executed); a workload's axes are whole numbers >= 0 (published workloads hold
num_pages = 0, though the validator page asks for > 0); a solution's `entry_point` is
`{file_path}::{function_name}`, its file is among the sources and defines that function; an
evaluation's `correctness` and `performance` are present or null as the schema's table requires
for its status, and `speedup_factor` is `reference_latency_ms / latency_ms`.

Honest limits: the pages describe these objects in prose tables, not a machine schema, so a field
the pages do not name is refused in what attnbench writes (solutions, workloads, traces) and kept
in definitions, which are copied from the user's file. The pages require
`performance.reference_latency_ms` and `speedup_factor` (no null): a passed trace needs a timed
reference, so the exporter never writes one without it.
"""

from __future__ import annotations

import ast
import math
from datetime import datetime
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(allow_inf_nan=False, gt=0)]
NonNeg = Annotated[float, Field(allow_inf_nan=False, ge=0)]

STATUSES = ("PASSED", "INCORRECT_SHAPE", "INCORRECT_NUMERICAL", "INCORRECT_DTYPE", "RUNTIME_ERROR", "COMPILE_ERROR")
LANGUAGES = ("python", "triton", "cpp", "cuda")


class _Written(BaseModel):
    """An object attnbench writes: only the documented fields."""

    model_config = ConfigDict(extra="forbid", strict=True)


# ---------------------------------------------------------------- definition
class AxisConst(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["const"]
    value: StrictInt
    description: Optional[StrictStr] = None


class AxisVar(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["var"]
    description: Optional[StrictStr] = None


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    shape: Optional[list[StrictStr]]
    dtype: StrictStr
    description: Optional[StrictStr] = None


class Definition(BaseModel):
    """A kernel definition (definitions/<op_type>/<name>.json)."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: StrictStr
    op_type: StrictStr
    tags: Optional[list[StrictStr]] = None
    description: Optional[StrictStr] = None
    axes: dict[str, Annotated[Union[AxisConst, AxisVar], Field(discriminator="type")]]
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    reference: StrictStr
    constraints: Optional[list[StrictStr]] = None

    @model_validator(mode="after")
    def _consistent(self) -> Definition:
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            for name, spec in specs.items():
                unknown = [a for a in spec.shape or [] if a not in self.axes]
                if unknown:
                    raise ValueError(f"{kind} '{name}' has shape axes {unknown} the definition does not declare")
        both = sorted(set(self.inputs) & set(self.outputs))
        if both:
            raise ValueError(f"names both inputs and outputs: {both}")
        if "run" not in _top_level_functions(self.reference):
            raise ValueError("reference has no top-level function run")
        return self


# ---------------------------------------------------------------- workload
class RandomInput(_Written):
    type: Literal["random"]


class ScalarInput(_Written):
    type: Literal["scalar"]
    value: Union[StrictBool, StrictInt, Finite]


class SafetensorsInput(_Written):
    type: Literal["safetensors"]
    path: StrictStr
    tensor_key: StrictStr


InputSpec = Annotated[Union[RandomInput, ScalarInput, SafetensorsInput], Field(discriminator="type")]


class Workload(_Written):
    uuid: Annotated[StrictStr, Field(min_length=1)]
    axes: dict[str, Annotated[StrictInt, Field(ge=0)]]  # published workloads hold 0 (num_pages)
    inputs: dict[str, InputSpec]


# ---------------------------------------------------------------- solution
class SourceFile(_Written):
    path: Annotated[StrictStr, Field(min_length=1)]
    content: StrictStr


class BuildSpec(_Written):
    language: Literal[LANGUAGES]
    target_hardware: list[StrictStr]
    entry_point: StrictStr
    destination_passing_style: StrictBool = True
    binding: Optional[Literal["tvm-ffi", "torch"]] = None
    dependencies: Optional[list[StrictStr]] = None


class Solution(_Written):
    """A solution (solutions/<author>/<op_type>/<definition>/<name>.json)."""

    name: StrictStr
    definition: StrictStr
    description: Optional[StrictStr] = None
    author: StrictStr
    spec: BuildSpec
    sources: Annotated[list[SourceFile], Field(min_length=1)]

    @model_validator(mode="after")
    def _entry_point_exists(self) -> Solution:
        path, sep, function = self.spec.entry_point.rpartition("::")
        if not sep or not path or not function:
            raise ValueError(f"entry_point '{self.spec.entry_point}' is not {{file_path}}::{{function_name}}")
        files = {s.path: s.content for s in self.sources}
        if path not in files:
            raise ValueError(f"entry_point file '{path}' is not among the sources")
        if path.endswith(".py") and function not in _top_level_functions(files[path]):
            raise ValueError(f"entry_point function '{function}' is not defined in '{path}'")
        return self


# ---------------------------------------------------------------- trace
class Correctness(_Written):
    max_relative_error: NonNeg
    max_absolute_error: NonNeg


class Performance(_Written):
    latency_ms: Positive
    reference_latency_ms: Positive
    speedup_factor: Positive

    @model_validator(mode="after")
    def _speedup_is_the_ratio(self) -> Performance:
        if not math.isclose(self.speedup_factor, self.reference_latency_ms / self.latency_ms, rel_tol=1e-9):
            raise ValueError("speedup_factor is not reference_latency_ms / latency_ms")
        return self


class Environment(_Written):
    hardware: Annotated[StrictStr, Field(min_length=1)]
    libs: dict[str, StrictStr]


class Evaluation(_Written):
    status: Literal[STATUSES]
    log: StrictStr
    correctness: Optional[Correctness]
    performance: Optional[Performance]
    environment: Environment
    timestamp: StrictStr

    @model_validator(mode="after")
    def _nullable_table(self) -> Evaluation:
        want_correctness = self.status in ("PASSED", "INCORRECT_NUMERICAL")
        want_performance = self.status == "PASSED"
        if (self.correctness is not None) != want_correctness:
            raise ValueError(f"status {self.status}: correctness must be {'given' if want_correctness else 'null'}")
        if (self.performance is not None) != want_performance:
            raise ValueError(f"status {self.status}: performance must be {'given' if want_performance else 'null'}")
        try:
            datetime.fromisoformat(self.timestamp)
        except ValueError:
            raise ValueError(f"timestamp '{self.timestamp}' is not ISO 8601") from None
        return self


class Trace(_Written):
    """A trace line (traces/<author>/<op_type>/<definition>.jsonl); with solution and evaluation
    null, a workload line (workloads/<op_type>/<definition>.jsonl)."""

    definition: StrictStr
    workload: Workload
    solution: Optional[StrictStr] = None
    evaluation: Optional[Evaluation] = None


def _top_level_functions(source: str) -> set[str]:
    """Names of the functions a Python source defines at its top level (parsed, not run)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"not valid Python: {e.msg} (line {e.lineno})") from None
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
