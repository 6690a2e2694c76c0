"""Typed validation at the boundaries, with pydantic: results records read from a file, suite
files, variant parameters and the CLI's numbers. Each failure becomes one line naming the field,
the value and what is accepted (:func:`first_error`).

The record schema is :class:`RecordModel`, one field per documented field of
docs/results-schema.md. To add a field: add it here (typed, with a default when older files
lack it) and to results.RECORD_FIELDS if every record must carry it. Fields the model does not
name are kept, not rejected (``extra="allow"``): schema version 1 grows by adding fields
(`timing` from --rounds, `executor` from Ray, `source` from merge, fields added by newer
attnbench), and a reader must still read files written by a newer writer of the same version.
"""

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, TypeAdapter, ValidationError

# JSON numbers: finite (NaN and infinities are refused; the writer stores them as null)
Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNeg = Annotated[float, Field(allow_inf_nan=False, ge=0)]
Count = Annotated[StrictInt, Field(ge=0)]
Scalar = Union[StrictBool, StrictInt, Finite, StrictStr, None]

STATUS = Literal["ok", "oom", "timeout", "error", "killed", "unsupported", "skipped", "unavailable", "wrong"]


class CompositionGroup(BaseModel):
    """One group of a mixed batch: `count` requests of `q_len` queries over `kv_len` keys."""

    model_config = ConfigDict(strict=True, extra="forbid")

    count: Annotated[StrictInt, Field(ge=1)]
    q_len: Annotated[StrictInt, Field(ge=1)]
    kv_len: Annotated[StrictInt, Field(ge=1)]


class ReferenceCheck(BaseModel):
    """A definition case's outputs against its oracle (measure/trace_check.py); max_abs is null
    when a value was not finite where the reference's was."""

    model_config = ConfigDict(strict=True, extra="allow")

    passed: StrictBool
    max_abs: Optional[NonNeg]
    max_rel: Optional[NonNeg]
    lse_max_abs: Optional[NonNeg]
    tolerance: dict[str, NonNeg]
    reference: Literal["definition", "attnbench-fp64"]
    state_max_abs: Optional[NonNeg] = None  # gdn: the float32 state against the oracle's


class RecordModel(BaseModel):
    """One results record (a line after the header); see docs/results-schema.md."""

    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)

    type: Literal["record"]
    case_id: StrictStr
    variant: StrictStr
    backend: StrictStr
    device: StrictStr
    dtype: StrictStr
    mode: StrictStr
    batch: Count
    heads: Count
    kv_heads: Count
    seq_q: Count
    seq_k: Count
    head_dim: Count
    causal: StrictBool
    params: dict[str, Union[Scalar, list[Scalar]]]
    status: STATUS
    reason: Optional[StrictStr]
    latency_ms: Optional[dict[str, Optional[Finite]]]
    samples_ms: Optional[list[NonNeg]]
    setup_ms: Optional[NonNeg]
    first_call_ms: Optional[NonNeg]
    peak_mem_bytes: Optional[NonNeg]
    mem_source: Optional[StrictStr]
    mem_model_bytes: Optional[NonNeg]
    flops: Optional[NonNeg]
    bytes_: Optional[NonNeg] = Field(alias="bytes")
    kv_cache_bytes: Optional[NonNeg]
    tflops: Optional[NonNeg]
    gbps: Optional[NonNeg]
    roofline_frac: Optional[NonNeg]
    error: Optional[dict[str, Any]]
    kernel: Optional[StrictStr]
    threads: Optional[Annotated[StrictInt, Field(ge=1)]]
    telemetry: Optional[dict[str, Any]]
    wall_s: Optional[NonNeg]
    # clocks during the timed loop and energy per call: absent from older files
    clocks: Optional[dict[str, Any]] = None
    energy: Optional[dict[str, Any]] = None
    # ragged batches (variants/paged.py): absent from other records
    seq_dist: Optional[StrictStr] = None
    seq_lengths: Optional[dict[str, NonNeg]] = None
    padding_frac: Optional[Annotated[float, Field(allow_inf_nan=False, ge=0, le=1)]] = None
    cost_parts: Optional[dict[str, dict[str, NonNeg]]] = None
    # mixed batches (run --batch-spec, core/batch_spec.py): absent from other records
    batch_spec: Optional[StrictStr] = None
    composition: Optional[list[CompositionGroup]] = None
    q_tokens: Optional[Count] = None
    # the `attnbench run` command that reruns this case (core/repro.py): absent from older files
    repro: Optional[StrictStr] = None
    # backends from a user's file or an installed package: absent from other records
    backend_source: Optional[dict[str, Optional[StrictStr]]] = None
    precheck: Optional[dict[str, Any]] = None
    # run --definition (a FlashInfer Trace definition): absent from other records
    definition: Optional[StrictStr] = None
    definition_file: Optional[StrictStr] = None
    workload: Optional[StrictStr] = None
    workload_axes: Optional[dict[str, StrictInt]] = None
    workload_inputs: Optional[dict[str, dict[str, Any]]] = None
    workload_notes: Optional[list[StrictStr]] = None
    reference_check: Optional[ReferenceCheck] = None


