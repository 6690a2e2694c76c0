"""Rendering for model runs: the preset list, KV-cache tables, the dispatch table of `recommend`
(gate/recommend.py judges it) and the report's "For your model" section. No torch.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

from rich.console import Console

from attnbench.core.models import describe, max_context, presets, spec_max_context
from attnbench.core.units import fmt_bytes, fmt_len
from attnbench.report.analysis import FAILURES, first_line
from attnbench.report.model import Section, Table
from attnbench.report.terminal import rich_table

DEFAULT_BUDGET = 80 * 2**30  # "how long a context fits in 80 GB": a GPU's memory, when no budget is given
LEVEL_TEXT = "95 % CI"  # gate/recommend.LEVEL


def list_models(console: Console, as_json: bool) -> None:
    """`attnbench list --models`."""
    rows = [describe(s) for s in presets().values()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    shown = [{**r, "heads": f"{r['heads']}/{r['kv_heads']}", "causal": "causal" if r["causal"] else "bidirectional",
              "max_context": fmt_len(r["max_context"]), "kv": fmt_bytes(r["kv_bytes_first_token"]),
              "kv_max": fmt_bytes(r["kv_bytes_max_context"])} for r in rows]
    cols = (("model", "model"), ("heads", "Hq/Hkv"), ("head_dim", "D"), ("layers", "layers"), ("dtype", "dtype"),
            ("causal", "mask"), ("max_context", "max L"), ("attention", "attention (variant, params)"),
            ("kv", "KV/token, all layers"), ("kv_max", "KV at max L, all layers"), ("source", "source"))
    console.print(rich_table("model presets (attnbench run --model NAME)", cols, shown,
                             drop=("source", "kv_max", "causal", "dtype", "layers", "head_dim", "max_context")))


PLAN_MODEL_COLUMNS = (("name", "model"), ("dtype", "dtype"), ("layers", "layers"), ("groups", "layer groups (scale)"),
                      ("kv_token", "KV/token, all layers"), ("kv_seq", "KV/sequence, all layers, at each L"),
                      ("source", "source"))


def plan_models_table(models: list[dict[str, Any]]):
    """The models of a dry run (run/models.plan_entries): layer groups with their scale, KV cache."""
    rows = []
    for m in models:
        groups = "; ".join(f"{g['layers']}× {g['variant']}"
                           + (f"({', '.join(f'{k}={v}' for k, v in g['params'].items())})" if g["params"] else "")
                           + f" scale {g['scale']:.4g}" for g in m["groups"])
        seqs = ", ".join(f"{fmt_len(int(L))}: {fmt_bytes(b)}" for L, b in m["kv_bytes_per_seq"].items())
        rows.append({"name": m["name"], "dtype": m["dtype"], "layers": m["layers"], "groups": groups,
                     "kv_token": fmt_bytes(m["kv_bytes_per_token"]), "kv_seq": seqs,
                     "source": f"{m['source']} [read by {m['reader']}]"})
    return rich_table("the models (KV cache of one sequence, all layers, in the model's dtype)", PLAN_MODEL_COLUMNS,
                      rows)


KV_COLUMNS = (("model", "model"), ("layers", "layers"), ("dtype", "dtype"), ("L", "L"),
              ("kv_token", "KV/token, all layers"), ("kv_seq", "KV/sequence, all layers"))


def kv_rows(records: list[dict]) -> list[dict[str, Any]]:
    """One row per (model, layers, dtype, length, batch) that has the KV-cache arithmetic (the same
    for every layer group, mode and backend of a model)."""
    seen, out = set(), []
    for r in sorted(records, key=lambda r: (str(r.get("model")), r["dtype"], r.get("batch") or 1, r["seq_k"])):
        key = (r.get("model"), r.get("layers"), r["dtype"], r["seq_k"], r.get("batch"),
               None if r.get("model") else (r["variant"], r["heads"], r["kv_heads"], r["head_dim"]))
        if r.get("kv_bytes_per_seq") is None or key in seen:
            continue
        seen.add(key)
        out.append({"model": r.get("model") or f"{r['variant']} H{r['heads']}/{r['kv_heads']} D{r['head_dim']}",
                    "layers": r.get("layers"), "L": fmt_len(r["seq_k"]), "dtype": r["dtype"],
                    "kv_token": fmt_bytes(r.get("kv_bytes_per_token")), "kv_seq": fmt_bytes(r["kv_bytes_per_seq"])})
    return out


def kv_table(records: list[dict]):
    """The KV-cache arithmetic of a run's records (printed after `run --model`)."""
    return rich_table("KV cache (all the model's layers; KV/sequence at L, × batch)", KV_COLUMNS, kv_rows(records))


def context_lines(records: list[dict], budget: float) -> list[str]:
    """'How long a context fits': per model (and dtype), from its longest record with KV arithmetic."""
    best: dict[tuple, dict] = {}
    for r in records:
        if r.get("kv_bytes_per_seq") and r.get("kv_bytes_per_token") is not None:
            k = (r.get("model") or f"{r['variant']} ×{r.get('layers')} layers", r["dtype"], r.get("batch", 1))
            if k not in best or r["seq_k"] > best[k]["seq_k"]:
                best[k] = r
    lines = []
    for (name, dtype, batch), r in sorted(best.items(), key=lambda kv: str(kv[0])):
        per_seq = r["kv_bytes_per_seq"] / batch
        spec = _preset_of(r)
        if spec is not None:
            n, how = spec_max_context(spec, budget, dtype), f" (its own max context: {fmt_len(spec.max_context)})"
        else:
            n = max_context(r["kv_bytes_per_token"], per_seq, r["seq_k"], budget)
            how = f" (extrapolated from L={fmt_len(r['seq_k'])}: exact once L is past every sliding window)"
        fits = ("the cache stops growing (every layer windowed)" if n == math.inf else
                "not one token" if n is None else f"{n:,} tokens in one sequence")
        lines.append(f"{name} ({dtype}, {r.get('layers')} layers): KV cache {fmt_bytes(r['kv_bytes_per_token'])} "
                     f"per token, {fmt_bytes(per_seq)} per sequence at {fmt_len(r['seq_k'])}; "
                     f"{fmt_bytes(budget)} holds {fits}{how}; the KV cache alone (weights and activations not "
                     f"counted)")
    return lines


