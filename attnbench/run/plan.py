"""Sweeps: the --seq grammar, suite files (TOML) and their expansion into cases.

A case is (variant, backend, resolved problem). Axes combine as a cartesian product;
combinations a variant or backend cannot do become cases with a status already decided
(`unsupported` / `unavailable`) and a reason, never errors.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib
import torch

from attnbench.core import batch_spec as bspec
from attnbench.core.errors import UsageError, did_you_mean
from attnbench.core.problem import MODES, Problem, parse_dtype
from attnbench.run.params import (
    PAGED_KV_OF,
    REPLACED_BY_BATCH_SPEC,
    batch_spec_axis,
    cast_param,
    check_params,
    layout_axes,
    parse_param_items,
)
from attnbench.variants import registry

__all__ = ["cast_param", "check_params", "parse_param_items"]  # re-exported: callers import them from here

_SEQ_ITEM = re.compile(r"^(\d+)([kKmM]?)$")


def parse_length(text: str, what: str = "--seq") -> int:
    m = _SEQ_ITEM.match(text.strip())
    if not m:
        raise UsageError(
            f"bad {what} value '{text}'; accepted: a positive integer with optional k (×1024) "
            f"or m (×1024²), e.g. 512, 4k"
        )
    n = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2}[m.group(2).lower()]
    if n < 1:
        raise UsageError(f"bad {what} value '{text}'; lengths must be at least 1")
    return n


def parse_seq(text: str, what: str = "--seq") -> list[int]:
    """'1k..64k' doubles from 1024 to 65536; '1k,3k,8k' lists; items mix: '512,1k..4k'."""
    if not text or not text.strip():
        raise UsageError(f"empty {what}; accepted: e.g. 1k..64k, 1k,3k,8k or 2048")
    out: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if ".." in item:
            lo_s, _, hi_s = item.partition("..")
            if not lo_s or not hi_s:
                raise UsageError(f"bad {what} range '{item}'; a range needs both ends, e.g. 1k..64k")
            lo, hi = parse_length(lo_s, what), parse_length(hi_s, what)
            if hi < lo:
                raise UsageError(f"bad {what} range '{item}'; the end must not be below the start, e.g. 1k..8k")
            n = lo
            while n <= hi:
                out.append(n)
                n *= 2
        else:
            out.append(parse_length(item, what))
    return sorted(set(out))


@dataclass(frozen=True)
class Sweep:
    """One block of axes; every list is an axis of the cartesian product."""

    variants: tuple[str, ...] = ("mha",)
    backends: tuple[str, ...] = ()  # empty: every backend of each variant
    seq: tuple[int, ...] = (1024,)
    kv_seq: tuple[int, ...] = (0,)  # 0: the variant's choice (Lk = Lq for self-attention)
    batch: tuple[int, ...] = (1,)
    heads: tuple[int, ...] = (8,)
    kv_heads: tuple[int, ...] = (0,)  # 0: the variant's choice
    kv_groups: tuple[int, ...] = ()  # alternative to kv_heads: kv_heads = heads / groups
    head_dim: tuple[int, ...] = (64,)
    dtype: tuple[str, ...] = ("float32",)
    causal: tuple[bool, ...] = (False,)
    modes: tuple[str, ...] = ("fwd",)
    params: dict[str, Any] = field(default_factory=dict)
    # The KV-cache layout axis: empty, or paged/dense; mha, gqa and mqa then run on the paged-KV
    # implementation (variant paged) with these layouts, page size and length distribution.
    kv_layout: tuple[str, ...] = ()
    page_size: int | None = None
    seq_dist: str | None = None
    # Mixed batches (core/batch_spec.py): one case per spec, replacing batch, seq, kv_seq and seq_dist.
    batch_spec: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    variant: str
    backend: str
    problem: Problem
    status: str | None = None  # decided before running: "unsupported" | "unavailable"
    reason: str | None = None


SWEEP_KEYS = {f for f in Sweep.__dataclass_fields__} | {"mode"}


def _positive(values, what: str) -> tuple[int, ...]:
    values = [_int(s, what) for v in values for s in (str(v).split(",") if isinstance(v, str) else [v])]
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UsageError(f"bad {what} value {v!r}; accepted: integers >= 1")
    return tuple(values)


def _int(text: Any, what: str) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return int(text.strip())
    except ValueError:
        raise UsageError(f"bad {what} value '{text}'; accepted: integers >= 1, comma-separated or repeated") from None


def make_sweep(**axes: Any) -> Sweep:
    """Validate and normalise axes given as scalars, lists or (for seq) grammar strings."""
    unknown = set(axes) - SWEEP_KEYS
    if unknown:
        k = sorted(unknown)[0]
        raise UsageError(
            f"unknown sweep key '{k}'{did_you_mean(k, SWEEP_KEYS)}; accepted: {', '.join(sorted(SWEEP_KEYS))}"
        )
    a = {k: v for k, v in axes.items() if v is not None}
    if "mode" in a and "modes" in a:
        raise UsageError("both mode and modes given; give one (a list of modes: modes = [\"fwd\", \"decode\"])")
    if "mode" in a:
        a["modes"] = a.pop("mode")
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else [v]  # noqa: E731
    out: dict[str, Any] = {}
    if "variants" in a:
        vs = [s.strip() for v in as_list(a["variants"]) for s in str(v).split(",") if s.strip()]
        if not vs:
            raise UsageError("no variants given; see `attnbench list`")
        for v in vs:
            registry.get(v)  # raises with a suggestion
        out["variants"] = tuple(dict.fromkeys(vs))
    if "backends" in a:
        out["backends"] = tuple(
            dict.fromkeys(s.strip() for v in as_list(a["backends"]) for s in str(v).split(",") if s.strip())
        )
    for key in ("seq", "kv_seq"):
        if key in a:
            vals = [
                n
                for v in as_list(a[key])
                for n in (parse_seq(v, f"--{key.replace('_', '-')}") if isinstance(v, str) else [v])
            ]
            out[key] = _positive(vals, f"--{key.replace('_', '-')}")
    for key in ("batch", "heads", "kv_heads", "kv_groups", "head_dim"):
        if key in a:
            out[key] = _positive(as_list(a[key]), f"--{key.replace('_', '-')}")
    if "kv_heads" in out and "kv_groups" in out:
        raise UsageError("--kv-heads and --kv-groups are mutually exclusive; give one (groups = heads / kv_heads)")
    if "dtype" in a:
        out["dtype"] = tuple(parse_dtype(str(d)) for v in as_list(a["dtype"]) for d in str(v).split(","))
    if "causal" in a:
        vals = as_list(a["causal"])
        if not all(isinstance(c, bool) for c in vals):
            raise UsageError(f"bad causal value {vals!r}; accepted: true or false")
        out["causal"] = tuple(vals)
    if "modes" in a:
        modes = [m.strip() for v in as_list(a["modes"]) for m in str(v).split(",") if m.strip()]
        for m in modes:
            if m not in MODES:
                raise UsageError(f"unknown mode '{m}'{did_you_mean(m, MODES)}; accepted: {', '.join(MODES)}")
        out["modes"] = tuple(dict.fromkeys(modes))
    out |= batch_spec_axis(a, out.get("modes"))
    out |= layout_axes(a, out.get("variants", Sweep.variants))
    if "params" in a:
        if not isinstance(a["params"], dict):
            raise UsageError("params must be a table of variant parameters, e.g. params = { window = 256 }")
        out["params"] = check_params(a["params"], out.get("variants", Sweep.variants), out.get("backends", ()))
    return Sweep(**out)


def load_suite(name_or_path: str, **overrides: Any) -> tuple[list[Sweep], dict[str, Any]]:
    """A suite by name (suites/NAME.toml shipped with attnbench) or by path; `overrides`
    replace the same axes in every sweep of the suite."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UsageError(
                f"suite file '{name_or_path}' does not exist; give a .toml path or one of: {', '.join(suite_names())}"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(
                f"suite file '{name_or_path}' is not UTF-8 text (byte {e.object[e.start]:#04x} at "
                f"offset {e.start}); accepted: a TOML file"
            ) from None
        except OSError as e:
            raise UsageError(f"cannot read suite file '{name_or_path}': {e.strerror or e}") from None
    else:
        if name_or_path not in suite_names():
            raise UsageError(
                f"unknown suite '{name_or_path}'{did_you_mean(name_or_path, suite_names())}; "
                f"accepted: {', '.join(suite_names())} or a path to a .toml file"
            )
        text = resources.files("attnbench.suites").joinpath(f"{name_or_path}.toml").read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"suite '{name_or_path}' is not valid TOML: {e}") from None
    from attnbench.run import settings

    settings.check_suite_keys(data, name_or_path)
    if not isinstance(data.get("sweep"), list) or not data["sweep"]:
        raise UsageError(f"suite '{name_or_path}' has no [[sweep]] tables")
    _validate_suite(data, name_or_path)
    settings.build(data, name_or_path)  # the settings' one validation, here so a bad suite fails at load
    sweeps = data["sweep"]
    try:
        return [make_sweep(**_merge(s, overrides)) for s in sweeps], {k: v for k, v in data.items() if k != "sweep"}
    except UsageError as e:
        raise UsageError(f"suite '{name_or_path}': {e}") from None