class SweepModel(BaseModel):
    """One [[sweep]] table of a suite file: the types; make_sweep checks the meaning (names,
    ranges, grammar) and unknown keys (with a suggestion), hence extra="allow" here."""

    model_config = ConfigDict(strict=True, extra="allow")

    variants: Union[StrictStr, list[StrictStr]] = None
    backends: Union[StrictStr, list[StrictStr]] = None
    seq: Union[StrictStr, StrictInt, list[Union[StrictStr, StrictInt]]] = None
    kv_seq: Union[StrictStr, StrictInt, list[Union[StrictStr, StrictInt]]] = None
    batch: Union[StrictInt, list[StrictInt]] = None
    heads: Union[StrictInt, list[StrictInt]] = None
    kv_heads: Union[StrictInt, list[StrictInt]] = None
    kv_groups: Union[StrictInt, list[StrictInt]] = None
    head_dim: Union[StrictInt, list[StrictInt]] = None
    dtype: Union[StrictStr, list[StrictStr]] = None
    causal: Union[StrictBool, list[StrictBool]] = None
    mode: Union[StrictStr, list[StrictStr]] = None
    modes: Union[StrictStr, list[StrictStr]] = None
    params: dict[str, Union[StrictBool, StrictInt, Finite, StrictStr]] = None
    kv_layout: Union[StrictStr, list[StrictStr]] = None
    page_size: StrictInt = None
    seq_dist: StrictStr = None
    batch_spec: Union[StrictStr, list[StrictStr]] = None


class SuiteModel(BaseModel):
    """A suite file's top level (unknown keys are reported by sweep.load_suite with a suggestion)."""

    model_config = ConfigDict(strict=True, extra="allow")

    description: StrictStr = ""
    sweep: Annotated[list[dict[str, Any]], Field(min_length=1)]
    # the settings keys (time_budget, rounds, ...) are checked once, by run/settings.py build


def first_error(e: ValidationError, where: str = "") -> str:
    """One line from a pydantic error: "<where>field 'seq_q' = 'abc' is not accepted: Input
    should be a valid integer" (the first of its errors, with how many more)."""
    errors = e.errors(include_url=False)
    loc = _loc(errors[0]["loc"])
    same = [x for x in errors if _loc(x["loc"]) == loc]  # the members of a union, for one field
    value = errors[0].get("input")
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    wants = list(dict.fromkeys(x["msg"].removeprefix("Input should be ") for x in same))
    more = f" (and {len(errors) - len(same)} more)" if len(errors) > len(same) else ""
    if errors[0]["type"] == "missing":
        return f"{where}field '{loc}' is missing{more}"
    return f"{where}field '{loc}' = {shown} is not accepted; accepted: {' or '.join(wants)}{more}"


_MEMBER = re.compile(r"^(bool|int|float|str|none|list\[.*\]|dict\[.*\]|literal\[.*\]|function-.*|union\[.*\]|"
                     r"constrained-.*|tagged-union\[.*\])$")


def _loc(loc: tuple) -> str:
    """'params.eps' from ('params', 'eps', 'float'): union member tags dropped."""
    return ".".join(str(x) for x in loc if not _MEMBER.match(str(x))).replace("bytes_", "bytes")


_POSITIVE = TypeAdapter(Annotated[float, Field(allow_inf_nan=False, gt=0)])
_PARAM_NUMBER = TypeAdapter(Annotated[float, Field(allow_inf_nan=False, ge=0, le=2.0**53)])


def positive_finite(value: float, what: str, unit: str = "") -> float:
    """A CLI number that must be finite and > 0 (e.g. --time-budget); UsageError otherwise."""
    from attnbench.core.errors import UsageError

    try:
        return _POSITIVE.validate_python(value)
    except ValidationError:
        raise UsageError(f"{what} must be a finite positive number{unit} (got {value!r})") from None


def param_number(value: float, name: str) -> float:
    """A numeric variant parameter: finite, 0 <= value <= 2**53 (the documented range)."""
    from attnbench.core.errors import UsageError

    try:
        return _PARAM_NUMBER.validate_python(value)
    except ValidationError:
        raise UsageError(f"bad parameter {name}={value}; accepted: a finite number from 0 to 2**53") from None
