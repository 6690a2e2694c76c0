"""`run --model` / `--model-config`: a model's layer groups as cases, and the model's fields on records.

Each layer group of a model (core/models.py) becomes one sweep: the model's heads, KV heads, head
dimension, dtype and causal mask (flags the user gave replace them), the group's variant and
parameters, the user's lengths, modes, batch and backends. A group whose variant or parameters this
attnbench lacks is not run with a substitute: it becomes `unsupported` records naming what is
missing. Every record of a model carries `model`, `layers` (the model's layers, all groups; --layers
replaces it), and, for inference modes (fwd, decode), `kv_bytes_per_seq` (the whole model's
KV cache for one sequence of seq_k tokens, in the record's dtype) and `kv_bytes_per_token` (what
each further token adds once past every sliding window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from attnbench.core.errors import UsageError, did_you_mean
from attnbench.core.models import (
    LayerGroup,
    ModelSpec,
    default_scale,
    group_scale,
    kv_bytes_per_seq,
    kv_bytes_per_token,
)
from attnbench.core.problem import Problem
from attnbench.run.plan import Case, expand, make_sweep
from attnbench.variants import registry

DEFAULT_SEQ = "1k..8k"  # lengths when neither --seq nor the model fixes them
KV_MODES = ("fwd", "decode")  # the modes whose records carry the KV-cache arithmetic
NOT_WITH_MODEL = ("variants", "suite")  # a model sets its variants: these flags do not combine with it


@dataclass(frozen=True)
class ModelPlan:
    """The cases of a model run and how to tag their records."""

    cases: tuple[Case, ...]
    tags: dict  # (variant, backend, Problem) -> ModelSpec
    specs: tuple[ModelSpec, ...] = ()

    def annotate(self, rec: dict) -> dict:
        """The model's fields added to a record of one of these cases (others unchanged)."""
        try:
            key = (rec["variant"], rec["backend"], Problem.from_dict(rec))
        except (KeyError, TypeError):
            return rec
        hit = self.tags.get(key)
        if hit is None:
            return rec
        own = any(g.variant == rec["variant"] and g.dims for g in hit.attention)  # a group's own shape: the
        # record's heads are that group's, not the model's
        spec = hit if own else replace(hit, **{k: rec[k] for k in ("kv_heads", "head_dim") if rec.get(k)})
        out = {**rec, "model": spec.name, "layers": spec.layers, "kv_bytes_per_token": None, "kv_bytes_per_seq": None}
        if rec.get("mode") in KV_MODES:
            out["kv_bytes_per_seq"] = kv_bytes_per_seq(spec, rec["seq_k"], rec["dtype"]) * rec.get("batch", 1)
            out["kv_bytes_per_token"] = kv_bytes_per_token(spec, rec["dtype"])
        return out


def resolve_models(names: str | None, config: Path | None, layers: int | None) -> list[ModelSpec]:
    """The models of --model (comma-separated presets) and --model-config (a config.json or its
    folder), read by transformers (run/hfconfig.py), with --layers applied."""
    from attnbench.run.hfconfig import load, load_preset

    specs = [load_preset(n) for n in (names or "").split(",") if n.strip()]
    if names is not None and not specs:
        raise UsageError("empty --model; see `attnbench list --models`")
    if config is not None:
        specs.append(load(config))
    if layers is not None:
        specs = [s.with_layers(layers) for s in specs]
    return specs


def missing(spec: ModelSpec, variant: str, params: dict[str, Any]) -> str | None:
    """Why this attnbench cannot run a layer group as the model defines it, or None."""
    if variant not in registry.names():
        return f"variant '{variant}' is not in this attnbench; {spec.name} needs it"
    declared = set(registry.get(variant).parameters())
    lacking = [k for k in params if k not in declared]
    if lacking:
        wanted = ", ".join(f"{k}={params[k]}" for k in lacking)
        return (f"variant '{variant}' has no parameter {', '.join(repr(k) for k in lacking)} in this attnbench; "
                f"{spec.name} needs {wanted} (not run without it)")
    return None


