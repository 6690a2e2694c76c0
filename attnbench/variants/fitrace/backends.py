"""attnbench's backends for the FlashInfer Trace attention ops, and the fp64 oracle.

An op backend is `build(op, stage, inputs, device) -> fn(inputs) -> (output, lse | None)`: setup
(the layout from the index tensors, masks, compilation) happens in build and is never timed; fn
takes every input of the definition by name and returns the definition's outputs: `output`
(total_q or batch, Hq, Dv) in the definition's output dtype, and `lse`, the base-2 log-sum-exp of
the scaled logits (total_q, Hq) in float32, or None when the backend does not produce it (then
`lse_reason` says why: it is never computed outside the call and passed off as the backend's).

    eager   per sequence, float32 scores materialised, exact softmax; lse native
    sdpa    torch SDPA on the padded batch (queries and keys gathered into (B, H, Lmax, D) with a
            padding-and-causal mask inside the call); SDPA returns no lse
    flex    compiled FlexAttention on the packed batch with a block mask that keeps each query to
            its own sequence's keys (causal bottom-right); on a GPU return_lse=True (natural log, ×
            log2 e), on the CPU no lse (the compiled CPU kernel cannot return it);
            the packed lengths are padded to FlexAttention's 128-key block inside the call (its
            CPU kernel is wrong on a ragged last block, backends/flex.py); power-of-two head dims only
    triton  gqa_paged decode: attnbench.kernels.paged_decode through the block table; mla_paged
            decode: attnbench.kernels.mla_decode per sequence; neither returns its lse

Honest limits: eager and the oracle share the layout (index arithmetic) with the backends, so a
wrong layout would fool them alike; the tests hold every backend to a definition's own reference
code written independently, and `--trust-reference` does the same with the published one.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from attnbench.variants.fitrace.layout import Layout, causal_allowed, layout_of, packer

LN2 = math.log(2.0)
FLEX_BLOCK = 128

OpFn = Callable[[dict], tuple]


def out_dtype(inputs: dict) -> torch.dtype:
    return (inputs.get("q") if "q" in inputs else inputs["q_nope"]).dtype


def attend(q, k, v, lay: Layout, scale: float, dtype: torch.dtype, out_as: torch.dtype):
    """Exact attention of packed q, k, v sequence by sequence, in `dtype`: (output in out_as, lse base 2)."""
    hq, hkv = q.shape[1], k.shape[1]
    out = torch.zeros(q.shape[0], hq, v.shape[-1], dtype=out_as, device=q.device)
    lse = torch.full((q.shape[0], hq), -math.inf, dtype=dtype if dtype == torch.float64 else torch.float32,
                     device=q.device)
    for qs, nq, ks, nk in zip(lay.q_start, lay.q_len, lay.kv_start, lay.kv_len):
        if nq == 0 or nk == 0:
            continue
        qb = q[qs:qs + nq].to(dtype)
        kb = k[ks:ks + nk].to(dtype).repeat_interleave(hq // hkv, dim=1)
        vb = v[ks:ks + nk].to(dtype).repeat_interleave(hq // hkv, dim=1)
        s = torch.einsum("qhd,khd->hqk", qb, kb) * scale
        s = s.masked_fill(~causal_allowed(nq, nk, q.device), -math.inf)
        lse[qs:qs + nq] = (torch.logsumexp(s, dim=-1) / LN2).transpose(0, 1)
        out[qs:qs + nq] = torch.einsum("hqk,khd->qhd", torch.softmax(s, dim=-1), vb).to(out_as)
    return out, lse


def oracle(op: str, stage: str, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """attnbench's own reference: every sequence attended in float64 from the same inputs
    (output and base-2 lse kept in float64, never rounded to the output dtype)."""
    lay = layout_of(op, stage, inputs)
    device = next(t.device for t in inputs.values() if isinstance(t, torch.Tensor))
    q, k, v = packer(op, lay, device)(inputs)
    with torch.no_grad():
        return attend(q, k, v, lay, float(inputs["sm_scale"]), torch.float64, torch.float64)


def build_eager(op: str, stage: str, inputs: dict, device: torch.device) -> OpFn:
    lay = layout_of(op, stage, inputs)
    pack, dt = packer(op, lay, device), out_dtype(inputs)

    def eager(x: dict):
        q, k, v = pack(x)
        return attend(q, k, v, lay, float(x["sm_scale"]), torch.float32, dt)

    return eager


def _padded_index(starts, lengths, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, width) row indices into a packed tensor (padding: row 0) and the (B, width) valid mask."""
    pos = torch.arange(width)[None, :]
    start = torch.tensor(starts)[:, None]
    valid = pos < torch.tensor(lengths)[:, None]
    return torch.where(valid, start + pos, 0).to(device), valid.to(device)


