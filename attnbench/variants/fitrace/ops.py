"""Which backends run which FlashInfer Trace op, and what they cannot do: the one table
(`BACKENDS`) that `run --definition` plans from and the worker builds from.

Every mapped attention op has eager, sdpa and flex; triton runs the decode ops our kernels fit (gqa_paged
decode through attnbench.kernels.paged_decode, mla_paged decode through attnbench.kernels.mla_decode
one sequence at a time). The `gdn` op (Gated DeltaNet) has its own table, GDN_BACKENDS: recurrent
and chunked (variants/fitrace/gdn.py). `why_unsupported` reads only the definition (plan time, no tensors);
`lse_reason` says why a backend returns no lse. The trusted reference runs as backend `reference`
(run/trace_case.py): it is not in this table because its code comes from the definition.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from attnbench.core.fitrace import Definition
from attnbench.variants.fitrace import gdn
from attnbench.variants.fitrace.backends import OpFn, build_eager, build_flex, build_sdpa, out_dtype
from attnbench.variants.fitrace.backends import oracle as oracle_attention
from attnbench.variants.fitrace.layout import layout_of

REFERENCE = "reference"  # the definition's own reference code as a timed backend (--trust-reference)


@dataclass(frozen=True)
class OpBackend:
    name: str
    build: Callable[[str, str, dict, torch.device], OpFn]
    description: str
    # (device, op type) -> why it returns no lse; None: it returns the base-2 lse itself
    lse_reason: Callable[[torch.device, str], str | None] = lambda dev, op: None
    compiles: bool = False
    why_unsupported: Callable[[Definition], str | None] = lambda d: None
    why_unavailable: Callable[[torch.device], str | None] = lambda dev: None


def _qk_v_dims(d: Definition) -> tuple[int, int]:
    a = d.const_axes()
    if "head_dim" in a:
        return a["head_dim"], a["head_dim"]
    if "qk_dim" in a:
        return a["qk_dim"], a["vo_dim"]
    return a["head_dim_ckv"] + a["head_dim_kpe"], a["head_dim_ckv"]


def _flex_unsupported(d: Definition) -> str | None:
    bad = sorted(x for x in set(_qk_v_dims(d)) if x < 16 or x & (x - 1))
    return f"FlexAttention needs power-of-two head dims >= 16 (this op has {bad[0]})" if bad else None


def _triton_unavailable(device: torch.device) -> str | None:
    from attnbench.kernels import triton_unavailable_reason

    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "no CUDA device (the Triton kernels run on NVIDIA GPUs, or interpreted with TRITON_INTERPRET=1)"
    return triton_unavailable_reason()


def _triton_unsupported(d: Definition) -> str | None:
    if d.stage != "decode" or d.op_type not in ("gqa_paged", "mla_paged", "dsa_paged"):
        return "attnbench's Triton kernels cover gqa_paged and mla_paged decode and dsa_paged only"
    qk, _ = _qk_v_dims(d)
    if d.op_type == "gqa_paged" and qk > 256:
        return f"the paged decode kernel supports head_dim <= 256 (got {qk})"
    return None


def _block_table(inputs: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(B, max_pages) int32 page table, (B,) int32 lengths and the longest length, from the indices."""
    lay = layout_of("gqa_paged", "decode", inputs)
    indptr = [int(x) for x in inputs["kv_indptr"].cpu().tolist()]
    indices = inputs["kv_indices"].cpu().to(torch.int32)
    width = max(1, max(indptr[i + 1] - indptr[i] for i in range(lay.batch)))
    table = torch.zeros(lay.batch, width, dtype=torch.int32)
    for b in range(lay.batch):
        table[b, : indptr[b + 1] - indptr[b]] = indices[indptr[b]:indptr[b + 1]]
    lengths = torch.tensor(lay.kv_len, dtype=torch.int32)
    return table.to(device), lengths.to(device), max(lay.kv_len, default=1)


def _triton_gqa(op: str, stage: str, inputs: dict, device: torch.device) -> OpFn:
    from attnbench.kernels.paged_decode import paged_decode

    table, lengths, longest = _block_table(inputs, device)

    def triton_paged(x: dict):
        o = paged_decode(x["q"][:, :, None], x["k_cache"], x["v_cache"], table, lengths, max_len=longest,
                         softmax_scale=float(x["sm_scale"]))
        return o[:, :, 0], None

    return triton_paged


