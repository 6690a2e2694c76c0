"""Rich tables for the terminal: run results, the variant list."""

from __future__ import annotations

from rich.markup import escape

from attnbench.core.correctness import why_wrong
from attnbench.core.results import spread_text
from attnbench.core.units import fmt_bytes, fmt_joules, fmt_len, fmt_ms, short_kernel
from attnbench.report.fit import FittedTable


def _distributed_note(d: dict | None) -> str:
    """Compute/communication split, bytes sent (and whether they equal the formula) and scaling
    efficiency of a distributed (ring, ulysses, hybrid) case."""
    if not d:
        return ""
    eff = d.get("scaling_efficiency")
    split = f"compute {100 * d['compute_share']:.0f}% / " if d.get("compute_share") is not None else ""
    formula = {True: " (= formula)", False: " (≠ formula!)"}.get(d.get("bytes_match_model"), "")
    sent = f"{fmt_bytes(d.get('bytes_sent'))} sent{formula}"
    return f", {split}comm {100 * (d.get('comm_share') or 0):.2f}% of time, {sent}" + (
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
    "wrong": "bold red",  # ran, but its output is beyond its budget (core/correctness.py)
}


def kv_per_token(r: dict) -> str:
    """A decode record's KV cache read per step, per cached token of one sequence (one layer)."""
    if r.get("mode") != "decode" or not r.get("kv_cache_bytes"):
        return "-"
    return fmt_bytes(r["kv_cache_bytes"] / (r["batch"] * r["seq_k"]))


def kv_per_seq(r: dict) -> str:
    """A decode record's cache read per step for one sequence (one layer): it grows with L for a KV
    cache, stays flat for a recurrent state (gdn)."""
    if r.get("mode") != "decode" or not r.get("kv_cache_bytes"):
        return "-"
    return fmt_bytes(r["kv_cache_bytes"] / r["batch"])


def parts_note(r: dict) -> str:
    """' · indexer 40/85 % of FLOPs/bytes': the share of each part but the last (Variant.cost_parts)."""
    parts = r.get("cost_parts") or {}
    flops = sum(c["flops"] for c in parts.values())
    nbytes = sum(c["bytes"] for c in parts.values())
    if len(parts) < 2 or not flops or not nbytes:
        return ""
    shares = [f"{name} {100 * c['flops'] / flops:.0f}/{100 * c['bytes'] / nbytes:.0f} %"
              for name, c in list(parts.items())[:-1]]
    return " · " + ", ".join(shares) + " of FLOPs/bytes"


# The results table's columns: name accepted by --columns -> (header, justify).
COLUMNS = {
    "variant": ("variant", "left"),
    "backend": ("backend", "left"),
    "mode": ("mode", "left"),
    "shape": ("L q×k", "right"),
    "heads": ("H", "right"),
    "status": ("status", "left"),
    "ms": ("ms", "right"),
    "iqr": ("IQR %", "right"),
    "mem": ("mem", "right"),
    "tflops": ("TFLOP/s", "right"),
    "err": ("err", "right"),
    "kv": ("KV/token/layer", "right"),
    "kvseq": ("KV/seq", "right"),
    "energy": ("energy/call", "right"),
    "note": ("kernel / reason", "left"),
}
COLUMN_ALIASES = {"median": "ms", "latency": "ms", "memory": "mem", "L": "shape", "seq": "shape", "H": "heads",
                  "error": "err", "kernel": "note", "reason": "note", "spread": "iqr",
                  "kv_per_token": "kv", "kv_per_seq": "kvseq", "joules": "energy"}


def parse_columns(text: str | None) -> list[str] | None:
    """--columns a,b,c as column names (aliases resolved); None: every column."""
    if text is None:
        return None
    from attnbench.core.errors import UsageError, did_you_mean

    out = []
    for name in (s.strip() for s in text.split(",")):
        if not name:
            continue
        key = COLUMN_ALIASES.get(name, name)
        if key not in COLUMNS:
            raise UsageError(
                f"unknown column '{name}'{did_you_mean(name, [*COLUMNS, *COLUMN_ALIASES])}; accepted: "
                f"{', '.join(COLUMNS)} (aliases: {', '.join(f'{a}={b}' for a, b in COLUMN_ALIASES.items())})"
            )
        out.append(key)
    if not out:
        raise UsageError(f"--columns is empty; accepted: a comma-separated list of {', '.join(COLUMNS)}")
    return list(dict.fromkeys(out))


def reason_marks(records: list[dict]) -> dict[str, int]:
    """Reasons given by more than one record, numbered in order of first appearance: the table
    shows the number ([1]) and the footnotes the reason, once."""
    counts: dict[str, int] = {}
    for r in records:
        if r.get("reason"):
            counts[r["reason"]] = counts.get(r["reason"], 0) + 1
    repeated = [k for k, n in counts.items() if n > 1]
    return {k: i + 1 for i, k in enumerate(repeated)}


