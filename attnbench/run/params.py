"""Variant parameters and the KV-layout axis of a sweep, checked: `--param name=value` items,
their cast to the declared type, and `--kv-layout` / `--page-size` / `--seq-dist`.

A parameter must be declared by one of the sweep's variants (or their backends); a value of the
wrong type is one UsageError line naming it and what is accepted.
"""

from __future__ import annotations

import math
from typing import Any

from attnbench.core.errors import UsageError, did_you_mean
from attnbench.variants import registry

# The variants whose decode and prefill run on the paged-KV implementation under --kv-layout.
PAGED_KV_OF = ("mha", "gqa", "mqa")


def check_params(params: dict[str, Any], variants: tuple[str, ...], backends: tuple[str, ...] = ()) -> dict[str, Any]:
    """Each parameter must be declared by at least one of the variants, or by one of their
    backends (all, or those named); it then applies to the cases of those that declare it.
    Values are cast to the type of the declared default (text from --param)."""
    out = {}
    for name, value in params.items():
        tables = [
            d
            for v in variants
            for d in (
                registry.get(v).parameters(),
                *(b.params for b in registry.get(v).backends if not backends or b.name in backends),
            )
        ]
        declared = [d for d in tables if name in d]
        if not declared:
            known = sorted({n for d in tables for n in d})
            who = (
                f"variant '{variants[0]}' has no parameter"
                if len(variants) == 1
                else f"none of the variants {', '.join(variants)} has a parameter"
            )
            raise UsageError(f"{who} '{name}'{did_you_mean(name, known)}; accepted: {', '.join(known) or 'none'}")
        out[name] = cast_param(value, declared[0][name], name)
    return out


def cast_param(value: Any, default: Any, name: str) -> Any:
    """`value` (text from the command line, or a TOML value) as the type of `default`."""
    kind = type(default).__name__
    bad = UsageError(f"bad parameter {name}={value}; accepted: a {kind}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        raise bad
    if isinstance(default, (int, float)):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                value = type(default)(value.strip())
            except ValueError:
                raise bad from None
        if isinstance(default, int) and not (
            isinstance(value, int) or math.isfinite(value) and float(value).is_integer()
        ):
            raise bad
        from attnbench.core.schema import param_number

        param_number(value, name)  # finite, 0 .. 2**53
        return type(default)(value)
    return value if isinstance(value, str) else str(value)


def parse_param_items(items: list[str] | None) -> dict[str, str]:
    """--param name=value items (repeatable) as {name: text}; cast later, per variant."""
    out = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise UsageError(f"bad --param '{item}'; accepted: name=value, e.g. --param window=256")
        out[name.strip()] = text.strip()
    return out


def layout_axes(a: dict[str, Any], variants: tuple[str, ...]) -> dict[str, Any]:
    """--kv-layout (a list: an axis), --page-size and --seq-dist, checked; without --kv-layout
    the last two apply to the paged variant only."""
    from attnbench.variants import paged

    out: dict[str, Any] = {}
    if "kv_layout" in a:
        raw = a["kv_layout"] if isinstance(a["kv_layout"], (list, tuple)) else [a["kv_layout"]]
        layouts = [s.strip() for v in raw for s in str(v).split(",") if s.strip()]
        for x in layouts or [""]:
            if x not in paged.KV_LAYOUTS:
                raise UsageError(f"bad --kv-layout '{x}'; accepted: {', '.join(paged.KV_LAYOUTS)} "
                                 "(comma-separated or repeated for both)")
        out["kv_layout"] = tuple(dict.fromkeys(layouts))
    if "page_size" in a:
        v = a["page_size"]
        if isinstance(v, str):
            try:
                v = int(v.strip())
            except ValueError:
                raise UsageError(f"bad --page-size value '{v}'; accepted: an integer >= 1") from None
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UsageError(f"bad --page-size value {v!r}; accepted: an integer >= 1 (16 is vLLM's default)")
        out["page_size"] = v
    if "seq_dist" in a:
        try:
            paged.parse_seq_dist(a["seq_dist"])
        except UsageError as e:
            raise UsageError(f"--seq-dist: {e}") from None
        out["seq_dist"] = str(a["seq_dist"]).strip()
    if ("page_size" in out or "seq_dist" in out) and "kv_layout" not in out and "paged" not in variants:
        raise UsageError("--page-size and --seq-dist go with --kv-layout (or the paged variant)")
    return out


REPLACED_BY_BATCH_SPEC = ("batch", "seq", "kv_seq", "seq_dist")


def batch_spec_axis(a: dict[str, Any], modes: tuple[str, ...] | None) -> dict[str, Any]:
    """`--batch-spec` (one or more specs, core/batch_spec.py), each checked. It gives every request's
    query and KV lengths, so --batch, --seq, --kv-seq and --seq-dist given with it are a mistake, and
    so is a mode other than fwd (the batch is one forward call); without --variants it runs paged."""
    if "batch_spec" not in a:
        return {}
    from attnbench.core import batch_spec

    raw = a["batch_spec"] if isinstance(a["batch_spec"], (list, tuple)) else [a["batch_spec"]]
    specs = tuple(dict.fromkeys(s for v in raw for s in batch_spec.parse_list(v)))
    clash = [f"--{k.replace('_', '-')}" for k in REPLACED_BY_BATCH_SPEC if k in a]
    clash += ["--param seq_dist"] if "seq_dist" in (a.get("params") or {}) else []
    if clash:
        raise UsageError(f"--batch-spec gives each request's query and KV lengths: it replaces {', '.join(clash)} "
                         "(give one or the other)")
    if modes and set(modes) != {"fwd"}:
        raise UsageError(f"--batch-spec is one forward call (prefill chunks and decodes together): mode fwd only "
                         f"(got {', '.join(modes)})")
    return {"batch_spec": specs} | ({} if "variants" in a else {"variants": ("paged",)})