def _validate_suite(data: dict, name: str) -> None:
    """Types and ranges of the suite's values (schema.SuiteModel, SweepModel): one line each."""
    from pydantic import ValidationError

    from attnbench.core.schema import SuiteModel, SweepModel, first_error

    try:
        SuiteModel.model_validate(data)
        for i, s in enumerate(data["sweep"]):
            try:
                SweepModel.model_validate(s)
            except ValidationError as e:
                raise UsageError(first_error(e, f"suite '{name}': sweep {i + 1}: ")) from None
    except ValidationError as e:
        raise UsageError(first_error(e, f"suite '{name}': ")) from None


def _merge(axes: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(axes)
    if "kv_heads" in overrides or "kv_groups" in overrides:  # one replaces the other
        merged.pop("kv_heads", None)
        merged.pop("kv_groups", None)
    if "modes" in overrides:
        merged.pop("mode", None)
    if "batch_spec" in overrides:  # the spec gives the lengths (and the forward call) the suite's axes would
        for key in REPLACED_BY_BATCH_SPEC + ("mode", "modes"):
            merged.pop(key, None)
    if "params" in overrides:  # --param adds to (or replaces one of) the suite's parameters
        overrides = overrides | {"params": {**merged.get("params", {}), **overrides["params"]}}
    return merged | overrides


def suite_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("attnbench.suites").iterdir() if p.name.endswith(".toml"))