def _cells(r: dict, marks: dict[str, int]) -> dict[str, str]:
    lat = r.get("latency_ms") or {}
    err = r.get("error") or {}
    err_s = f"{err['rel_l2']:.0e}" if "rel_l2" in err else "-"
    err_s += "!" if err.get("rel_l2", 0) >= 1 else ""
    reason = r.get("reason")
    wrong = why_wrong(r)
    if wrong:  # ran, but its output is wrong: shown as such, its timing kept
        note = escape(f"wrong output: {wrong}")
    elif reason and reason in marks:
        note = f"[{marks[reason]}] (below)"
    else:
        note = escape(reason or short_kernel(r.get("kernel")) + _distributed_note(r.get("distributed"))
                      + parts_note(r))
    st = "wrong" if wrong else r["status"]
    return {
        "variant": r["variant"] + (f" ({layout})" if (layout := (r.get("params") or {}).get("kv_layout")) else ""),
        "backend": r["backend"],
        "mode": r["mode"],
        "shape": f"{fmt_len(r['seq_q'])}×{fmt_len(r['seq_k'])}",
        "heads": f"{r['heads']}" if r["heads"] == r["kv_heads"] else f"{r['heads']}/{r['kv_heads']}",
        "status": f"[{STATUS_STYLE.get(st, '')}]{st}[/]",
        "iqr": spread_text(lat),
        "mem": fmt_bytes(r.get("peak_mem_bytes")),
        "tflops": f"{r['tflops']:.3g}" if r.get("tflops") else "-",
        "err": err_s,
        "kv": kv_per_token(r),
        "kvseq": kv_per_seq(r),
        "energy": fmt_joules((r.get("energy") or {}).get("energy_j")),
        "ms": fmt_ms(lat.get("median")) + ("*" if (r.get("clocks") or {}).get("excluded") else ""),
        "note": note,
    }


# At a narrow width the results table's columns drop in this order; variant, backend, L, status,
# ms and the kernel / reason (a failure's why) stay.
DROP_ORDER = ("tflops", "energy", "kvseq", "kv", "heads", "mode", "iqr", "err", "mem")


def results_table(records: list[dict], title: str | None = "attnbench results", columns: list[str] | None = None
                  ) -> FittedTable:
    """One row per record; `columns` (parse_columns) chooses and orders the columns. A reason that
    several records share shows as a marker ([1]) explained once by results_footnotes. Laid out for
    the terminal's width when printed (report/fit.py): no number is split, columns drop in
    DROP_ORDER with a note where even whole words do not fit."""
    decode = any(r.get("mode") == "decode" for r in records)  # KV/token by default only where it means something
    energy = any((r.get("energy") or {}).get("energy_j") is not None for r in records)  # and energy where measured
    cols = columns or [c for c in COLUMNS if (c not in ("kv", "kvseq") or decode) and (c != "energy" or energy)]
    t = FittedTable(title, [COLUMNS[c][0] for c in cols], justify={i: COLUMNS[c][1] for i, c in enumerate(cols)},
                    keep=0, prose=frozenset(i for i, c in enumerate(cols) if c == "note"),
                    drop=tuple(cols.index(c) for c in DROP_ORDER if c in cols),
                    table_kw={"header_style": "bold", "show_lines": False, "pad_edge": False})
    marks = reason_marks(records)
    for r in records:
        cells = _cells(r, marks)
        t.add_row(*(cells[c] for c in cols))
    return t


def results_footnotes(records: list[dict]) -> list[str]:
    """What the results table's markers, spread and error columns mean for these records."""
    notes = []
    for reason, i in reason_marks(records).items():
        rs = [r for r in records if r.get("reason") == reason]
        who = list(dict.fromkeys(f"{r['variant']}/{r['backend']}" for r in rs))
        notes.append(f"[{i}] {rs[0]['status']} ({len(rs)} cases: {', '.join(who[:6])}"
                     f"{' …' if len(who) > 6 else ''}): {' '.join(reason.split())}")
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
    from attnbench.measure.contention import advice

    busy = advice(records)
    return notes + gpu_notes(records) + ragged_notes(records) + ([busy] if busy else [])


