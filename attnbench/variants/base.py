"""What a variant and a backend are (the types every family file builds).

A *variant* is an attention idea (its math, FLOP/byte model, complexity claims); a *backend*
is one way to compute it. ``Backend.build(problem, device)`` does all setup (masks, random
features, compilation) and returns ``fn(q, k, v) -> out``; only ``fn`` is timed.
Each family file lists its variants, every backend included, in a module-level tuple
``VARIANTS``; ``attnbench/variants/registry.py`` is the catalogue of those tuples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, get_args

import torch

from attnbench.core.errors import UsageError, did_you_mean
from attnbench.core.problem import Problem

Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Reason = str | None  # None: fine; a string: why not
Oracle = Literal["softmax", "reference", "eager"]
ORACLES: tuple[str, ...] = get_args(Oracle)


def _fine(*_: Any) -> Reason:
    return None


def _same(problem: Problem) -> Problem:
    return problem


@dataclass(frozen=True)
class Decision:
    """`registry.decide`'s answer to "can this case run here?".

    status: "runnable", or the status its record gets: "unsupported" (the variant or backend cannot
            compute this problem) or "unavailable" (this machine lacks what the backend needs).
    reason: why not, in one line ("" when runnable).
    A Decision has no truth value (`if decision:` raises): ask `decision.runnable`."""

    status: Literal["runnable", "unsupported", "unavailable"] = "runnable"
    reason: str = ""

    def __post_init__(self) -> None:
        if (self.status == "runnable") != (not self.reason):
            raise ValueError(f"a {self.status} decision {'has' if self.reason else 'needs'} a reason")

    @property
    def runnable(self) -> bool:
        return self.status == "runnable"

    def __bool__(self) -> bool:
        raise TypeError("a Decision has no truth value: test decision.runnable")


@dataclass(frozen=True)
class Source:
    """Where a backend that is not built into attnbench comes from (variants/user.py loads it).

    kind:   "file" (`--backend-file PATH.py`) or "entry point" (an installed package's
            `attnbench.backends` entry point).
    where:  the file's absolute path, or the entry point as "name = module:attr".
    sha256: the file's content hash (an entry point: of its module's file, when it has one), so two
            results files can tell whether they timed the same kernel."""

    kind: Literal["file", "entry point"]
    where: str
    sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Backend:
    """One implementation of a variant.

    build:        (problem, device) -> fn(q, k, v) -> out; all setup happens here.
    why_unavailable: (device) -> why this backend cannot run on the device (a missing package, no
                  GPU), or None when it can.
    why_unsupported: (problem, device) -> why this backend cannot compute this problem, or None
                  when it can.
    materializes: holds B*H*Lq*Lk scores (used to predict memory and skip what cannot fit).
    workspace:    (problem) -> bytes one call holds beyond what its kind implies (measure/cost.py:
                  output, gradients, row statistics or materialised scores): random features,
                  chunks, a mask built per call. None: nothing beyond its kind.
    params:       parameters of this backend alone (name -> default, which gives the type), set
                  like variant parameters but only on this backend's cases.
    tf32_dots:    fp32 inputs are multiplied in TF32 on the GPU (the Triton kernels); `check`
                  then bounds the error by a TF32 reference.
    compiles:     its first call of each shape compiles (torch.compile): the plan adds the compile
                  time (run/forecast.py), never the timed samples (the first call is untimed).
    time, memory: this backend's own complexity claims where it changes the variant's (a fused
                  online-softmax kernel: O(L) memory; chunked linear attention); None: the variant's.
                  Scaling verdicts test the (variant, backend) pair's claim.
    work_flops:   (problem) -> the FLOPs this backend really computes where it computes more than the
                  variant's real count (a padded batch: the whole rectangle); time predictions only,
                  records keep the real FLOPs. None: the variant's flops.
    source:       where a backend added from outside attnbench comes from (a user's file, an installed
                  package); None for the built-in ones. Such a backend's output is checked against
                  the variant's oracle before it is timed (run/precheck.py).
    pinned:       parameter values this backend needs (a peer package's hard-coded constant, e.g.
                  performer-pytorch's eps = 1e-4). Unless a sweep sets the parameter itself, this
                  backend's cases run at these values and the variant's other backends run at them
                  too (besides the sweep's), so the comparison is like for like and labelled.
    """

    name: str
    build: Callable[[Problem, torch.device], Fn]
    description: str = ""
    why_unavailable: Callable[[torch.device], Reason] = _fine
    why_unsupported: Callable[[Problem, torch.device], Reason] = _fine
    materializes: bool = False
    workspace: Callable[[Problem], float] | None = None
    tf32_dots: bool = False
    compiles: bool = False
    test_only: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    time: str | None = None
    memory: str | None = None
    pinned: dict[str, Any] = field(default_factory=dict)
    work_flops: Callable[[Problem], float] | None = None
    source: Source | None = None


@dataclass(frozen=True)
class Variant:
    """An attention variant: its math, cost model, claims and backends.

    reference: (q, k, v, problem) -> out, computed densely in the inputs' dtype; the oracle every
               backend is checked against (tests call it in fp32).
    flops:     forward FLOPs for a problem (the runner scales by mode).
    bytes:     forward minimum bytes moved (inputs read once, output written once).
    resolve:   fills the variant's natural shape (e.g. MQA sets kv_heads=1) and default params.
    oracle:    what the checks (`attnbench check`, the contract test) hold the backends to; declared,
               never inferred from `family` (a label only):
               "softmax"   at its defaults the definition is plain softmax(QKᵀ/√D [+ bottom-right
                           causal]) V with grouped K/V heads, so the independent fp64 oracle of the
                           tests applies (and must agree with `reference`);
               "reference" exact w.r.t. its own definition (masks, biases, rotations, a temperature):
                           held to its own `reference` run in fp64;
               "eager"     an approximation of exact attention (its `reference`): loosely bounded
                           against that, tightly against its own `eager` backend fed fp64 inputs.
    distributed: its cases run over several ranks (`run --world-size N`, distributed.launch), not
               in the worker; single-process tests skip it.
    decode_check: `attnbench check` adds a decode problem (one query row against a long cache) for it.
    why_unsupported: why a problem is unsupported (e.g. causal Linformer), or None when it is not.
    full_attention_error: also report the error against full (unmasked) softmax attention.
    make_inputs: (problem, device, seed) -> (q, k, v), when random normal inputs do not fit.
    picture:   problem -> 2-D (Lq, Lk) tensor showing what is attended (0/1 mask or bias values),
               for the pattern gallery and `attnbench show-pattern`.
    modes:     the modes this variant can run; others become `unsupported`.
    cost_parts: problem -> {part: {"flops", "bytes"}}: where the forward's FLOPs and bytes go (DSA:
               its indexer and its sparse attention); the parts sum to `flops` and `bytes`. Written
               into the record (`cost_parts`, scaled by the mode like flops) and shown in the table.
    options:   parameters that are off unless a sweep sets them (name -> the "off" value, which
               gives the type): e.g. softcap = 0.0. Unlike `defaults` they are left out of a case's
               params while off, so records (and case ids) of plain attention do not change when a
               modifier is added to the catalogue.
    """

    name: str
    family: str
    description: str
    time: str
    memory: str
    reference: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Problem], torch.Tensor]
    flops: Callable[[Problem], float]
    bytes: Callable[[Problem], float]
    backends: tuple[Backend, ...]
    oracle: Oracle
    distributed: bool = False
    decode_check: bool = False
    resolve: Callable[[Problem], Problem] = _same
    why_unsupported: Callable[[Problem], Reason] = _fine
    full_attention_error: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    make_inputs: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
    picture: Callable[[Problem], torch.Tensor] | None = None
    modes: tuple[str, ...] = ("fwd", "bwd", "fwd+bwd", "decode")
    kv_cache_bytes: Callable[[Problem], float] | None = None  # cache a decode step reads (None: shared)
    cost_parts: Callable[[Problem], dict[str, dict[str, float]]] | None = None

    def __post_init__(self) -> None:
        if self.oracle not in ORACLES:
            raise ValueError(f"variant {self.name!r}: oracle {self.oracle!r}; accepted: {', '.join(ORACLES)}")

    @property
    def exact(self) -> bool:
        """Computes its own definition exactly (error vs `reference` ~ rounding); False for the
        approximations, whose reference is exact attention."""
        return self.oracle != "eager"

    def backend(self, name: str) -> Backend:
        for b in self.backends:
            if b.name == name:
                return b
        raise UsageError(
            f"variant '{self.name}' has no backend '{name}'{did_you_mean(name, self.backend_names())}; "
            f"accepted: {', '.join(self.backend_names())}"
        )

    def backend_names(self, include_test: bool = False) -> list[str]:
        return [b.name for b in self.backends if include_test or not b.test_only]

    def claims(self, backend: str) -> tuple[str, str]:
        """(time, memory) claims of this variant computed by `backend`: the backend's own where it
        declares one, else the variant's (an unknown backend name: the variant's)."""
        b = next((b for b in self.backends if b.name == backend), None)
        return (b and b.time) or self.time, (b and b.memory) or self.memory

    def parameters(self) -> dict[str, Any]:
        """Every parameter the variant declares (all backends): defaults, then the off values of its options."""
        return self.defaults | self.options

    def declared_params(self, backend: str) -> dict[str, Any]:
        """The parameters a case of this backend may set: the variant's and the backend's own."""
        extra = next((b.params for b in self.backends if b.name == backend), {})
        return self.parameters() | extra
