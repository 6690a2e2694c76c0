"""`run --definition`: a FlashInfer Trace definition and its workloads as cases of the ordinary run
(isolated worker, records, resume, --dry-run, --json), and the definition's fields on their records.

One case per (workload, backend): the definition's const axes, the workload's var axes, its uuid in
the record as `workload`. Without --workloads, the var axes come from --batch, --seq, --kv-seq and
--seq-dist (one case per combination, `workload` null). Each case is a case of the catalogue
variant whose math the op is (gqa_* -> paged, mla_* -> mla, dsa_paged -> dsa, gdn -> gdn: their cost models
predict its time and memory from an averaged shape); its problem's params name the definition
file, the workload and where the blobs are, so the worker (run/trace_case.py) rebuilds the inputs.
Backends: variants/fitrace/ops.py, plus `reference` (the definition's own code, timed) with
--trust-reference.

Records gain `definition`, `definition_file`, `workload`, `workload_axes`, `workload_inputs` (here)
and `reference_check`, `workload_notes` (from the worker); docs/results-schema.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from attnbench.core.errors import UsageError, did_you_mean
from attnbench.core.fitrace import (
    Definition,
    SafetensorsInput,
    Workload,
    blob_path,
    check_mapped,
    load_definition,
    load_workloads,
)
from attnbench.core.problem import Problem
from attnbench.run.plan import Case
from attnbench.variants import registry
from attnbench.variants.fitrace import ops

VARIANT_OF = {"gqa_paged": "paged", "gqa_ragged": "paged", "mla_paged": "mla", "mla_ragged": "mla", "dsa_paged": "dsa",
              "gdn": "gdn"}
NOT_WITH = ("variants", "suite", "model", "heads", "kv_heads", "kv_groups", "head_dim", "causal", "modes",
            "kv_layout", "page_size", "params", "layers")


@dataclass(frozen=True)
class TraceRequest:
    definition: Path
    workloads: Path | None = None
    blobs: Path | None = None
    workload_ids: tuple[str, ...] = ()
    trust_reference: bool = False


@dataclass(frozen=True)
class TracePlan:
    """The cases of a definition and the fields its records carry."""

    cases: tuple[Case, ...]
    definition: Definition
    path: Path
    workloads: dict  # uuid ("" without a workloads file) -> Workload
    missing_blobs: str | None  # one line for stderr, or None

    def annotate(self, rec: dict) -> dict:
        params = rec.get("params") or {}
        if params.get("definition") != str(self.path):
            return rec
        uuid = params.get("workload")
        w = self.workloads.get(uuid or params.get("axes"))
        if rec.get("status") not in (None, "ok"):  # not measured: the plan's approximate lengths are not shown
            rec = {**rec, "seq_dist": None, "seq_lengths": None, "padding_frac": None}
        return {**rec, "definition": self.definition.name, "definition_file": str(self.path), "workload": uuid,
                "workload_axes": dict(w.axes) if w else None,
                "workload_inputs": {k: v.model_dump() for k, v in w.inputs.items()} if w and uuid else None,
                "reference_check": rec.get("reference_check"), "workload_notes": rec.get("workload_notes")}


def plan(req: TraceRequest, given: dict, device: torch.device) -> TracePlan:
    """The cases; `given`: the sweep options the user gave (cli/options.py shape_axes and backends)."""
    used = sorted(k for k in given if k in NOT_WITH)
    if used:
        raise UsageError(f"--definition sets the op's shape: --{used[0].replace('_', '-')} does not combine with it; "
                         "accepted with it: --workloads, --blobs, --workload, --trust-reference, --backends, "
                         "--batch, --seq, --kv-seq, --seq-dist")
    path = req.definition.resolve()
    d = load_definition(path)
    check_mapped(d, path)
    _check_dtype(d, given.get("dtype"))
    backends = _backends(given.get("backends"), req.trust_reference, d.op_type)
    if req.workloads is not None:
        ws = load_workloads(req.workloads.resolve(), d, list(req.workload_ids) or None)
        runs = [(w, None) for w in ws]
    else:
        if req.workload_ids:
            raise UsageError("--workload selects workloads of a --workloads file; give --workloads FILE")
        runs = synthetic_workloads(d, given)
    cases = []
    for w, lengths in runs:
        for b in backends:
            cases.append(_case(d, path, req, w, lengths, b, device, given.get("seq_dist")))
    table = {(w.uuid or _axes_key(w)): w for w, _ in runs}
    return TracePlan(tuple(cases), d, path, table, _missing_blobs([w for w, _ in runs], req.blobs))


def _check_dtype(d: Definition, dtype) -> None:
    if dtype is None:
        return
    want = next(iter(d.inputs.values())).dtype
    asked = [dtype] if isinstance(dtype, str) else list(dtype)
    if any(a != want for a in asked):
        raise UsageError(f"--dtype {','.join(asked)}: the definition '{d.name}' fixes its inputs' dtype "
                         f"({want}); accepted: {want} or no --dtype")


def _backends(given, trust: bool, op: str | None = None) -> list[str]:
    known = ops.names(op)
    if given is None:
        return [n for n in known if n != ops.REFERENCE or trust]
    names = list(dict.fromkeys(s.strip() for v in ([given] if isinstance(given, str) else given)
                               for s in str(v).split(",") if s.strip()))
    for n in names:
        if n not in known:
            raise UsageError(f"unknown backend '{n}'{did_you_mean(n, known)} for a definition; "
                             f"accepted: {', '.join(known)}")
    if ops.REFERENCE in names and not trust:
        raise UsageError("backend 'reference' runs the definition's own code: give --trust-reference to allow it")
    return names


def _axes_key(w: Workload) -> str:
    return json.dumps(w.axes, sort_keys=True)


def _case(d: Definition, path: Path, req: TraceRequest, w: Workload, lengths: str | None, backend: str,
          device: torch.device, given_dist: str | None = None) -> Case:
    a = d.const_axes() | w.axes
    if d.op_type == "gdn":
        return _gdn_case(d, w, backend, _mine(path, req, w, lengths, given_dist), device)
    paged = "kv_indices" in d.inputs
    ps = a.get("page_size", 1)
    if d.op_type == "dsa_paged":  # one query per token over its top-k rows
        batch, tokens = a["num_tokens"], a["num_tokens"] * min(a["topk"], a["num_pages"] * ps)
    else:
        batch = a["batch_size"] if "len_indptr" not in a else a["len_indptr"] - 1
        tokens = a["num_kv_indices"] * ps if paged else a["total_kv"]
    batch = max(1, batch)
    rows = a.get("total_q", batch)
    hq = a["num_qo_heads"]
    mine = _mine(path, req, w, lengths, given_dist)
    variant = VARIANT_OF[d.op_type]
    defaults = registry.get(variant).defaults  # the variant's cost model reads its own parameters
    if variant == "paged":
        hkv, dim = a["num_kv_heads"], a["head_dim"]
        params = {"kv_layout": "paged" if paged else "dense", "page_size": ps, "seq_dist": "fixed"}
    elif variant == "dsa":
        hkv, dim = 1, 128
        params = {"kv_lora_rank": a["head_dim_ckv"], "qk_rope_head_dim": a["head_dim_kpe"], "topk": a["topk"],
                  "kv_layout": "paged", "page_size": ps}
    else:
        hkv, dim = 1, a.get("vo_dim", a.get("head_dim_ckv"))
        rope = a.get("head_dim_kpe", 64)
        params = {"kv_lora_rank": a.get("head_dim_ckv", 512), "qk_rope_head_dim": rope,
                  "qk_nope_head_dim": a.get("qk_dim", 192) - 64 if "qk_dim" in a else 128,
                  "v_head_dim": dim, "form": "absorbed" if d.stage == "decode" else "naive"}
    params = defaults | params
    p = Problem(batch=batch, heads=hq, kv_heads=hkv, seq_q=1 if d.stage == "decode" else max(1, -(-rows // batch)),
                seq_k=max(1, -(-tokens // batch)), head_dim=dim, dtype=next(iter(d.inputs.values())).dtype,
                causal=True, mode="decode" if d.stage == "decode" else "fwd",
                params=tuple(sorted((params | mine).items())))
    return _with_backend(d, variant, backend, p, device)


def _mine(path: Path, req: TraceRequest, w: Workload, lengths: str | None, given_dist: str | None) -> dict:
    """The params that let the worker rebuild the case's inputs."""
    return {"definition": str(path), "workload": w.uuid or None, "trust_reference": req.trust_reference,
            "workloads": str(req.workloads.resolve()) if req.workloads else None,
            "blobs": str(req.blobs.resolve()) if req.blobs else None,
            "axes": None if w.uuid else _axes_key(w), "lengths": lengths,
            "seq_dist_given": None if w.uuid else (given_dist or "fixed")}