def model_plan(specs: list[ModelSpec], given: dict[str, Any], device: torch.device) -> ModelPlan:
    """Cases for every layer group of every model; `given` holds the run's explicit axes
    (make_sweep keys), which replace the model's."""
    bad = [k for k in NOT_WITH_MODEL if given.get(k) not in (None, [])]
    if bad:
        raise UsageError(f"--{bad[0]} does not combine with --model/--model-config: the model sets its variants")
    cases: list[Case] = []
    tags: dict = {}
    extra = dict(given.get("params") or {})
    used: set[str] = set()
    for spec in specs:
        for g in spec.attention:
            mine = {k: v for k, v in extra.items() if k in _declared(g.variant)}  # --param: where declared
            used |= mine.keys()
            params = group_params(g, spec.head_dim) | mine
            axes = {
                "heads": g.dim("heads", spec.heads), "kv_heads": g.dim("kv_heads", spec.kv_heads),
                "head_dim": g.dim("head_dim", spec.head_dim), "dtype": spec.dtype,
                "causal": spec.causal, "seq": spec.seq or DEFAULT_SEQ,
                **{k: v for k, v in given.items() if k not in ("params", *NOT_WITH_MODEL) and v is not None},
            }
            if "kv_groups" in given:
                axes.pop("kv_heads")
            for c in _group_cases(spec, g.variant, axes, params, device):
                key = (c.variant, c.backend, c.problem)
                if key not in tags:  # two models with the same attention share the case: the first names it
                    tags[key] = spec
                    cases.append(c)
    _check_backends(given.get("backends"), {g.variant for s in specs for g in s.attention})
    unused = sorted(extra.keys() - used)
    if unused:
        variants = ", ".join(sorted({g.variant for s in specs for g in s.attention}))
        raise UsageError(f"--param {unused[0]}: no layer group of {', '.join(s.name for s in specs)} has this "
                         f"parameter (their variants: {variants})")
    return ModelPlan(tuple(cases), tags, tuple(specs))


def group_params(g: LayerGroup, head_dim: int) -> dict[str, Any]:
    """A layer group's case parameters: its own, and `scale` where the model's softmax scale is not
    the variant's default (variants/scaling.py applies it)."""
    params = dict(g.params)
    if g.scale is not None and not math.isclose(g.scale, default_scale(g, head_dim), rel_tol=1e-9):
        params["scale"] = g.scale
    return params


def plan_entries(specs: list[ModelSpec], cases) -> list[dict[str, Any]]:
    """The `models` list of a dry run's JSON plan: per model its groups (variant, layers, params,
    scale) and KV cache per token and per sequence at each planned length (in the model's dtype,
    one sequence; the record's dtype and batch may differ)."""
    lengths = sorted({c.problem.seq_k for c in cases})
    return [{"name": s.name, "source": s.source, "reader": s.reader, "dtype": s.dtype, "layers": s.layers,
             "heads": s.heads, "kv_heads": s.kv_heads, "head_dim": s.head_dim, "causal": s.causal,
             "groups": [{"variant": g.variant, "layers": g.layers, "params": dict(g.params),
                         "scale": group_scale(g, s.head_dim)} for g in s.attention],
             "kv_bytes_per_token": kv_bytes_per_token(s),
             "kv_bytes_per_seq": {str(L): kv_bytes_per_seq(s, L) for L in lengths}} for s in specs]


def _declared(variant: str) -> set[str]:
    """Parameter names a variant or one of its backends declares (none for a variant not here)."""
    if variant not in registry.names():
        return set()
    v = registry.get(variant)
    return set(v.parameters()) | {k for b in v.backends for k in b.params}