def _triton_mla(op: str, stage: str, inputs: dict, device: torch.device) -> OpFn:
    from attnbench.kernels.mla_decode import mla_decode

    lay = layout_of(op, stage, inputs)
    slots = [lay.slots[s:s + n].to(device) for s, n in zip(lay.kv_start, lay.kv_len)]
    rank, dt = inputs["ckv_cache"].shape[-1], out_dtype(inputs)

    def triton_mla(x: dict):
        q = torch.cat([x["q_nope"], x["q_pe"]], dim=-1)  # (B, H, r + dr)
        ckv, kpe = (c.reshape(-1, c.shape[-1]) for c in (x["ckv_cache"], x["kpe_cache"]))
        out = torch.zeros(q.shape[0], q.shape[1], rank, dtype=dt, device=q.device)
        for b, idx in enumerate(slots):
            if len(idx):
                kv = torch.cat([ckv.index_select(0, idx), kpe.index_select(0, idx)], dim=-1)[None, None]
                out[b] = mla_decode(q[b][None, :, None], kv, rank=rank, softmax_scale=float(x["sm_scale"]))[0, :, 0]
        return out, None

    return triton_mla


def _triton_dsa(op: str, stage: str, inputs: dict, device: torch.device) -> OpFn:
    """dsa_decode over the flat latent cache [c_KV | k_pe] (slots, r + dr): the kernel's row layout,
    built here in setup from the definition's two caches (a serving engine stores it so; not timed)."""
    from attnbench.kernels.dsa_decode import dsa_decode

    ckv, kpe = inputs["ckv_cache"], inputs["kpe_cache"]
    rank = ckv.shape[-1]
    kv = torch.cat([ckv.reshape(-1, rank), kpe.reshape(-1, kpe.shape[-1])], dim=-1).contiguous()
    idx = inputs["sparse_indices"][:, None, :].contiguous()  # (T, Lq = 1, topk)

    def triton_dsa(x: dict):
        q = torch.cat([x["q_nope"], x["q_pe"]], dim=-1)[:, :, None]  # (T, H, 1, r + dr)
        out, lse = dsa_decode(q, kv, idx, rank=rank, softmax_scale=float(x["sm_scale"]), return_lse=True)
        return out[:, :, 0], lse[:, :, 0]

    return triton_dsa


def _triton(op: str, stage: str, inputs: dict, device: torch.device) -> OpFn:
    build = {"gqa_paged": _triton_gqa, "mla_paged": _triton_mla, "dsa_paged": _triton_dsa}[op]
    return build(op, stage, inputs, device)


NO_LSE_SDPA = "torch SDPA returns no log-sum-exp"
NO_LSE_FLEX_CPU = ("FlexAttention's compiled CPU kernel cannot return the lse (torch: return_lse is not supported "
                   "on CPU); on a GPU it does")
NO_LSE_TRITON = ("attnbench's paged_decode and mla_decode kernels merge their split log-sum-exps inside and do not "
                 "return them (dsa_decode does)")

BACKENDS: tuple[OpBackend, ...] = (
    OpBackend("eager", build_eager, "per sequence, float32 scores materialised, exact softmax (lse native)"),
    OpBackend("sdpa", build_sdpa, "torch SDPA on the padded batch with a padding-and-causal mask",
              lse_reason=lambda dev, op: NO_LSE_SDPA),
    OpBackend("flex", build_flex, "compiled FlexAttention on the packed batch, a same-sequence causal block mask",
              lse_reason=lambda dev, op: None if dev.type == "cuda" else NO_LSE_FLEX_CPU,
              compiles=True, why_unsupported=_flex_unsupported),
    OpBackend("triton", _triton, "attnbench's Triton decode kernels (paged_decode, mla_decode, dsa_decode)",
              lse_reason=lambda dev, op: None if op == "dsa_paged" else NO_LSE_TRITON,
              why_unsupported=_triton_unsupported,
              why_unavailable=_triton_unavailable),
)


NO_LSE_GDN = "a gdn op has no lse: its outputs are output and the state (checked instead)"

GDN_BACKENDS: tuple[OpBackend, ...] = (
    OpBackend("recurrent", gdn.build_recurrent, "the gated delta rule step by step in float32 (attnbench's gdn "
              "recurrent), sequences padded to the longest with tokens that change nothing",
              lse_reason=lambda dev, op: NO_LSE_GDN),
    OpBackend("chunked", gdn.build_chunked, "the WY/UT chunked form in float32 (attnbench's gdn chunked, chunks of "
              "64); a decode of one token is one recurrent step (the chunk is the step)",
              lse_reason=lambda dev, op: NO_LSE_GDN),
)


def table(op: str | None = None) -> tuple[OpBackend, ...]:
    """The backends of op type `op` (attention ops: BACKENDS; gdn: GDN_BACKENDS)."""
    return GDN_BACKENDS if op == "gdn" else BACKENDS


def backend(name: str, op: str | None = None) -> OpBackend:
    return next(b for b in table(op) if b.name == name)


def names(op: str | None = None) -> list[str]:
    return [b.name for b in table(op)] + [REFERENCE]


def oracle(op: str, stage: str, inputs: dict) -> tuple:
    """attnbench's float64 oracle of an op: (output, lse) for attention, (output, new_state) for gdn."""
    if op == "gdn":
        return gdn.oracle(stage, inputs)
    return oracle_attention(op, stage, inputs)
