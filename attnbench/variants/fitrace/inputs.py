"""The inputs of one FlashInfer Trace workload, as tensors: `scalar` inputs as given (sm_scale),
`safetensors` inputs loaded from their blob, `random` ones drawn, and index tensors whose blob is
missing synthesized from the var axes, each with a note naming the blob that was not there.

Synthesized index tensors (seeded; the same workload gives the same tensors in every process):
    kv_indptr         monotone from 0, summing to num_kv_indices (paged) or total_kv (ragged): a
                      seeded random split over the sequences, each >= 1 where the total allows
    qo_indptr         (prefill) total_q split in proportion to each sequence's keys, so that a
                      sequence's queries do not outnumber its keys where the totals allow
    kv_indices        distinct page ids < num_pages (a seeded permutation)
    kv_last_page_len  in 1..page_size, at least what the sequence's queries need (0 for a sequence
                      with no pages)
    sparse_indices    (dsa_paged) per token min(topk, slots) distinct slots, the rest −1
Random tensors are N(0, 1) in the declared dtype (a gdn definition's inputs:
variants/fitrace/gdn.py). Honest limits: a synthesized batch has the
workload's totals, not its real per-sequence lengths (which only the blob holds); an input of
another integer kind with type `random` cannot be synthesized (a ValueError naming it).
"""

from __future__ import annotations

import random as pyrandom
from pathlib import Path

import torch

from attnbench.core.fitrace import Definition, SafetensorsInput, ScalarInput, Workload, blob_path

INDEX_INPUTS = ("kv_indptr", "qo_indptr", "kv_indices", "kv_last_page_len", "sparse_indices")


def split(total: int, parts: int, rng: pyrandom.Random, weights: list[int] | None = None) -> list[int]:
    """`total` as `parts` non-negative integers summing to it: in proportion to `weights` (never
    above a weight while the total allows), else each >= 1 where total >= parts and the rest spread
    at random."""
    if parts <= 0:
        return []
    if weights and sum(weights) > 0:  # in proportion, the rounding to those with the most room left
        share = [total * w // sum(weights) for w in weights]
        order = sorted(range(parts), key=lambda i: share[i] - weights[i])
        for i in range(total - sum(share)):
            share[order[i % parts]] += 1
        return share
    base = [1 if total >= parts else 0 for _ in range(parts)]
    left = total - sum(base)
    cuts = sorted(rng.randint(0, left) for _ in range(parts - 1))
    share = [b - a for a, b in zip([0, *cuts], [*cuts, left])]
    if total < parts:  # fewer units than sequences: the first `total` get one each
        return [1 if i < total else 0 for i in range(parts)]
    return [b + s for b, s in zip(base, share)]


def _indptr(lengths: list[int]) -> torch.Tensor:
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32)


def _shape(d: Definition, name: str, axes: dict[str, int]) -> tuple[int, ...]:
    return tuple(axes[a] for a in (d.inputs[name].shape or []))


