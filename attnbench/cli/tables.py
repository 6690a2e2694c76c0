"""Rich tables for the terminal: run results, the variant list."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from attnbench.core.results import spread_text
from attnbench.core.units import fmt_bytes, fmt_len, fmt_ms, short_kernel


def _distributed_note(d: dict | None) -> str:
    """Communication share and scaling efficiency of a distributed (ring) case."""
    if not d:
        return ""
    eff = d.get("scaling_efficiency")
    return f", comm {100 * (d.get('comm_share') or 0):.2f}% of time, {fmt_bytes(d.get('bytes_sent'))} sent" + (
        f", efficiency {eff:.2f} vs 1 rank" if eff is not None else ""
    )


STATUS_STYLE = {
    "ok": "green",
    "skipped": "yellow",
    "unsupported": "dim",
    "unavailable": "dim",
    "oom": "red",
    "timeout": "red",
    "error": "bold red",
    "killed": "red",
}


def kv_per_token(r: dict) -> str:
    """A decode record's KV cache read per step, per cached token of one sequence (one layer)."""
    if r.get("mode") != "decode" or not r.get("kv_cache_bytes"):
        return "-"
    return fmt_bytes(r["kv_cache_bytes"] / (r["batch"] * r["seq_k"]))


def results_table(records: list[dict], title: str = "attnbench results") -> Table:
    t = Table(title=title, header_style="bold", show_lines=False, pad_edge=False)
    for col, just in (
        ("variant", "left"),
        ("backend", "left"),
        ("mode", "left"),
        ("L q×k", "right"),
        ("H", "right"),
        ("status", "left"),
        ("ms", "right"),
        ("IQR %", "right"),
        ("mem", "right"),
        ("TFLOP/s", "right"),
        ("err", "right"),
    ):
        t.add_column(col, justify=just, no_wrap=True)
    decode = any(r.get("mode") == "decode" for r in records)  # KV cache a decode step reads, per cached token
    if decode:
        t.add_column("KV/token", justify="right", no_wrap=True)
    t.add_column("kernel / reason", overflow="fold", min_width=16, ratio=1)
    for r in records:
        lat = r.get("latency_ms") or {}
        med = lat.get("median")
        iqr = spread_text(lat)
        err = r.get("error") or {}
        err_s = f"{err['rel_l2']:.0e}" if "rel_l2" in err else "-"
        err_s += "!" if err.get("rel_l2", 0) >= 1 else ""
        note = r.get("reason") or short_kernel(r.get("kernel")) + _distributed_note(r.get("distributed"))
        st = r["status"]
        heads = f"{r['heads']}" if r["heads"] == r["kv_heads"] else f"{r['heads']}/{r['kv_heads']}"
        t.add_row(
            r["variant"],
            r["backend"],
            r["mode"],
            f"{fmt_len(r['seq_q'])}×{fmt_len(r['seq_k'])}",
            heads,
            f"[{STATUS_STYLE.get(st, '')}]{st}[/]",
            fmt_ms(med),
            iqr,
            fmt_bytes(r.get("peak_mem_bytes")),
            f"{r['tflops']:.3g}" if r.get("tflops") else "-",
            err_s,
            *([kv_per_token(r)] if decode else []),
            escape(note[:160]),
        )
    return t


def results_footnotes(records: list[dict]) -> list[str]:
    """What the results table's spread and error columns mean for these records."""
    notes = []
    few = sum(1 for r in records if (r.get("latency_ms") or {}).get("n", 99) < 3)
    if few:
        notes.append(
            f"IQR %: n=1/n=2 where fewer than 3 samples fitted the time budget ({few} cases; no spread "
            f"shown); (! x%) marks IQR/median above 10 %."
        )
    errs = [r for r in records if "rel_l2" in (r.get("error") or {})]
    if errs:
        ent = [r["attn_entropy"] for r in errs if r.get("attn_entropy") is not None]
        inputs = sorted({r.get("inputs") or "randn" for r in errs})
        mean = f"; exact attention's mean normalised entropy {sum(ent) / len(ent):.2f} (1 = uniform)" if ent else ""
        notes.append(
            f"err: relative L2 error against the fp64 reference on {', '.join(inputs)} inputs{mean}; "
            f"≥ 1 (marked !) is worse than returning zeros."
        )
    return notes + ragged_notes(records)


def ragged_notes(records: list[dict]) -> list[str]:
    """One line per ragged batch (records with seq_lengths: variants/paged.py): its lengths and padding."""
    seen = {}
    for r in records:
        if r.get("seq_lengths"):
            seen.setdefault((r["batch"], r["seq_dist"]), r)
    return [f"ragged batch B={b} seq_dist {dist}: lengths {r['seq_lengths']['min']}..{r['seq_lengths']['max']}, "
            f"mean {r['seq_lengths']['mean']:.0f}, {r['seq_lengths']['total']:,} real tokens (FLOPs and bytes count "
            f"them only); padding_frac {r['padding_frac']:.3f} of the padded (B, Lmax) slots (sdpa computes them)"
            for (b, dist), r in seen.items()]


def variants_table(rows: list[dict], why: dict[tuple[str, str], str] | None = None) -> Table:
    """`why`: the text after an unavailable backend's ✗ (cli.reasons); none when not given."""
    t = Table(title="attnbench variants", header_style="bold")
    for col in ("variant", "family", "time", "memory", "backends", "parameters (--param)", "description"):
        t.add_column(col, overflow="fold")
    why = why or {}
    for r in rows:
        bs = "  ".join(
            (b["name"] if b["available"] else f"[dim]{b['name']}✗{escape(why.get((r['name'], b['name']), ''))}[/]")
            + _own_claims(r, b)
            for b in r["backends"]
        )
        params = " ".join(
            [f"{k}={v}" for k, v in r["params"].items()]
            + [f"{b['name']}: {k}={v}" for b in r["backends"] for k, v in b["params"].items()]
        )
        t.add_row(
            r["name"],
            r["family"],
            r["complexity"]["time"],
            r["complexity"]["memory"],
            bs,
            escape(params),
            escape(r["description"]),
        )
    return t


def _own_claims(variant_row: dict, b: dict) -> str:
    """' (memory O(L))' where a backend's claims differ from its variant's, else ''."""
    diff = [
        f"{k} {b['complexity'][k]}" for k in ("time", "memory") if b["complexity"][k] != variant_row["complexity"][k]
    ]
    return f" ({', '.join(diff)})" if diff else ""


def list_rows(device) -> list[dict]:
    from attnbench.variants import registry  # torch: only for `list`

    rows = []
    for v in registry.all_variants():
        rows.append(
            {
                "name": v.name,
                "family": v.family,
                "description": v.description,
                "complexity": {"time": v.time, "memory": v.memory},
                "params": dict(v.defaults),
                "backends": [
                    {
                        "name": b.name,
                        "available": b.available(device) is None,
                        "reason": b.available(device),
                        "params": dict(b.params),
                        "complexity": dict(zip(("time", "memory"), v.claims(b.name))),
                    }
                    for b in v.backends
                    if not b.test_only
                ],
            }
        )
    return rows
