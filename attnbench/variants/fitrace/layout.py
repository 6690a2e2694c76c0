"""The batch layout of a FlashInfer Trace attention op, read from its index tensors, and the gather
that packs its queries, keys and values sequence by sequence.

Every mapped op (gqa_paged, gqa_ragged, mla_paged, mla_ragged, dsa_paged; decode and prefill) is, per sequence
b, attention of its q_len_b queries over its kv_len_b keys, causal aligned bottom-right (query i
sees key j iff j <= i + kv_len_b - q_len_b; a decode step's one query sees every key), scaled by
sm_scale. `Layout` holds, per sequence, where its queries start and how many there are, and the
flat token slots of its keys:

    paged   slot = page_id * page_size + offset; the pages of b are kv_indices[kv_indptr[b]:kv_indptr[b+1]],
            every page full but the last, which holds kv_last_page_len[b] tokens (page_size 1, or no
            kv_last_page_len input: every page full)
    ragged  slots kv_indptr[b] .. kv_indptr[b+1] - 1 of k and v
    sparse  (dsa_paged) token t is a sequence of one query whose keys are the slots sparse_indices[t]
            (page_id * page_size + offset, as the definitions encode them), −1 entries left out
    queries decode: query b is sequence b's one query; prefill: rows qo_indptr[b] .. qo_indptr[b+1] - 1

A sequence with no keys (or no queries) gives output 0 and lse -inf, as the published references
do. `pack` returns q (total_q, Hq, Dqk), k (T, Hkv, Dqk), v (T, Hkv, Dv) with the T keys of every
sequence one after another (MLA: q = [q_nope | q_pe], k = [ckv | kpe] and v = ckv, one KV head).
The layout is computed in a backend's setup (like FlashInfer's plan()); the gather is in the timed
call, as a real kernel reads its keys through the page table in the call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    q_start: tuple[int, ...]  # first query row of each sequence
    q_len: tuple[int, ...]
    kv_len: tuple[int, ...]
    slots: torch.Tensor  # (T,) int64: the flat KV slots of every sequence's keys, in order
    paged: bool

    @property
    def batch(self) -> int:
        return len(self.q_len)

    @property
    def kv_start(self) -> tuple[int, ...]:
        out, at = [], 0
        for n in self.kv_len:
            out.append(at)
            at += n
        return tuple(out)

    def attended_pairs(self) -> int:
        """Σ_b of the (query, key) pairs causal bottom-right alignment lets each sequence see."""
        total = 0
        for nq, nk in zip(self.q_len, self.kv_len):
            d = nk - nq
            total += sum(max(0, min(nk, i + d + 1)) for i in range(nq)) if nq > 1 else (nk if nq else 0)
        return total


def _ints(t: torch.Tensor) -> list[int]:
    return [int(x) for x in t.detach().cpu().reshape(-1).tolist()]


def sparse_layout(inputs: dict) -> Layout:
    """dsa_paged: token t is a sequence of one query over its valid sparse_indices[t] (−1 = padding)."""
    idx = inputs["sparse_indices"].detach().cpu().long()
    valid = idx >= 0
    n = [int(x) for x in valid.sum(dim=1).tolist()]
    return Layout(tuple(range(len(n))), (1,) * len(n), tuple(n), idx[valid], paged=True)


def layout_of(op: str, stage: str, inputs: dict) -> Layout:
    """The layout of one call from its inputs (index tensors read on the CPU: setup, not timed)."""
    if op == "dsa_paged":
        return sparse_layout(inputs)
    kv_indptr = _ints(inputs["kv_indptr"])
    batch = len(kv_indptr) - 1
    if stage == "decode":
        q_start, q_len = list(range(batch)), [1] * batch
    else:
        qo = _ints(inputs["qo_indptr"])
        q_start, q_len = qo[:-1], [qo[i + 1] - qo[i] for i in range(batch)]
    if op.endswith("ragged"):
        kv_len = [kv_indptr[i + 1] - kv_indptr[i] for i in range(batch)]
        slots = torch.cat([torch.arange(kv_indptr[i], kv_indptr[i + 1]) for i in range(batch)] or [torch.zeros(0)])
        return Layout(tuple(q_start), tuple(q_len), tuple(kv_len), slots.long(), paged=False)
    cache = inputs["k_cache"] if "k_cache" in inputs else inputs["ckv_cache"]
    ps = cache.shape[1]
    indices = inputs["kv_indices"].detach().cpu().long()
    last = _ints(inputs["kv_last_page_len"]) if "kv_last_page_len" in inputs else None
    kv_len, parts = [], []
    for b in range(batch):
        pages = indices[kv_indptr[b]:kv_indptr[b + 1]]
        n = len(pages)
        tail = ps if last is None or n == 0 else last[b]
        length = 0 if n == 0 else (n - 1) * ps + tail
        slot = (pages[:, None] * ps + torch.arange(ps)[None, :]).reshape(-1)[:length]
        kv_len.append(length)
        parts.append(slot)
    slots = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    return Layout(tuple(q_start), tuple(q_len), tuple(kv_len), slots.long(), paged=True)


def packer(op: str, lay: Layout, device: torch.device):
    """pack(inputs) -> (q, k, v) packed as the module docstring says; the slots moved to `device` here."""
    slots = lay.slots.to(device)

    def flat(cache: torch.Tensor) -> torch.Tensor:
        return cache.reshape(cache.shape[0] * cache.shape[1], *cache.shape[2:])

    if op == "gqa_paged":
        return lambda x: (x["q"], flat(x["k_cache"]).index_select(0, slots), flat(x["v_cache"]).index_select(0, slots))
    if op in ("gqa_ragged", "mla_ragged"):
        if torch.equal(lay.slots, torch.arange(len(lay.slots))):  # already packed in order: no copy
            return lambda x: (x["q"], x["k"], x["v"])
        return lambda x: (x["q"], x["k"].index_select(0, slots), x["v"].index_select(0, slots))
    if op in ("mla_paged", "dsa_paged"):
        def pack_mla(x):
            ckv = flat(x["ckv_cache"]).index_select(0, slots)
            kpe = flat(x["kpe_cache"]).index_select(0, slots)
            q = torch.cat([x["q_nope"], x["q_pe"]], dim=-1)
            return q, torch.cat([ckv, kpe], dim=-1)[:, None], ckv[:, None]
        return pack_mla
    raise ValueError(f"no layout for op type {op!r}")


def causal_allowed(nq: int, nk: int, device: torch.device) -> torch.Tensor:
    """(nq, nk) bool: query i sees key j iff j <= i + nk - nq (bottom-right aligned)."""
    i = torch.arange(nq, device=device)[:, None]
    j = torch.arange(nk, device=device)[None, :]
    return j <= i + (nk - nq)