def _gdn_case(d: Definition, w: Workload, backend: str, mine: dict, device: torch.device) -> Case:
    """A gdn definition as a case of the `gdn` variant: heads = value heads, kv_heads = q/k heads, no
    L2 norm of q and k (the definitions take them as given)."""
    a = d.const_axes() | w.axes
    decode = d.stage == "decode"
    batch = max(1, a["len_cu_seqlens"] - 1 if d.stage == "prefill" else a["batch_size"])
    seq = a.get("seq_len", 1) if d.stage != "prefill" else max(1, -(-a["total_seq_len"] // batch))
    params = registry.get("gdn").defaults | {"qk_norm": "none"} | mine
    p = Problem(batch=batch, heads=a["num_v_heads"], kv_heads=a["num_q_heads"], seq_q=seq, seq_k=seq,
                head_dim=a["head_size"], dtype=d.inputs["q"].dtype, causal=True, mode="decode" if decode else "fwd",
                params=tuple(sorted(params.items())))
    return _with_backend(d, "gdn", backend, p, device)


def _with_backend(d: Definition, variant: str, backend: str, p: Problem, device: torch.device) -> Case:
    if backend == ops.REFERENCE:
        return Case(variant, backend, p)
    b = ops.backend(backend, d.op_type)
    if why := b.why_unsupported(d):
        return Case(variant, backend, p, "unsupported", why)
    if why := b.why_unavailable(device):
        return Case(variant, backend, p, "unavailable", why)
    return Case(variant, backend, p)


def synthetic_workloads(d: Definition, given: dict) -> list[tuple[Workload, str]]:
    """Without --workloads: one workload per (batch, seq, kv_seq) of the options, the per-sequence
    lengths from --seq-dist (variants/paged.py's grammar) as the `lengths` param."""
    from attnbench.variants.paged import seq_lengths

    def ints(key, default):
        v = given.get(key)
        if v is None:
            return default
        from attnbench.run.plan import make_sweep

        return list(getattr(make_sweep(**{key: v}), key))

    a = d.const_axes()
    ps = a.get("page_size", 1)
    out = []
    for b in ints("batch", [1]):
        for seq in ints("seq", [1024]):
            for kv in ints("kv_seq", [None]):
                kv_len = seq_lengths(given.get("seq_dist") or "fixed", b, kv or seq)
                q_len = [1] * b if d.stage == "decode" else ([seq] * b if kv else list(kv_len))
                pages = [-(-n // ps) for n in kv_len]
                axes = {"batch_size": b, "len_indptr": b + 1, "total_q": sum(q_len), "total_kv": sum(kv_len),
                        "num_kv_indices": sum(pages), "num_pages": sum(pages), "num_tokens": b,
                        "num_seqs": b, "len_cu_seqlens": b + 1, "total_seq_len": sum(kv_len),
                        "seq_len": seq, "pool_size": b}
                axes = {k: v for k, v in axes.items() if k in d.var_axes()}
                lengths = f"{','.join(map(str, q_len))};{','.join(map(str, kv_len))}"
                if d.op_type == "dsa_paged":  # the cache holds the longest length; the top-k are drawn from it
                    axes["num_pages"], lengths = -(-max(kv_len) // ps), None
                out.append((Workload(uuid="", axes=axes, inputs={n: {"type": "random"} for n in d.inputs}), lengths))
    return out


def _missing_blobs(ws: list[Workload], blobs: Path | None) -> str | None:
    """One line: how many workloads lack blobs, and which inputs were synthesized."""
    names: dict[str, None] = {}
    hit = 0
    for w in ws:
        gone = [n for n, s in w.inputs.items() if isinstance(s, SafetensorsInput) and blob_path(s, blobs) is None]
        if gone:
            hit += 1
            names |= dict.fromkeys(gone)
    if not hit:
        return None
    where = f"under --blobs {blobs}" if blobs is not None else "(no --blobs given)"
    return (f"{hit} of {len(ws)} workloads: blobs not found {where} for {', '.join(names)}; those inputs are "
            "synthesized from the axes (each record's workload_notes names its blobs)")