def expand(sweeps: list[Sweep], device: torch.device) -> list[Case]:
    cases: list[Case] = []
    seen: set = set()
    for sw in sweeps:
        _check_backends(sw)
        for c in _expand_one(sw, device):
            key = (c.variant, c.backend, c.problem)
            if key not in seen:
                seen.add(key)
                cases.append(c)
    return cases


def _check_backends(sw: Sweep) -> None:
    if not sw.backends:
        return
    known = {b for v in sw.variants for b in registry.get(v).backend_names(include_test=True)}
    for b in sw.backends:
        if b not in known:
            raise UsageError(
                f"unknown backend '{b}'{did_you_mean(b, known)} for variants {', '.join(sw.variants)}; "
                f"accepted: {', '.join(sorted(known))}"
            )


def _expand_one(sw: Sweep, device: torch.device):
    if sw.batch_spec:
        yield from _batch_spec_cases(sw, device)
        return
    groups = sw.kv_groups or (None,)
    axes = itertools.product(
        sw.variants,
        sw.modes,
        sw.dtype,
        sw.batch,
        sw.heads,
        groups,
        sw.kv_heads,
        sw.head_dim,
        sw.causal,
        sw.seq,
        sw.kv_seq,
    )
    for variant, mode, dtype, b, h, g, hkv, d, causal, L, lk in axes:
        v = registry.get(variant)
        if g is not None:
            hkv = h // g if h % g == 0 else -g  # -g: groups that do not divide the heads
        seq_q, seq_k = (1, lk or L) if mode == "decode" else (L, lk)
        raw = Problem(batch=b, heads=h, kv_heads=hkv, seq_q=seq_q, seq_k=seq_k, head_dim=d, dtype=dtype,
                      causal=causal, mode=mode)
        if sw.kv_layout or (variant == "paged" and (sw.page_size or sw.seq_dist)):
            yield from _layout_cases(sw, v, raw, device)
            continue
        chosen = sw.backends or tuple(v.backend_names())
        pins = _peer_pins(v, chosen, sw.params, device)
        for backend in chosen:
            declared = v.declared_params(backend)
            params = v.defaults | {k: x for k, x in sw.params.items() if k in declared}
            own = next((x.pinned for x in v.backends if x.name == backend), {})  # none: unsupported later
            sets = (
                [params | own]
                if own and not own.keys() & sw.params.keys()
                else [params] + [params | pin for pin in pins if not own]
            )
            for ps in sets:
                raw = Problem(
                    batch=b,
                    heads=h,
                    kv_heads=hkv,
                    seq_q=seq_q,
                    seq_k=seq_k,
                    head_dim=d,
                    dtype=dtype,
                    causal=causal,
                    mode=mode,
                    params=tuple(sorted(ps.items())),
                )
                yield decide_case(v, backend, raw, device)


