"""`cp-plan`: the context-parallel scaling model (attnbench.distributed.cpmodel) for a model
preset over lengths and GPU counts — predicted, never measured. Every table, JSON row and chart
says so and lists its assumptions."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from attnbench.cli import options as O
from attnbench.core.errors import UsageError

out_console = Console(width=None if sys.stdout.isatty() else 200)  # piped: tables stay whole
DEFAULT_TFLOPS = 350.0  # assumed: FlashAttention-2 forward, bf16, D=128 on an H100 SXM (FlashAttention-3 paper's
# baseline curves, Shah et al. 2024, reach ~350 TFLOP/s at long sequences); replace with --attn-tflops or --rates



def cp_plan(
    model: O.Model = None,
    seq: O.Seq = None,
    gpus: Annotated[str, typer.Option(metavar="COUNTS", help="GPU counts, e.g. 8..1024 (doubles).")] = "8..1024",
    link: Annotated[str, typer.Option(help="Inter-node link preset: nvlink4 | nvlink5 | ib-ndr | ib-xdr | "
                                      "100gbe | 400gbe.")] = "ib-ndr",
    intra_link: Annotated[str, typer.Option("--intra-link", help="Link inside a node (a preset).")] = "nvlink4",
    link_bandwidth: Annotated[Optional[float], typer.Option(
        "--link-bandwidth", metavar="GB/S", help="Inter-node bandwidth per GPU, each way (overrides --link).")] = None,
    link_latency: Annotated[Optional[float], typer.Option(
        "--link-latency", metavar="US", help="Inter-node latency per message, µs (overrides --link).")] = None,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="GPUs sharing the intra link.")] = 8,
    attn_tflops: Annotated[float, typer.Option(
        "--attn-tflops", help="Single-GPU attention rate, TFLOP/s (default: an assumed H100 rate).")] = DEFAULT_TFLOPS,
    rates: Annotated[Optional[Path], typer.Option(
        metavar="FILE", help="Take the attention rate from a results file measured on the target GPU.")] = None,
    overlap: Annotated[float, typer.Option(help="Share of a ring step's compute that hides its send (0..1).")] = 1.0,
    gpu_memory: Annotated[float, typer.Option("--gpu-memory", metavar="GIB", help="Memory per GPU.")] = 80.0,
    batch: O.Batch = None,
    out: O.Out = None,
    force: O.Force = False,
    fmt: O.Format = None,
    json_out: O.Json = False,
) -> None:
    """PREDICTED context-parallel attention (ring, Ulysses, hybrid) for a model at each length and
    GPU count: latency of one forward attention layer, memory per GPU, communication share,
    scaling efficiency T1/(N·TN), infeasible strategies with the reason, and the best one.

    An α–β model (docs/distributed.md): nothing here is measured on the GPUs named. --model: one
    preset (default llama-3-70b); --seq default 128k..4m; --out: the efficiency chart (PNG);
    --format table | json.

    Examples:

      attnbench cp-plan --model llama-3-70b --seq 1m --gpus 8..1024 --out cp.png

      attnbench cp-plan --seq 128k..4m --link 400gbe --overlap 0.5
    """
    from attnbench.distributed.cpmodel import plan

    fmt = O.output_format(fmt, json_out)
    model = model or "llama-3-70b"
    if "," in model:
        raise UsageError(f"cp-plan takes one --model (got {model})")
    batch = O.one_int(batch, "--batch", 1)
    O.check_out(out, force)
    seq = seq or "128k..4m"
    shape, st, assumptions = _setting(model, batch, link, intra_link, link_bandwidth, link_latency, gpus_per_node,
                                      attn_tflops, rates, overlap, gpu_memory)
    lengths, counts = _axes(seq, gpus)
    grid = {(n, p): plan(shape, n, p, st) for n in lengths for p in counts}
    if fmt == "json":
        print(json.dumps(_as_json(grid, assumptions), indent=2))
    else:
        for n in lengths:
            out_console.print(_table(model, n, counts, grid))
        out_console.print("[dim]" + "PREDICTED, not measured. " + "; ".join(assumptions) + "[/]", highlight=False)
    if out is not None:
        _chart(out, model, lengths, counts, grid, assumptions)
        out_console.print(f"chart (predicted) → {out}")


def _axes(seq: str, gpus: str) -> tuple[list[int], list[int]]:
    from attnbench.run.plan import parse_seq

    return parse_seq(seq, "--seq"), parse_seq(gpus, "--gpus")


def _setting(model, batch, link, intra_link, bw, lat, per_node, tflops, rates, overlap, memory):
    from attnbench.core.models import preset
    from attnbench.core.problem import ITEMSIZE
    from attnbench.distributed.cpmodel import GIB, LINKS, Link, Setting, Shape

    for name in (link, intra_link):
        if name not in LINKS:
            raise UsageError(f"unknown link '{name}'; accepted: {', '.join(LINKS)}")
    checks = [(tflops > 0, "--attn-tflops must be > 0"), (0 <= overlap <= 1, "--overlap must be within 0..1"),
              (memory > 0, "--gpu-memory must be > 0"), (per_node >= 1, "--gpus-per-node must be at least 1"),
              (batch >= 1, "--batch must be at least 1"), (bw is None or bw > 0, "--link-bandwidth must be > 0"),
              (lat is None or lat >= 0, "--link-latency must be >= 0")]
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg)
    spec = preset(model)
    shape = Shape(batch, spec.heads, spec.kv_heads, spec.head_dim, ITEMSIZE[spec.dtype], spec.causal, spec.layers)
    inter = LINKS[link]
    if bw is not None or lat is not None:
        inter = Link("custom", bw * 1e9 if bw is not None else inter.bandwidth,
                     lat * 1e-6 if lat is not None else inter.latency, "--link-bandwidth/--link-latency")
    rate, rate_note = (_rate_from(rates, spec.causal) if rates else
                       (tflops * 1e12, f"attention {tflops:g} TFLOP/s per GPU"
                        + (" (assumed H100 FlashAttention-2 class)" if tflops == DEFAULT_TFLOPS else "")))
    st = Setting(rate=rate, intra=LINKS[intra_link], inter=inter, gpus_per_node=per_node, overlap=overlap,
                 memory=memory * GIB)
    notes = [f"{model}: Hq={spec.heads}, Hkv={spec.kv_heads}, D={spec.head_dim}, {spec.layers} layers, {spec.dtype}, "
             f"batch {batch}", rate_note,
             f"intra-node {st.intra.name} {st.intra.bandwidth / 1e9:g} GB/s, α={st.intra.latency * 1e6:g} µs",
             f"inter-node {inter.name} {inter.bandwidth / 1e9:g} GB/s, α={inter.latency * 1e6:g} µs, "
             f"{per_node} GPUs/node", f"overlap {overlap:g}",
             f"memory: KV cache of all layers + one layer's working set ≤ {memory:g} GiB (weights not counted)",
             "latency: one forward attention layer"]
    return shape, st, notes


def _rate_from(path: Path, causal: bool) -> tuple[float, str]:
    """The attention rate of the longest single-device case of a results file (same masking)."""
    if not path.exists():
        raise UsageError(f"--rates: '{path}' does not exist")
    recs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line) if line.strip() else {}
            if r.get("status") == "ok" and r.get("tflops") and not r.get("distributed") and r.get("causal") == causal:
                recs.append(r)
    if not recs:
        raise UsageError(f"--rates: '{path}' has no single-device ok record with TFLOP/s (causal={causal})")
    r = max(recs, key=lambda x: (x["seq_q"], x["tflops"]))
    return r["tflops"] * 1e12, (f"attention {r['tflops']:.3g} TFLOP/s measured ({r['variant']}/{r['backend']}, "
                                f"L={r['seq_q']}, {path.name})")


def _as_json(grid, assumptions) -> dict:
    rows = []
    for (n, p), preds in grid.items():
        for x in preds:
            rows.append({"seq": n, "gpus": p, "strategy": x.strategy, "ulysses": x.degrees.ulysses,
                         "ring": x.degrees.ring, "latency_s": x.latency, "memory_bytes": x.memory,
                         "comm_share": x.comm_share, "efficiency": x.efficiency, "feasible": x.reason is None,
                         "reason": x.reason, "predicted": True})
    return {"predicted": True, "assumptions": assumptions, "rows": rows}


def _table(model: str, seq: int, counts: list[int], grid) -> Table:
    from attnbench.core.units import fmt_bytes, fmt_len
    from attnbench.distributed.cpmodel import best

    t = Table(title=f"{model} at L={fmt_len(seq)}: PREDICTED per strategy (α–β model, not measured)")
    for col in ("GPUs", "strategy", "U×R", "latency/layer (ms)", "mem/GPU", "comm share", "efficiency", "feasible"):
        t.add_column(col)
    for p in counts:
        preds = grid[(seq, p)]
        top = best(preds)
        for x in preds:
            star = " ★ best" if x is top else ""
            t.add_row(str(p), x.strategy, f"{x.degrees.ulysses}×{x.degrees.ring}", _ms(x.latency * 1e3),
                      fmt_bytes(x.memory), f"{100 * x.comm_share:.0f}%", f"{x.efficiency:.2f}",
                      ("yes" + star) if x.reason is None else f"no: {x.reason}",
                      style="bold" if star else ("dim" if x.reason else None))
    return t


def _chart(path: Path, model: str, lengths: list[int], counts: list[int], grid, assumptions: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attnbench.core.safe_io import OutputError
    from attnbench.core.units import fmt_len

    if not path.parent.exists():
        raise UsageError(f"cannot write '{path}': directory '{path.parent}' does not exist")
    fig, ax = plt.subplots(figsize=(9, 6))
    styles = {"ring": "o-", "ulysses": "s--", "hybrid": "^-."}
    colours = plt.get_cmap("viridis")
    for i, n in enumerate(lengths):  # colour: the length; line and marker: the strategy
        for name, style in styles.items():
            pts = [(p, x.efficiency) for p in counts for x in grid[(n, p)] if x.strategy == name and x.reason is None]
            if pts:
                ax.plot(*zip(*pts), style, color=colours(i / max(1, len(lengths) - 1)),
                        label=f"{name}, L={fmt_len(n)}", alpha=0.85)
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel("GPUs (N)")
    ax.set_ylabel("scaling efficiency T1 / (N·TN), predicted")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{model}: PREDICTED context-parallel efficiency (α–β model, feasible strategies only)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    note = textwrap.fill("Assumptions: " + "; ".join(assumptions) + ". Infeasible points (memory, divisibility) "
                         "are left out; see the table.", 190)
    fig.text(0.01, 0.01, note, fontsize=6, va="bottom")
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise OutputError(f"cannot write '{path}': {e.strerror or e}") from e
    finally:
        plt.close(fig)


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 1000 else f"{v:,.0f}"