def from_lengths(d: Definition, axes: dict[str, int], q_len: list[int], kv_len: list[int]) -> dict:
    """The index tensors of a batch of known lengths (run --definition without --workloads): pages
    in order 0, 1, ... (no blob, nothing drawn), the last page holding the remainder."""
    ps = axes.get("page_size", 1)
    paged = "kv_indices" in d.inputs
    units = [-(-n // ps) for n in kv_len] if paged else list(kv_len)
    out = {"kv_indptr": _indptr(units)}
    if "qo_indptr" in d.inputs:
        out["qo_indptr"] = _indptr(q_len)
    if paged:
        out["kv_indices"] = torch.arange(sum(units), dtype=torch.int32)
    if "kv_last_page_len" in d.inputs:
        last = torch.zeros(_shape(d, "kv_last_page_len", axes), dtype=torch.int32)
        last[: len(kv_len)] = torch.tensor([n - (u - 1) * ps if u else 0 for n, u in zip(kv_len, units)])
        out["kv_last_page_len"] = last
    return out


def synthesize_indices(d: Definition, axes: dict[str, int], have: dict, seed: int) -> dict[str, torch.Tensor]:
    """The index tensors of INDEX_INPUTS that `d` declares and `have` lacks, consistent with those
    it has and with the axes (see the module docstring)."""
    rng = pyrandom.Random(f"attnbench fitrace {d.name} {sorted(axes.items())} {seed}")
    out: dict[str, torch.Tensor] = {}
    want = [n for n in INDEX_INPUTS if n in d.inputs and n not in have]
    if not want:
        return out
    if want == ["sparse_indices"]:
        return {"sparse_indices": sparse_indices(axes, rng)}
    batch = axes.get("batch_size") if "len_indptr" not in axes else axes["len_indptr"] - 1
    paged = "kv_indices" in d.inputs
    ps = axes.get("page_size", 1)
    if "kv_indptr" in want:
        total = axes["num_kv_indices"] if paged else axes["total_kv"]
        out["kv_indptr"] = _indptr(split(total, batch, rng))
    kv_indptr = have.get("kv_indptr", out.get("kv_indptr")).long().tolist()
    units = [kv_indptr[i + 1] - kv_indptr[i] for i in range(batch)]
    if "qo_indptr" in want:
        out["qo_indptr"] = _indptr(split(axes["total_q"], batch, rng, weights=[u * ps for u in units]))
    if "qo_indptr" in d.inputs:
        qo = have.get("qo_indptr", out.get("qo_indptr")).long().tolist()
        q_len = [qo[i + 1] - qo[i] for i in range(batch)]
    else:
        q_len = [1] * batch
    if "kv_indices" in want:
        pages, need = axes["num_pages"], axes["num_kv_indices"]
        if need > pages:
            raise ValueError(f"cannot synthesize kv_indices: {need} distinct page ids asked of {pages} pages")
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        out["kv_indices"] = torch.randperm(pages, generator=g)[:need].to(torch.int32)
    if "kv_last_page_len" in want:
        last = torch.zeros(_shape(d, "kv_last_page_len", axes), dtype=torch.int32)
        for b, n in enumerate(units[: last.numel()]):
            if n:
                low = min(ps, max(1, q_len[b] - (n - 1) * ps))
                last[b] = rng.randint(low, ps)
        out["kv_last_page_len"] = last
    return out


def sparse_indices(axes: dict[str, int], rng: pyrandom.Random) -> torch.Tensor:
    """(num_tokens, topk) int32: per token min(topk, slots) distinct cache slots < num_pages·page_size
    (seeded), the rest −1 (the definitions' padding)."""
    slots = axes["num_pages"] * axes.get("page_size", 1)
    topk, tokens = axes["topk"], axes["num_tokens"]
    out = torch.full((tokens, topk), -1, dtype=torch.int32)
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    for t in range(tokens):
        n = min(topk, slots)
        out[t, :n] = torch.randperm(slots, generator=g)[:n].to(torch.int32)
    return out


def load_blob(path: Path, key: str) -> torch.Tensor:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if key not in tensors:
        raise ValueError(f"blob '{path}' has no tensor '{key}' (it has: {', '.join(sorted(tensors))})")
    return tensors[key]


def build_inputs(d: Definition, w: Workload, blobs: Path | None, device: torch.device, seed: int = 0,
                 lengths: str | None = None) -> tuple[dict, list[str]]:
    """({input name: tensor or Python scalar}, notes): every input of `d` for workload `w`, on `device`.
    `lengths`: "q1,q2,...;k1,k2,..." per-sequence query and key lengths when the batch is known
    (no workloads file), else the index tensors come from blobs or are synthesized."""
    axes = d.const_axes() | w.axes
    have: dict = {}
    if lengths and d.op_type != "gdn":
        q_s, k_s = lengths.split(";")
        have |= from_lengths(d, axes, [int(x) for x in q_s.split(",")], [int(x) for x in k_s.split(",")])
    notes: list[str] = []
    for name, spec in w.inputs.items():
        if name not in d.inputs:  # a source for an input the definition does not have: not used
            continue
        if isinstance(spec, ScalarInput):
            have[name] = spec.value
        elif isinstance(spec, SafetensorsInput):
            path = blob_path(spec, blobs)
            if path is None:
                where = "under --blobs" if blobs is not None else "(no --blobs given)"
                notes.append(f"{name}: blob {spec.path} not found {where}; synthesized from the axes")
                continue
            have[name] = load_blob(path, spec.tensor_key)
    if d.op_type == "gdn":  # its own inputs (gates, state, unit-length q and k): variants/fitrace/gdn.py
        from attnbench.variants.fitrace.gdn import SIDE_BUFFERS, fill_inputs

        have, more = fill_inputs(d, axes, have, seed, lengths)
        notes += more
        have |= dict.fromkeys(n for n in SIDE_BUFFERS if n in d.inputs)  # left out: None, dropped below
    have |= synthesize_indices(d, axes, have, seed)
    g = torch.Generator().manual_seed(seed)
    for name, spec in d.inputs.items():
        if name in have:
            continue
        if spec.shape is None:
            if name == "sm_scale":  # the definitions' documented default: 1/sqrt(head_dim)
                have[name] = float(_qk_dim(d, axes)) ** -0.5
                notes.append(f"{name}: no value given; used 1/sqrt({_qk_dim(d, axes)})")
                continue
            raise ValueError(f"scalar input '{name}' has no value in the workload")
        dtype = getattr(torch, spec.dtype, None)
        if dtype is None or not dtype.is_floating_point:
            raise ValueError(f"input '{name}' ({spec.dtype}) is random in the workload; only floating inputs "
                             "and the index tensors (" + ", ".join(INDEX_INPUTS) + ") can be synthesized")
        have[name] = torch.randn(_shape(d, name, axes), generator=g).to(dtype)
    out = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in have.items()}
    return {k: out[k] for k in d.inputs if out.get(k) is not None}, notes  # None: a side buffer left out


def _qk_dim(d: Definition, axes: dict[str, int]) -> int:
    """The query-key width of an attention op (head_dim, qk_dim, or ckv + kpe)."""
    for key in ("head_dim", "qk_dim"):
        if key in axes:
            return axes[key]
    return axes.get("head_dim_ckv", 0) + axes.get("head_dim_kpe", 0)
