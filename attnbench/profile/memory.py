"""The memory side of a profile: a timeline of allocated bytes over the call, its chart, the
largest allocations and a verdict against the runner's memory model.

The timeline comes from the profiler's memory events, the ``[memory]`` instant events of the
exported chrome trace (``args["Total Allocated"]`` after each allocation or free). On the CPU
the profiler's counter covers only allocations made while it runs (its peak matches the rise of
VmHWM, see FACTS.md), so the curve is drawn as the inputs' bytes plus that rise. On a GPU the
counter is the caching allocator's ``memory_allocated``, so the curve is absolute (everything
alive on the device, inputs included).

The model is ``measure.cost.predict_peak_bytes`` (inputs plus one call's peak by backend kind:
output or gradients, 2.5 fp32 Lq×Lk tensors per head for backends that materialise scores, the
backend's declared workspace). A measured peak
beyond 1.5× (or below 1/1.5×) of it gets a verdict naming the largest allocations and the
operators that made them (from ``record_shapes`` and the self memory of each operator).

Each allocation is attributed to the innermost operator open when it happened (walking out of
plumbing such as aten::empty / aten::clone to the operator that asked), with that operator's
input shapes (``record_shapes``) and the named range around it.

Limits: allocations made by libraries outside torch's allocators (oneDNN scratch, BLAS
workspaces) are not seen; inside compiled code (torch.compile) the innermost event is the
compiled graph's range, not an operator.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from attnbench.measure.trace import CALL, is_range_name
from attnbench.run.plan import Case
from attnbench.run.worker import materializes, peak_model

FAR = 1.5  # a verdict when measured/model is above FAR or below 1/FAR ...
NEAR_BYTES = 2**20  # ... and they differ by at least this much (not for KiB-sized noise)
_ALLOCATORS = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty",
               "aten::new_empty_strided", "aten::resize_"}
# Operators that allocate on behalf of their caller (masked_fill clones, .to copies): the
# allocation is named after the caller when there is one.
_PLUMBING = _ALLOCATORS | {"aten::clone", "aten::contiguous", "aten::_to_copy", "aten::to", "aten::zeros",
                           "aten::zeros_like", "aten::new_zeros", "aten::full", "aten::ones"}


@dataclass(frozen=True)
class Allocation:
    op: str  # the operator (or range) that asked for the memory
    via: str | None  # the allocation primitive inside it (aten::empty_strided, ...), if any
    bytes: int  # one allocation
    count: int  # how many allocations of this size it made
    shapes: str  # the operator's input shapes (record_shapes)
    phase: str | None  # the named range it ran in (reformer.attend, ...), if any


@dataclass(frozen=True)
class Memory:
    t_ms: tuple[float, ...]  # time since the first call began
    bytes: tuple[int, ...]  # allocated bytes after each event (step curve)
    baseline: int  # bytes alive when the call began (inputs on the CPU; everything on a GPU)
    peak: int
    peak_t_ms: float
    source: str  # how the curve was obtained
    model: float  # measure.cost.predict_peak_bytes
    ratio: float | None  # peak / model
    spans: tuple[tuple[str, float, float], ...]  # named ranges (name, start ms, end ms)
    calls: tuple[tuple[float, float], ...]  # each attnbench.call (start ms, end ms)
    steps: tuple[tuple[float, int, int, str], ...]  # big allocations: (ms, bytes after, +bytes, operator)
    allocations: tuple[Allocation, ...]
    verdict: str | None

    @property
    def rise(self) -> int:
        return self.peak - self.baseline

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("t_ms"), d.pop("bytes"), d.pop("steps")
        return d | {"rise": self.rise, "points": len(self.t_ms)}


def mib(n: float) -> str:
    """Bytes for people: GiB, MiB, KiB or B."""
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if abs(n) >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**10:.0f} KiB" if abs(n) >= 2**10 else f"{n:.0f} B"


def op_label(name: str) -> str:
    """Operator names as people read them: the compiled graph without its hash."""
    return re.sub(r"(CompiledFxGraph) \w+", r"\1", name)


def trace_events(path: Path) -> list[dict]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data["traceEvents"] if isinstance(data, dict) else data


def analyse(trace: Path, case: Case, device: torch.device, inputs_bytes: int) -> Memory:
    """The timeline, the largest allocations and the verdict, all from the chrome trace."""
    evs = trace_events(trace)
    want = 1 if device.type == "cuda" else 0  # chrome trace "Device Type": 0 CPU, 1 CUDA
    mem = sorted((e for e in evs if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == want),
                 key=lambda e: e["ts"])
    ranges = [e for e in evs if e.get("cat") == "user_annotation" and e.get("ph") == "X"]
    calls = sorted((e["ts"], e["ts"] + e.get("dur", 0)) for e in ranges if e["name"] == CALL)
    t0 = calls[0][0] if calls else (mem[0]["ts"] if mem else 0.0)
    counter0 = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"] if mem else 0
    if device.type == "cuda":
        baseline, offset, source = counter0, 0, "cuda allocator (absolute, inputs included)"
    else:
        baseline, offset = inputs_bytes, inputs_bytes - counter0
        source = "cpu profiler counter + inputs (q, k, v)"
    t = [0.0] + [(e["ts"] - t0) / 1e3 for e in mem]
    y = [baseline] + [int(e["args"]["Total Allocated"] + offset) for e in mem]
    if calls:
        t.append((calls[-1][1] - t0) / 1e3)
        y.append(y[-1])
    i = max(range(len(y)), key=y.__getitem__)
    model = peak_model(case)
    ratio = y[i] / model if model > 0 else None
    owners = [attribute(chain) for chain in open_events(mem, evs)]
    allocations = largest_allocations(mem, owners)
    spans = tuple((e["name"], (e["ts"] - t0) / 1e3, (e["ts"] + e.get("dur", 0) - t0) / 1e3) for e in ranges
                  if e["name"] != CALL and is_range_name(e["name"]))
    return Memory(t_ms=tuple(t), bytes=tuple(y), baseline=baseline, peak=y[i], peak_t_ms=t[i], source=source,
                  model=model, ratio=ratio, spans=spans,
                  calls=tuple(((a - t0) / 1e3, (b - t0) / 1e3) for a, b in calls),
                  steps=big_steps(mem, owners, t0, y[1:len(mem) + 1], max(y[i] - baseline, 1)),
                  allocations=allocations, verdict=verdict(y[i], model, ratio, allocations, case))


def open_events(mem: list[dict], evs: list[dict]) -> list[list[dict]]:
    """For each memory event, the host events (operators and ranges) open at its time on its
    thread, outermost first: one sweep over starts, with a stack per thread."""
    host = [e for e in evs if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation")]
    items = sorted([(e["ts"], 0, -e.get("dur", 0), k) for k, e in enumerate(host)] +
                   [(m["ts"], 1, 0, k) for k, m in enumerate(mem)])
    stacks: dict = {}
    chains: list[list[dict]] = [[] for _ in mem]
    for ts, kind, _, k in items:
        e = host[k] if kind == 0 else mem[k]
        stack = stacks.setdefault(e.get("tid"), [])
        while stack and stack[-1]["ts"] + stack[-1].get("dur", 0) < ts:
            stack.pop()
        if kind == 0:
            stack.append(e)
        else:
            chains[k] = list(stack)
    return chains


def attribute(chain: list[dict]) -> tuple[str, str | None, str, str | None]:
    """(operator, allocation primitive inside it, its input shapes, named range) of an
    allocation whose open events are `chain` (outermost first)."""
    if not chain:
        return "(outside any operator)", None, "", None
    j = len(chain) - 1
    while chain[j]["name"] in _PLUMBING and j > 0 and not is_range_name(chain[j - 1]["name"]):
        j -= 1
    op = chain[j]
    via = chain[-1]["name"] if j != len(chain) - 1 else None
    phase = next((e["name"] for e in reversed(chain) if e["name"] != CALL and is_range_name(e["name"])), None)
    return op["name"], via, _shapes(op.get("args", {}).get("Input Dims")), phase


def big_steps(mem: list[dict], owners: list[tuple], t0: float, after: list[int], rise: int,
              most: int = 6) -> tuple[tuple[float, int, int, str], ...]:
    """The largest allocations (each >= 5% of the rise, at most `most`) and their operators,
    for the chart."""
    big = sorted((j for j, e in enumerate(mem) if e["args"]["Bytes"] >= 0.05 * rise),
                 key=lambda j: -mem[j]["args"]["Bytes"])[:most]
    return tuple(((mem[j]["ts"] - t0) / 1e3, after[j], int(mem[j]["args"]["Bytes"]), owners[j][0])
                 for j in sorted(big))


def largest_allocations(mem: list[dict], owners: list[tuple], top: int = 5) -> tuple[Allocation, ...]:
    """Single allocations by size with the operator that made them, grouped when the same
    operator with the same shapes allocates the same amount again."""
    groups: dict[tuple, int] = {}
    for e, owner in zip(mem, owners):
        nbytes = int(e["args"]["Bytes"])
        if nbytes > 0:
            key = (*owner, nbytes)
            groups[key] = groups.get(key, 0) + 1
    ranked = sorted(groups.items(), key=lambda kv: -kv[0][4])[:top]
    return tuple(Allocation(op, via, nbytes, count, shapes, phase)
                 for (op, via, shapes, phase, nbytes), count in ranked)


def _shapes(shapes, limit: int = 70) -> str:
    text = " ".join(str(list(s)) for s in (shapes or []) if s)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def verdict(peak: int, model: float, ratio: float | None, allocations, case: Case) -> str | None:
    """One paragraph when the measured peak is far from the model, else None."""
    if ratio is None or 1 / FAR <= ratio <= FAR or abs(peak - model) < NEAR_BYTES:
        return None
    groups: dict[tuple, list[Allocation]] = {}
    for a in allocations:  # one entry per operator, its allocation sizes listed
        groups.setdefault((op_label(a.op), a.via, a.phase), []).append(a)
    top = "; ".join(", ".join(mib(a.bytes) + (f" (×{a.count})" if a.count > 1 else "") for a in allocs) +
                    f" by {op}" + (f" (via {via})" if via else "") + (f" in {phase}" if phase else "") +
                    (f", inputs {allocs[0].shapes}" if allocs[0].shapes else "")
                    for (op, via, phase), allocs in list(groups.items())[:3]) or "no allocation was recorded"
    if ratio > FAR:
        return (f"measured peak {mib(peak)} is {ratio:.1f}× the memory model ({mib(model)}): the call holds more "
                f"than the model counts. Largest allocations: {top}.")
    held = ("2.5 fp32 Lq×Lk tensors per head" if materializes(case)
            else "inputs, output and the backend's declared workspace")
    return (f"measured peak {mib(peak)} is {1 / ratio:.1f}× below the memory model ({mib(model)}, which assumes "
            f"{held}): the model over-counts this backend. Largest allocations: {top}.")


# ---------------------------------------------------------------- the chart
def chart(m: Memory, path: Path, title: str) -> Path:
    """Allocated bytes over the call(s): a step curve, the peak marked, the model as a line,
    named ranges shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max(m.peak, m.model, 1)
    unit, scale = ("GiB", 2**30) if top >= 2**30 else ("MiB", 2**20) if top >= 2**20 else ("KiB", 2**10)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    ys = [b / scale for b in m.bytes]
    ax.step(m.t_ms, ys, where="post", color="#1f77b4", lw=1.6, label="allocated")
    ax.fill_between(m.t_ms, ys, step="post", alpha=0.15, color="#1f77b4")
    ax.axhline(m.model / scale, color="#d62728", ls="--", lw=1.2,
               label=f"model (predict_peak_bytes) {m.model / scale:.1f} {unit}")
    ax.axhline(m.baseline / scale, color="grey", ls=":", lw=1,
               label=f"alive at start {m.baseline / scale:.1f} {unit}")
    ax.plot([m.peak_t_ms], [m.peak / scale], "o", color="#d62728", ms=7, zorder=5)
    ratio = f", {m.ratio:.2f}× model" if m.ratio else ""
    ax.annotate(f"peak {m.peak / scale:.1f} {unit}{ratio}", (m.peak_t_ms, m.peak / scale),
                textcoords="offset points", xytext=(8, 6), fontsize=9, color="#d62728")
    _shade(ax, m)
    for t, after, grow, op in m.steps:  # which operator made each large step
        ax.annotate(f"+{grow / scale:.3g} {unit} {op.removeprefix('aten::')}", (t, after / scale), fontsize=7,
                    textcoords="offset points", xytext=(3, -10), color="#1f4e79")
    ax.set_ylim(0, top / scale * 1.22)
    ax.set_xlim(0, max(m.t_ms[-1], 1e-3) * 1.02)
    ax.set_xlabel("time since the call began (ms)")
    ax.set_ylabel(f"allocated ({unit})")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _shade(ax, m: Memory) -> None:
    colors = ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
    names = list(dict.fromkeys(name for name, _, _ in m.spans))
    for name, a, b in m.spans:
        ax.axvspan(a, b, color=colors[names.index(name) % len(colors)], alpha=0.12, lw=0)
    seen: set[str] = set()
    for name, a, b in m.spans:  # label each range once, at its first occurrence
        if name not in seen:
            seen.add(name)
            ax.text(a, 1.0, f" {name}", transform=ax.get_xaxis_transform(), fontsize=8, va="top",
                    color=colors[names.index(name) % len(colors)])
    for a, _ in m.calls[1:]:
        ax.axvline(a, color="grey", lw=0.6, alpha=0.6)