def build_sdpa(op: str, stage: str, inputs: dict, device: torch.device) -> OpFn:
    lay = layout_of(op, stage, inputs)
    pack, dt = packer(op, lay, device), out_dtype(inputs)
    lq, lk = max(lay.q_len, default=1) or 1, max(lay.kv_len, default=1) or 1
    qidx, qvalid = _padded_index(lay.q_start, lay.q_len, lq, device)
    kidx, kvalid = _padded_index(lay.kv_start, lay.kv_len, lk, device)
    nq, nk = torch.tensor(lay.q_len, device=device), torch.tensor(lay.kv_len, device=device)
    i, j = torch.arange(lq, device=device), torch.arange(lk, device=device)
    mask = kvalid[:, None, :] & (j[None, None, :] <= i[None, :, None] + (nk - nq)[:, None, None])
    mask[:, :, 0] |= ~mask.any(dim=-1)  # a row that sees nothing (padding, an empty sequence) sees key 0: no NaN
    empty = (nk == 0)[:, None].expand(-1, lq)[qvalid]  # rows of sequences without keys: output 0
    rows = qidx[qvalid]

    def sdpa(x: dict):
        q, k, v = pack(x)
        qp, kp, vp = (t[idx].transpose(1, 2) for t, idx in ((q, qidx), (k, kidx), (v, kidx)))
        o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask[:, None], scale=float(x["sm_scale"]),
                                           enable_gqa=qp.shape[1] != kp.shape[1])
        out = torch.zeros(q.shape[0], q.shape[1], v.shape[-1], dtype=dt, device=q.device)
        out[rows] = o.transpose(1, 2)[qvalid].to(dt).masked_fill(empty[:, None, None], 0)
        return out, None

    return sdpa


def _pad_rows(n: int) -> int:
    return -(-max(n, 1) // FLEX_BLOCK) * FLEX_BLOCK


def build_flex(op: str, stage: str, inputs: dict, device: torch.device) -> OpFn:
    from attnbench.variants.backends.flex import compiled_block_mask, compiled_flex

    lay = layout_of(op, stage, inputs)
    pack, dt = packer(op, lay, device), out_dtype(inputs)
    total_q, total_k = sum(lay.q_len), sum(lay.kv_len)
    lq, lk = _pad_rows(total_q), _pad_rows(total_k)

    def ids(lengths, width, pad):
        seq = torch.full((width,), pad, dtype=torch.int64)
        pos = torch.zeros(width, dtype=torch.int64)
        at = 0
        for b, n in enumerate(lengths):
            seq[at:at + n], pos[at:at + n] = b, torch.arange(n)
            at += n
        return seq.to(device), pos.to(device)

    sq, pq = ids(lay.q_len, lq, -1)
    sk, pk = ids(lay.kv_len, lk, -2)
    shift = torch.tensor([nk - nq for nq, nk in zip(lay.q_len, lay.kv_len)] + [0], device=device)[sq]

    def same_sequence_causal(b, h, q_idx, kv_idx):
        return (sq[q_idx] == sk[kv_idx]) & (pk[kv_idx] <= pq[q_idx] + shift[q_idx])

    with_lse = device.type == "cuda"  # the compiled CPU kernel has no return_lse (torch 2.13)
    block_mask = compiled_block_mask()(same_sequence_causal, 1, 1, lq, lk, device=str(device))
    flex = compiled_flex()

    def flex_fn(x: dict):
        q, k, v = pack(x)
        qf = F.pad(q, (0, 0, 0, 0, 0, lq - total_q)).transpose(0, 1)[None]
        kf, vf = (F.pad(t, (0, 0, 0, 0, 0, lk - total_k)).transpose(0, 1)[None] for t in (k, v))
        res = flex(qf, kf, vf, block_mask=block_mask, scale=float(x["sm_scale"]),
                   enable_gqa=qf.shape[1] != kf.shape[1], return_lse=with_lse)
        o, lse = res if with_lse else (res, None)
        out = o[0].transpose(0, 1)[:total_q].to(dt)
        return out, None if lse is None else (lse[0].transpose(0, 1)[:total_q] / LN2).float()

    return flex_fn