def _backend_names(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [b.strip() for x in items if x for b in str(x).split(",") if b.strip()]


def _group_cases(spec: ModelSpec, variant: str, axes: dict[str, Any], params: dict[str, Any],
                 device: torch.device) -> list[Case]:
    """A layer group's cases: `unsupported` (backend '-') when the variant or a parameter is missing;
    else the sweep, with the --backends its variant lacks (a model mixing MLA and GQA groups, say
    hf-eager) recorded `unsupported` for this group rather than refused for the whole run."""
    why = missing(spec, variant, params)
    if why:
        return _unsupported(variant, axes, params, why)
    wanted = _backend_names(axes.get("backends"))
    have = set(registry.get(variant).backend_names(include_test=True))
    lacking = [b for b in wanted if b not in have]
    out = [c for b in lacking for c in _unsupported(variant, axes, params, f"{variant} has no backend '{b}'", b)]
    if wanted and len(lacking) == len(wanted):
        return out
    runnable = {**axes, "backends": ",".join(b for b in wanted if b in have)} if wanted else axes
    return expand([make_sweep(variants=variant, params=params, **runnable)], device) + out


def _check_backends(value: Any, variants: set[str]) -> None:
    """A --backends name no layer group's variant has is a usage error (a typo), as without a model."""
    known = {b for v in variants if v in registry.names() for b in registry.get(v).backend_names(include_test=True)}
    for b in _backend_names(value):
        if b not in known:
            raise UsageError(f"unknown backend '{b}'{did_you_mean(b, known)} for the model's variants "
                             f"{', '.join(sorted(variants))}; accepted: {', '.join(sorted(known))}")


def _unsupported(variant: str, axes: dict[str, Any], params: dict[str, Any], why: str,
                 backend: str = "-") -> list[Case]:
    """One `unsupported` case per (mode, dtype, batch, length) of a group that cannot run here
    (backend '-': none was tried)."""
    sw = make_sweep(**{k: v for k, v in axes.items() if k not in ("backends",)})
    out = []
    for mode in sw.modes:
        for dtype in sw.dtype:
            for b in sw.batch:
                for L in sw.seq:
                    p = Problem(batch=b, heads=sw.heads[0], kv_heads=(sw.kv_heads or (0,))[0] or sw.heads[0],
                                seq_q=1 if mode == "decode" else L, seq_k=L, head_dim=sw.head_dim[0], dtype=dtype,
                                causal=sw.causal[0], mode=mode, params=tuple(sorted(params.items())))
                    out.append(Case(variant, backend, p, "unsupported", why))
    return out


def annotator(plan: ModelPlan | None, layers: int | None) -> Callable[[dict], dict] | None:
    """The record hook of a run: the model's fields (run --model), or `layers` and the KV-cache
    arithmetic of the measured attention × N layers (run --layers N without a model)."""
    if plan is not None:
        return plan.annotate
    if layers is None:
        return None

    def tag(rec: dict) -> dict:
        out = {**rec, "layers": layers}
        kv = rec.get("kv_cache_bytes")
        if rec.get("mode") in KV_MODES and kv and rec.get("seq_k"):
            out["kv_bytes_per_seq"] = kv * layers
            out["kv_bytes_per_token"] = kv / (rec.get("batch", 1) * rec["seq_k"]) * layers
        return out

    return tag


def frontier_groups(spec: ModelSpec, base: Problem, explicit: set[str]) -> list[tuple[str, Problem, str | None]]:
    """`frontier --model`: per layer group (variant, the base problem with the model's shape and the
    group's parameters — axes in `explicit` keep the command line's value —, why it cannot run here)."""
    model = {"heads": spec.heads, "kv_heads": spec.kv_heads, "head_dim": spec.head_dim, "dtype": spec.dtype,
             "causal": spec.causal}
    shape = {k: v for k, v in model.items() if k not in explicit and not (k == "kv_heads" and "heads" in explicit)}
    out = []
    for g in spec.attention:
        p = Problem(**{**base.as_dict(), **shape, "params": ()}).with_params(**group_params(g, spec.head_dim))
        out.append((g.variant, p, missing(spec, g.variant, dict(g.params))))
    return out


def frontier_kv(spec: ModelSpec, row: dict, base: Problem) -> dict:
    """The KV-cache fields of a frontier row (at its largest length that ran), with the searched
    problem's KV heads, head dim, dtype and batch."""
    L, dtype, batch = row.get("largest_ok"), base.dtype, base.batch
    spec = replace(spec, **{k: getattr(base, k) for k in ("kv_heads", "head_dim") if getattr(base, k)})
    return {"model": spec.name, "layers": spec.layers, "kv_bytes_per_token": kv_bytes_per_token(spec, dtype),
            "kv_bytes_per_seq": kv_bytes_per_seq(spec, L, dtype) * batch if L else None}
