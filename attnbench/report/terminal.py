"""Tables in the terminal (rich): `attnbench show`, and the scaling table `run` prints after a sweep.

Narrower than the report's tables: one table per scenario (named in its title), the fit and its
verdict in one cell, and the notes printed under the table.
"""

from __future__ import annotations

from rich.console import Console

from attnbench.report import analysis
from attnbench.report import tables as T
from attnbench.report.fit import FittedTable

SCALING = (("series", "series"), ("time_cell", "latency ∝ L^x [95% CI]"), ("mem_cell", "memory ∝ L^x [95% CI]"),
           ("base_cell", "vs baseline"), ("crossover_vs_baseline", "crossover vs baseline"), ("frontier", "frontier"))
# The columns of each table, most important first: at a narrow width the last drop first.
MEASUREMENTS = (("series", "series"), ("L_text", "L"), ("latency", "median ms"), ("iqr", "IQR %"),
                ("memory", "peak mem"), ("error_text", "rel. L2"), ("speedup_text", "speedup"),
                ("saving_text", "mem saving"), ("flops", "throughput"), ("roofline", "roof %"))
CROSSOVERS = (("a", "A"), ("b", "B"), ("latency", "latency"), ("memory", "peak memory"))
NOT_RUN = (("series", "series"), ("status", "status"), ("reason", "reason"))
PROSE = ("reason", "notes", "note")  # text columns: an over-long word (a path) may fold there


def rich_table(title: str, columns, rows: list[dict], drop: tuple[str, ...] = ()) -> FittedTable:
    """A table laid out for the terminal's width when printed (report/fit.py): no word is split,
    and columns drop, with a note, where even whole words do not fit: those named in `drop` first,
    in that order, then from the right."""
    prose = frozenset(i for i, (key, _) in enumerate(columns) if key in PROSE)
    keys = [key for key, _ in columns]
    order = tuple(keys.index(k) for k in drop if k in keys)
    order += tuple(i for i in range(len(keys) - 1, 0, -1) if i not in order)
    t = FittedTable(title, [head for _, head in columns], prose=prose, drop=order,
                    table_kw={"header_style": "bold", "title_style": "bold"})
    for r in rows:
        t.add_row(*(_esc(r.get(key)) if not key.endswith("_cell") else r[key] for key, _ in columns))
    return t


def _esc(v) -> str:
    return "-" if v is None else str(v).replace("[", "\\[")


def _cell(fit: str, claim: str, verdict: str, note: str = "") -> str:
    color = "green" if verdict == "agrees" else "yellow" if verdict == "differs" else "dim"
    side = f" ({note.split()[0]})" if verdict == "differs" and note else ""
    return f"{_esc(fit)}\nvs {_esc(claim)}: [{color}]{_esc(verdict)}{side}[/]"


def _by_scenario(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["scenario"], []).append(r)
    return out


def _print_scaling_rows(rows: list[dict], console: Console, baseline: str | None, columns=SCALING) -> None:
    for scn, group in _by_scenario(rows).items():
        cells = [{**r, "time_cell": _cell(r["time_fit"], r["time_claim"], r["time_verdict"], r["time_note"]),
                  "mem_cell": _cell(r["mem_fit"], r["memory_claim"], r["mem_verdict"], r["mem_note"]),
                  "base_cell": "baseline" if r["is_baseline"] else
                  f"speed {_esc(r['speedup_text'])}\nmemory {_esc(r['saving_text'])}"} for r in group]
        title = f"scaling with L · {scn}" + (f" · baseline {baseline}" if baseline else "")
        console.print(rich_table(title, columns, cells))
        for r in group:
            if r["notes"] != "-":
                console.print(f"  [dim]{_esc(r['series'])}: {_esc(r['notes'])}[/]")


def print_scaling(records: list[dict], console: Console, baseline: str | None = "mha:eager",
                  min_lengths: int = 3) -> bool:
    """Print the scaling table of the series with at least `min_lengths` lengths; False if none has.
    baseline None: no baseline column, and the title names none."""
    rows = [r for r in T.scaling_display(analysis.scaling_table(records, baseline or "-"))
            if r["n_time"] >= min_lengths]
    drop = ("crossover_vs_baseline",) + (("base_cell",) if baseline is None else ())
    if rows:
        _print_scaling_rows(rows, console, baseline, tuple(c for c in SCALING if c[0] not in drop))
    return bool(rows)


def print_wrong(wrong: list[tuple[dict, str]], console: Console) -> None:
    """The wrong records (core/correctness.py), timing kept, each with why it was left out of the
    fits, speedups and crossovers above."""
    from attnbench.report.wrong import COLUMNS, rows

    if wrong:
        console.print(rich_table("wrong output · left out of every fit, speedup and crossover", COLUMNS, rows(wrong)))


def show(records: list[dict], console: Console, baseline: str, wrong: list[tuple[dict, str]] = ()) -> None:
    """Every table of the report, in the terminal; `records` those a speed claim may use, `wrong`
    the (record, reason) left out as wrong (core/correctness.split), printed after them."""
    from attnbench.report.wrong import not_checked_line

    scaling = T.scaling_display(analysis.scaling_table(records, baseline))
    if not scaling:
        console.print("no case ran (status ok): nothing to fit")
    _print_scaling_rows(scaling, console, baseline)
    measured = T.measurement_display(T.measurements(records, baseline))
    for scn, rows in _by_scenario(measured).items():  # energy, throttling, timing mode: where measured
        extra = T.measurement_columns(rows)[len(T.MEASUREMENT_COLUMNS):]
        console.print(rich_table(f"measurements · {scn}", MEASUREMENTS + extra, rows))
    if note := T.gpu_note(measured):
        console.print(_esc(note), highlight=False)
    crossings = T.with_scenario(T.crossover_table(records, baseline))
    for scn, rows in _by_scenario(crossings).items():
        console.print(rich_table(f"crossovers · {scn}", CROSSOVERS, rows))
    if not crossings:
        console.print("crossovers: no pair that matters crosses within the swept lengths (pairs: two backends "
                      f"of one variant, approximation vs exact, or vs the baseline {_esc(baseline)})")
    for scn, rows in _by_scenario(T.with_scenario(T.not_run(records))).items():
        console.print(rich_table(f"not run or failed · {scn}", NOT_RUN, rows))
    print_wrong(list(wrong), console)
    if unchecked := not_checked_line(records):
        console.print(_esc(unchecked), highlight=False)