def _preset_of(r: dict):
    """The preset a record's model names (with the record's layers), or None (a config or no model)."""
    table = presets()
    spec = table.get(str(r.get("model")))
    if spec is None:
        return None
    return spec.with_layers(r["layers"]) if r.get("layers") else spec


def shape_text(shape: dict[str, Any]) -> str:
    s = (f"B{shape['batch']} H{shape['heads']}/{shape['kv_heads']} D{shape['head_dim']} {shape['dtype']}"
         + (" causal" if shape.get("causal") else ""))
    if shape.get("model"):
        params = ",".join(f"{k}={v}" for k, v in sorted((shape.get("params") or {}).items()))
        s = f"{shape['model']} {shape['variant']}" + (f"({params})" if params else "") + f" {s}"
    return s


def margin_text(p) -> str:
    if p.margin is None:
        return "-"
    ci = f" [{p.margin_ci[0]:.2f}, {p.margin_ci[1]:.2f}]" if p.margin_ci else ""
    return f"{p.margin:.2f}×{ci}" + (" tie" if p.tie else "")


def rows(picks: list) -> list[dict[str, str]]:
    """Text rows for tables (terminal and Markdown)."""
    return [{"shape": shape_text(p.shape), "mode": p.mode, "seq": fmt_len(p.seq), "backend": p.backend or "-",
             "runner_up": p.runner_up or "-", "margin": margin_text(p), "note": p.note} for p in picks]


COLUMNS = (("shape", "shape"), ("mode", "mode"), ("seq", "L"), ("backend", "best"), ("runner_up", "runner-up"),
           ("margin", f"margin ({LEVEL_TEXT})"), ("note", "note"))


def markdown(picks: list, cross: list[dict], context: list[str]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[k].replace("|", "\\|") for k, _ in COLUMNS) + " |" for r in rows(picks)]
    lines += [""] + [f"- {crossover_text(c)}" for c in cross] + [f"- {t}" for t in context]
    return "\n".join(lines).rstrip() + "\n"


def crossover_text(c: dict) -> str:
    return (f"{shape_text(c['shape'])} {c['mode']}: {c['from']} up to {fmt_len(c['below'])}, {c['to']} from "
            f"{fmt_len(c['at'])}" + (" (a tie on one side: within the noise)" if c["tie"] else ""))


def model_section(records: list[dict], recommender: Callable[[list[dict]], list] | None,
                  budget: float = DEFAULT_BUDGET) -> Section | None:
    """'For your model': recommended backend per length, KV cache vs context, the frontier (the
    longest length each backend ran). None when no record came from --model/--model-config."""
    mine = [r for r in records if r.get("model")]
    if not mine:
        return None
    sec = Section("For your model", [f"Models: {', '.join(sorted({r['model'] for r in mine}))}."])
    if recommender is not None:
        picks = recommender(mine)
        sec.tables.append(Table("recommended backend per length", COLUMNS, tuple(rows(picks)), None,
                                "Fastest qualifying backend (exact within the dtype's tolerance); margin = "
                                f"runner-up ÷ best median latency, {LEVEL_TEXT}; a tie when it includes 1."))
    else:
        sec.text.append("The recommendation per length: `attnbench recommend` on these results.")
    sec.tables.append(Table("KV cache vs context", KV_COLUMNS, tuple(kv_rows(mine))))
    sec.text += context_lines(mine, budget)
    front = frontier_rows(mine)
    if front:
        sec.tables.append(Table("frontier: the longest length each backend ran", FRONTIER_COLUMNS, tuple(front)))
    return sec


FRONTIER_COLUMNS = (("model", "model"), ("variant", "variant"), ("backend", "backend"), ("mode", "mode"),
                    ("L", "longest L run"), ("kv_seq", "KV/sequence there"), ("next", "next length"),
                    ("failed", "failed below it"))


def frontier_rows(records: list[dict]) -> list[dict[str, Any]]:
    """Per (model, variant, backend, mode): the longest length with status ok, the KV cache there,
    what happened at the next length tried (if any), and every shorter length that failed."""
    by: dict[tuple, list[dict]] = {}
    for r in records:
        by.setdefault((r["model"], r["variant"], r["backend"], r["mode"]), []).append(r)
    out = []
    for (model, variant, backend, mode), rs in sorted(by.items()):
        rs.sort(key=lambda r: r["seq_k"])
        ok = [r for r in rs if r["status"] == "ok"]
        if not ok:
            continue
        last = ok[-1]
        after = [r for r in rs if r["seq_k"] > last["seq_k"]]
        below = [f"{fmt_len(r['seq_k'])} ({r['status']}: {first_line(r.get('reason'))})" for r in rs
                 if r["seq_k"] < last["seq_k"] and r["status"] in FAILURES]
        out.append({"model": model, "variant": variant, "backend": backend, "mode": mode,
                    "L": fmt_len(last["seq_k"]), "kv_seq": fmt_bytes(last.get("kv_bytes_per_seq")),
                    "next": f"{fmt_len(after[0]['seq_k'])}: {after[0]['status']}" if after else "none tried",
                    "failed": "; ".join(below) or "none"})
    return out
