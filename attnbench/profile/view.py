"""Rich rendering of a profile (profiling.Report): operator and kernel tables, the attention
kernels and their cross-check, the phase table, the memory summary and the files written."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from attnbench.profile.call import OpRow, Report
from attnbench.profile.memory import mib, op_label


def fmt_us(us: float) -> str:
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.2f} ms"
    return f"{us:.0f} µs"


def short_name(name: str, limit: int = 64) -> str:
    """Kernel names are C++ templates: keep the function, drop the template arguments."""
    name = op_label(name.removeprefix("void "))
    if len(name) > limit:
        cut = min((i for i in (name.find("<"), name.find("(")) if i > 0), default=limit)
        name = name[:min(cut, limit - 1)] + "…"
    return name


def op_table(rows: tuple[OpRow, ...], title: str, what: str, mem: bool) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    t.add_column(what, overflow="fold")
    for col in ("calls", "self", "total", "share"):
        t.add_column(col, justify="right")
    if mem:
        t.add_column("self mem", justify="right")
    for r in rows:
        cells = [short_name(r.name), str(r.calls), fmt_us(r.self_us), fmt_us(r.total_us), f"{100 * r.share:.1f}%"]
        if mem:
            cells.append(mib(r.self_mem) if r.self_mem else "")
        t.add_row(*cells)
    return t


def phase_table(r: Report, cuda: bool) -> Table:
    t = Table(title="time by named range (record_function)", title_justify="left", header_style="bold")
    for col, just in (("where", "left"), ("range", "left"), ("calls", "right"), ("CPU time", "right"),
                      ("per call", "right")) + ((("device time", "right"),) if cuda else ()) + (("share", "right"),):
        t.add_column(col, justify=just)
    for p in r.phases:
        share = "" if p.name.startswith("attnbench.") else f"{100 * p.share:.1f}% of attnbench.{p.where}"
        cells = [p.where, p.name, str(p.calls), fmt_us(p.cpu_us), fmt_us(p.cpu_us / max(p.calls, 1))]
        t.add_row(*cells, *((fmt_us(p.device_us),) if cuda else ()), share)
    return t


def render(r: Report, console: Console) -> None:
    p, cuda = r.case.problem, r.device == "cuda"
    console.print(f"[bold]profile[/] {r.case.variant}/{r.case.backend}  {p.short()}  {p.dtype} {p.mode} on "
                  f"{r.device}  ({r.warmup} warmup, {r.calls} profiled call{'s' * (r.calls != 1)}; "
                  f"case_id {r.case_id})", highlight=False)
    if cuda and r.kernels:
        console.print(op_table(r.kernels, "top kernels by self device time", "kernel", mem=False))
    console.print(op_table(r.ops, "top operators by self CPU time" + (" (host side)" if cuda else ""),
                           "operator", mem=True))
    names = ", ".join(short_name(n, 60) for n in r.attention[:3]) or "none recognised"
    console.print(f"[bold]attention ran as:[/] {r.path}  [dim]({names})[/]", highlight=False)
    word = {"agree": "[green]agrees[/]", "partly": "[yellow]partly agrees[/]", "disagree": "[red]disagrees[/]"}
    console.print(f"[bold]kernel field[/] that `run` records (run.case.detect_kernel): {r.detected} — "
                  f"{word[r.agreement]} with this profile", highlight=False)
    if r.phases:
        console.print(phase_table(r, cuda))
    render_memory(r, console)
    console.print(f"[bold]files:[/] trace {r.files['trace']} (open in https://ui.perfetto.dev or chrome://tracing), "
                  f"memory chart {r.files['memory_chart']}, summary {r.files['summary']}", highlight=False,
                  soft_wrap=True)  # paths stay whole, to be copied


def render_memory(r: Report, console: Console) -> None:
    m = r.memory
    ratio = f"{m.ratio:.2f}× the model" if m.ratio else "no model"
    console.print(f"[bold]memory:[/] peak {mib(m.peak)} at {m.peak_t_ms:.1f} ms (alive at start {mib(m.baseline)}, "
                  f"rise {mib(m.rise)}); model {mib(m.model)} → {ratio}  [dim]({m.source})[/]", highlight=False)
    if r.run_peak is not None:
        console.print(f"[bold]peak_mem_bytes[/] that `run` records ({r.run_peak_source}, the rise during one call): "
                      f"{mib(r.run_peak)} — this profile's rise: {mib(m.rise)}", highlight=False)
    if m.allocations:
        ranged = any(a.phase for a in m.allocations)
        t = Table(title="largest allocations (single allocations, by size)", title_justify="left",
                  header_style="bold")
        for col, just in (("bytes", "right"), ("×", "right"), ("operator → allocator", "left"),
                          ("input shapes", "left")) + ((("in range", "left"),) if ranged else ()):
            t.add_column(col, justify=just)
        for a in m.allocations:
            t.add_row(mib(a.bytes), str(a.count), short_name(a.op) + (f" → {a.via}" if a.via else ""), a.shapes,
                      *((a.phase or "",) if ranged else ()))
        console.print(t)
    if m.verdict:
        console.print(f"[bold yellow]verdict:[/] {m.verdict}", highlight=False)
