"""`attnbench merge`: results files of shards or nodes joined under one header (no torch).

Files measured in different environments (the fingerprint: device, torch, threads, ...) are
refused unless allow_mixed_env; then both measurements of a case are kept, each record naming
the file it came from (`source`). The output is written under its lock and atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from attnbench.core import results
from attnbench.core.errors import UsageError
from attnbench.core.safe_io import hold_lock


def _env_key(header: dict) -> dict:
    env = header.get("env") or {}
    return results.fingerprint(env) | {"attnbench": env.get("attnbench")}


def merge(paths: list[str | Path], out: str | Path, allow_mixed_env: bool = False,
          command: list[str] | None = None) -> dict:
    """Concatenate results files under one header, written atomically to `out`.

    Returns {"records", "duplicates", "files"}. Raises UsageError when the environments differ
    (unless allow_mixed_env) and ResultsError for unreadable files."""
    if not paths:
        raise UsageError("merge needs at least one results file")
    loaded = [(Path(p), *results.read(p)) for p in paths]
    first_path, first, _ = loaded[0]
    for path, header, _ in loaded[1:]:
        a, b = _env_key(first), _env_key(header)
        diff = [f"{k}: {a[k]} vs {b[k]}" for k in a if a[k] != b[k]]
        if diff and not allow_mixed_env:
            raise UsageError(f"'{path}' was measured on another environment than '{first_path}' "
                             f"({'; '.join(diff)}); add --allow-env-mismatch to merge anyway")
    seen: set[tuple[str, str]] = set()
    kept: list[dict] = []
    for path, header, recs in loaded:
        env_key = json.dumps(_env_key(header), sort_keys=True, default=str)
        for r in recs:
            if (r["case_id"], env_key) not in seen:  # the same case measured in two environments: both kept
                seen.add((r["case_id"], env_key))
                kept.append({**r, "source": str(path)})
    catalogue = {}
    for _, h, _ in loaded:
        catalogue |= h.get("catalogue") or {}
    header = dict(first) | {"created": results.make_header([], {}, None)["created"], "catalogue": catalogue,
                            "command": command or first.get("command"),
                            "merged_from": [{"path": str(p), "records": len(recs), "env": _env_key(h)}
                                            for p, h, recs in loaded]}
    text = b"".join(results.json_line(x) for x in [header, *kept]).decode("utf-8")
    with hold_lock(Path(out)):
        results.atomic_write_text(out, text)
    total = sum(len(recs) for _, _, recs in loaded)
    return {"records": len(kept), "duplicates": total - len(kept), "files": len(loaded)}
