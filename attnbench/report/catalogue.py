"""What the report knows of a record's variant: read from its results file's header (`catalogue`,
written by `run` from variants.registry.describe), so reading results never imports torch.

Each record is given, under keys starting with "_" (which no table or CSV writes):
    _claims   (time, memory) complexity claims of its (variant, backend) pair
    _params   the variant's own parameter names (a backend's own, like flex's block_size, excluded)
    _exact    whether the variant computes exact softmax attention (the catalogue's `exact`)
Files written before headers carried a catalogue are described by the installed variants instead
(that imports torch, once, and only for such files).
"""

from __future__ import annotations


def annotate(header: dict, records: list[dict]) -> list[dict]:
    """The records with `_claims` and `_params` from the header's catalogue (see the module doc)."""
    cat = dict(header.get("catalogue") or {})
    missing = {r["variant"] for r in records} - cat.keys()
    if missing:
        cat |= _installed(missing)
    out = []
    for r in records:
        info = cat.get(r["variant"])
        if info is None:
            out.append({**r, "_claims": ("?", "?"), "_params": None, "_exact": None})
            continue
        own = (info.get("backends") or {}).get(r["backend"]) or {}
        out.append({**r, "_claims": (own.get("time") or info["time"], own.get("memory") or info["memory"]),
                    "_params": tuple(info.get("params") or ()), "_exact": info.get("exact")})
    return out


def _installed(names: set[str]) -> dict:
    """The catalogue of variants this attnbench has (for files without one in their header)."""
    from attnbench.variants import registry  # torch: only for results files older than the catalogue

    return registry.describe(names)