def _batch_spec_cases(sw: Sweep, device: torch.device):
    """One case per (spec, variant, backend, ...): the paged variant (mha, gqa, mqa through it, as
    under --kv-layout) runs the mixed batch; any other variant is unsupported, with the reason."""
    axes = itertools.product(sw.variants, sw.dtype, sw.heads, sw.kv_groups or (None,), sw.kv_heads, sw.head_dim,
                             sw.batch_spec)
    for variant, dtype, h, g, hkv, d, text in axes:
        v, spec = registry.get(variant), bspec.parse(text)
        if g is not None:
            hkv = h // g if h % g == 0 else -g
        raw = Problem(batch=spec.batch, heads=h, kv_heads=hkv, seq_q=max(spec.q_lens), seq_k=max(spec.kv_lens),
                      head_dim=d, dtype=dtype, causal=True, mode="fwd", params=(("batch_spec", text),))
        if v.name in PAGED_KV_OF + ("paged",):
            yield from _layout_cases(sw, v, raw, device)
            continue
        for backend in sw.backends or tuple(v.backend_names()):
            yield Case(v.name, backend, raw, "unsupported",
                       f"--batch-spec runs on paged (and {', '.join(PAGED_KV_OF)} through it): {v.name} has no "
                       "mixed prefill-and-decode batch")


def _layout_cases(sw: Sweep, v, raw: Problem, device: torch.device):
    """The cases of one problem under the layout axis: mha/gqa/mqa (their KV heads resolved as
    the variant resolves them) and paged run on the paged-KV implementation at each layout;
    any other variant is unsupported, with the reason."""
    layouts = sw.kv_layout or (None,)
    layout_params = {k: x for k, x in (("page_size", sw.page_size), ("seq_dist", sw.seq_dist)) if x is not None}
    if v.name not in PAGED_KV_OF + ("paged",):
        for backend in sw.backends or tuple(v.backend_names()):
            p = raw.with_params(**v.defaults)
            yield Case(v.name, backend, p, "unsupported",
                       f"--kv-layout applies to {', '.join(PAGED_KV_OF)} and paged (no paged-KV implementation "
                       f"of {v.name})")
        return
    paged = registry.get("paged")
    if v.name != "paged" and raw.kv_heads >= 0:  # the source variant's KV heads (gqa: its groups)
        try:
            raw = replace(raw, kv_heads=v.resolve(raw).kv_heads)
        except UsageError:
            pass  # its reason comes from the paged variant's own checks
    known = paged.backend_names()
    for backend in sw.backends or tuple(known):
        for layout in layouts:
            ps = paged.defaults | {k: x for k, x in sw.params.items() if k in paged.declared_params(backend)}
            ps |= layout_params | dict(raw.params) | ({"kv_layout": layout} if layout else {})
            p = replace(raw, params=tuple(sorted(ps.items())))
            if backend not in known:
                yield Case("paged", backend, paged.resolve(p), "unsupported",
                           f"no paged-KV backend '{backend}'; accepted: {', '.join(known)}")
                continue
            yield decide_case(paged, backend, p, device)


def _peer_pins(v, chosen, explicit: dict, device: torch.device) -> list[dict]:
    """The pinned parameters (registry.Backend.pinned) of the chosen, available backends whose
    parameters the sweep does not set: the other backends also run at them."""
    pins = []
    for b in v.backends:
        unpinned = not b.pinned.keys() & explicit.keys()
        if b.name in chosen and b.pinned and unpinned and b.why_unavailable(device) is None:
            pins.append(dict(b.pinned))
    return pins


def decide_case(v, backend: str, raw: Problem, device: torch.device) -> Case:
    """The case of `backend` of variant `v` for the unresolved problem `raw`: resolved, and
    `unsupported`/`unavailable` with the reason when it cannot run here (registry.decide)."""
    if raw.kv_heads < 0:  # kv_groups that do not divide the heads: keep the groups in params
        p = v.resolve(replace(raw, kv_heads=raw.heads))
        return Case(
            v.name,
            backend,
            replace(p, kv_heads=0).with_params(kv_groups=-raw.kv_heads),
            "unsupported",
            f"kv_groups={-raw.kv_heads} does not divide heads={raw.heads}",
        )
    p = v.resolve(raw)
    decision = registry.decide(v, backend, p, device)
    return Case(v.name, backend, p) if decision.runnable else Case(v.name, backend, p, decision.status, decision.reason)


# ---------------------------------------------------------------- distributed (ring) cases
def is_distributed(case: Case) -> bool:
    """A case the runner hands to distributed.launch (ranks in processes of their own), not to its worker."""
    return registry.get(case.variant).distributed and case.problem.param("world_size", 1) > 1


def with_world_size(cases: list[Case], world_size: int, device: torch.device) -> list[Case]:
    """The cases of `run --world-size N`: distributed variants get world_size=N and their status
    decided again; every other case is returned unchanged (its case_id too)."""
    out = []
    for c in cases:
        v = registry.get(c.variant)
        if not v.distributed:
            out.append(c)
            continue
        out.append(decide_case(v, c.backend, c.problem.with_params(world_size=world_size), device))
    return out