def gpu_notes(records: list[dict]) -> list[str]:
    """Throttled samples left out of medians (ms marked *), and what the energy column is."""
    notes = []
    cut = [r for r in records if (r.get("clocks") or {}).get("excluded")]
    if cut:
        worst = max(r["clocks"]["excluded_frac"] for r in cut)
        notes.append(f"ms*: samples timed while the GPU throttled left out of the median ({len(cut)} cases, up to "
                     f"{100 * worst:.0f} % of a case's samples; --keep-throttled keeps them).")
    measured = [r["energy"] for r in records if (r.get("energy") or {}).get("energy_j") is not None]
    if measured:
        notes.append(f"energy/call: the {measured[0]['source']} counter around ≥ {measured[0]['min_loop_s']:g} s of "
                     "back-to-back calls, the whole device or package (idle power included); per token in the "
                     "record (energy.energy_j_per_token).")
    return notes


def ragged_notes(records: list[dict]) -> list[str]:
    """One line per ragged batch (records with seq_lengths: variants/paged.py): its lengths and padding."""
    seen, mixed = {}, {}
    for r in records:
        if r.get("batch_spec"):
            mixed.setdefault(r["batch_spec"], r)
        elif r.get("seq_lengths"):
            seen.setdefault((r["batch"], r["seq_dist"]), r)
    return [mixed_note(r) for r in mixed.values()] + [
            f"ragged batch B={b} seq_dist {dist}: lengths {r['seq_lengths']['min']}..{r['seq_lengths']['max']}, "
            f"mean {r['seq_lengths']['mean']:.0f}, {r['seq_lengths']['total']:,} real tokens (FLOPs and bytes count "
            f"them only); padding_frac {r['padding_frac']:.3f} of the padded (B, Lmax) slots (sdpa computes them)"
            for (b, dist), r in seen.items()]


def mixed_note(r: dict) -> str:
    """A mixed batch's line (run --batch-spec): its requests, real tokens and the padded backends' waste."""
    parts = ", ".join(f"{g['count']}×(q {g['q_len']}, kv {g['kv_len']})" for g in r["composition"])
    return (f"mixed batch {r['batch_spec']}: {parts}; {r['q_tokens']:,} query and {r['seq_lengths']['total']:,} KV "
            f"tokens (FLOPs and bytes count them only); padding_frac {r['padding_frac']:.3f} of the padded "
            "(B, max q, max kv) rectangle (sdpa computes it)")


def run_baseline(records: list[dict], preferred: str = "mha:eager") -> str | None:
    """The baseline of run's scaling table, among the series that ran: `preferred` if it ran, else
    the first exact variant's eager backend (the materialised textbook attention) that ran; None
    (no baseline column) when neither did."""
    ok = [r for r in records if r.get("status") == "ok"]
    series = list(dict.fromkeys(f"{r['variant']}:{r['backend']}" for r in ok))
    if preferred in series:
        return preferred
    from attnbench.variants import registry

    for s in series:
        variant, _, backend = s.partition(":")
        if backend == "eager" and registry.get(variant).exact:
            return s
    return None


CSV_FIELDS = ("variant", "backend", "device", "mode", "batch", "heads", "kv_heads", "seq_q", "seq_k", "head_dim",
              "dtype", "causal", "status", "median_ms", "iqr_ms", "n", "peak_mem_bytes", "tflops", "gbps", "rel_l2",
              "kv_cache_bytes", "model", "layers", "kv_bytes_per_token", "kv_bytes_per_seq", "seq_dist",
              "padding_frac", "kernel", "reason", "wall_s", "case_id")


def csv_rows(records: list[dict]) -> list[dict]:
    """The records flattened for CSV (one row each, raw numbers in base units)."""
    rows = []
    for r in records:
        lat, err = r.get("latency_ms") or {}, r.get("error") or {}
        flat = {**r, "median_ms": lat.get("median"), "iqr_ms": lat.get("iqr"), "n": lat.get("n"),
                "rel_l2": err.get("rel_l2")}
        rows.append({k: flat.get(k) for k in CSV_FIELDS})
    return rows


def csv_text(records: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in csv_rows(records):
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def variants_table(rows: list[dict], why: dict[tuple[str, str], str] | None = None) -> FittedTable:
    """`why`: the text after an unavailable backend's ✗ (cli.reasons); none when not given. Laid out
    for the terminal's width (report/fit.py): at a narrow one the description, the parameters and
    the family drop, in that order, with a note."""
    heads = ["variant", "family", "time", "memory", "backends", "parameters (--param)", "description"]
    t = FittedTable("attnbench variants", heads, prose=frozenset({4, 5, 6}), drop=(6, 5, 1),
                    table_kw={"header_style": "bold"})
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
                "params": v.parameters(),
                "backends": [
                    {
                        "name": b.name,
                        "available": b.why_unavailable(device) is None,
                        "reason": b.why_unavailable(device),
                        "params": dict(b.params),
                        "complexity": dict(zip(("time", "memory"), v.claims(b.name))),
                    }
                    for b in v.backends
                    if not b.test_only
                ],
            }
        )
    return rows
