"""The catalogue: every variant, each with all of its backends, from the family files listed here.

A family file (exact.py, sparse.py, ...) builds its variants, backends included, and lists them in
a module-level tuple ``VARIANTS``; nothing is attached or registered later. Adding a family is one
new file and one entry in ``FAMILIES`` (docs/architecture.md walks through it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch

from attnbench.core.errors import UsageError, did_you_mean
from attnbench.core.problem import Problem
from attnbench.variants import (
    context_parallel,
    dsa,
    exact,
    flash,
    gdn,
    graph,
    linear,
    lsh,
    mla,
    moba,
    nsa,
    paged,
    positional,
    ring,
    sparse,
    vision,
)
from attnbench.variants.base import Backend, Decision, Fn, Reason, Source, Variant

__all__ = ["Backend", "Decision", "Fn", "Reason", "Source", "Variant", "FAMILIES", "get", "names", "all_variants",
           "decide", "describe", "add_backends", "drop_added_backends"]

FAMILIES = (exact, flash, positional, sparse, lsh, linear, vision, graph, ring, context_parallel, mla, paged, gdn, dsa,
            moba, nsa)

_CATALOGUE: dict[str, Variant] = {v.name: v for family in FAMILIES for v in family.VARIANTS}
assert len(_CATALOGUE) == sum(len(f.VARIANTS) for f in FAMILIES), "a variant name is used twice"
_BUILT_IN: dict[str, Variant] = dict(_CATALOGUE)


def add_backends(variant: str, backends: Sequence[Backend]) -> None:
    """Extra backends for a variant, from outside the family files (a user's file, an installed
    package: variants/user.py). Each must carry its `source`. The catalogue's entry becomes a copy
    of the variant with them appended (`dataclasses.replace`: the frozen Variant is never changed);
    loading the same source again replaces its backends, so a process may reload a file. A name
    that a built-in backend, or another source's, already has raises UsageError (one line)."""
    v = get(variant)
    kept = list(v.backends)
    for b in backends:
        if b.source is None:
            raise ValueError(f"backend {b.name!r} added to {variant!r} without its source")
        old = next((o for o in kept if o.name == b.name), None)
        if old is not None and (old.source is None or old.source.where != b.source.where):
            where = "a built-in backend" if old.source is None else f"a backend from {old.source.where}"
            raise UsageError(f"{b.source.where}: backend '{b.name}' of variant '{variant}' clashes with {where}; "
                             "give it another name")
        kept = [o for o in kept if o.name != b.name] + [b]
    _CATALOGUE[variant] = replace(v, backends=tuple(kept))


def drop_added_backends() -> None:
    """The catalogue as the family files define it (every added backend gone): for tests."""
    _CATALOGUE.clear()
    _CATALOGUE.update(_BUILT_IN)


def get(name: str) -> Variant:
    if name not in _CATALOGUE:
        raise UsageError(
            f"unknown variant '{name}'{did_you_mean(name, _CATALOGUE)}; accepted: {', '.join(names())}"
        )
    return _CATALOGUE[name]


def names() -> list[str]:
    return list(_CATALOGUE)


def all_variants() -> list[Variant]:
    return list(_CATALOGUE.values())


def decide(variant: Variant, backend: str, problem: Problem, device: torch.device,
           check_availability: bool = True) -> Decision:
    """Whether `backend` of `variant` can run `problem` (already resolved) on `device`: the one
    place that answers "is this case runnable?" for the sweep, the library, check, the frontier
    and distributed runs. `unsupported` when the variant or backend cannot do this problem,
    `unavailable` when this machine lacks what the backend needs; check_availability=False leaves
    the machine out (check runs Triton interpreted)."""
    if problem.mode not in variant.modes:
        return Decision("unsupported", f"{variant.name} does not support mode {problem.mode} "
                                       f"(supported: {', '.join(variant.modes)})")
    if backend not in variant.backend_names(include_test=True):
        return Decision("unsupported", f"{variant.name} has no backend '{backend}'")
    b = variant.backend(backend)
    if why := variant.why_unsupported(problem):
        return Decision("unsupported", why)
    if check_availability and (why := b.why_unavailable(device)):
        return Decision("unavailable", why)
    if why := b.why_unsupported(problem, device):
        return Decision("unsupported", why)
    return Decision()


def describe(variant_names) -> dict[str, dict]:
    """What readers of a results file need to know of its variants, without importing them (the
    report, show and the gate import no torch): family, whether exact, the complexity claims of the
    variant and of each backend that declares its own, and the variant's own parameter names (a
    backend's parameters, like flex's block_size, are not among them). Written into the header."""
    out = {}
    for name in sorted(set(variant_names)):
        if name not in _CATALOGUE:
            continue
        v = _CATALOGUE[name]
        out[name] = {
            "family": v.family, "exact": v.exact, "full_attention_error": v.full_attention_error,
            "time": v.time, "memory": v.memory, "params": sorted(v.parameters()),
            "backends": {b.name: dict(zip(("time", "memory"), v.claims(b.name)))
                         | ({"source": b.source.as_dict()} if b.source else {})
                         for b in v.backends if not b.test_only},
        }
    return out
