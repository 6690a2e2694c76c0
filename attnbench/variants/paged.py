"""Paged KV cache and ragged batches: how serving engines run attention (vLLM's PagedAttention,
Kwon et al. 2023; FlashInfer). Variant `paged`, family "serving".

A batch of B sequences of lengths L_b (parameter `seq_dist`), GQA-shaped heads (default
Hkv = Hq/4), in two modes:

    decode  one query per sequence, at position L_b - 1: it sees the L_b keys of its own sequence
    fwd     prefill: L_b queries per sequence, causal over the sequence's own L_b keys

    out_b = softmax(Q_b K_bᵀ / √D [+ causal]) V_b      for each b, over its own K_b, V_b only

Time O(Σ_b L_b·D·Hq) per decode step, O(Σ_b L_b²·D·Hq / 2) per prefill; memory O(Σ_b L_b) for
the cache (what `flops`, `bytes` and `kv_cache_bytes` count: real tokens only, never padding).

Parameters
  batch_spec a mixed batch in vLLM's notation (core/batch_spec.py; `run --batch-spec`), e.g.
             2q2k_32q1s1k: prefill chunks and decodes in one call, queries packed (1, Hq, ΣQ, D),
             each request causal over its own KV; replaces seq_dist (variants/paged_mixed.py)
  seq_dist   "fixed": every L_b = --seq; "uniform:1k..16k": seeded uniform integer draws in the
             range (the same for every run; the first B draws do not depend on B); "1k,3k,8k": the
             list cycled over the batch. With uniform or a list --seq is not used.
  kv_layout  "paged": K and V live in a pool of pages, (P, page_size, Hkv, D) ("NHD", vLLM's and
             FlashInfer's default), P = Σ_b ⌈L_b / page_size⌉, addressed by a block table
             (B, max_pages) int32 whose page indices are shuffled (seeded), so the indirection is
             real; "dense": a padded (B, Hkv, Lmax, D) cache. Padded and slack slots hold random
             values, never zeros: a backend that reads them gives a wrong answer.
  page_size  tokens per page (16, vLLM's default).

The Problem: batch = B, seq_k = Lmax = max_b L_b (the padded length; --seq with "fixed"),
seq_q = 1 (decode) or Lmax (prefill, queries padded to Lmax; rows past L_b return 0), causal =
True in prefill (set by the variant). --kv-seq and --causal are not used.

Inputs (Variant.make_inputs): q (B, Hq, seq_q, D), k and v as the layout stores them (the pool, or
the padded cache). The block table and the lengths are functions of the problem (`layout`), built
again in each backend's setup: nothing but q, k, v is passed to the timed call.

Backends
  eager   gathers each sequence's pages and attends it exactly (a Python loop over B)
  sdpa    torch SDPA on the padded batch with a key-padding mask; with the paged layout the pages
          are first gathered into the padded (B, Hkv, Lmax, D) cache inside the call (SDPA has no
          block table): it computes over padding_frac of wasted slots
  flex    FlexAttention with a BlockMask over the page table: each sequence's KV blocks are its
          own pages (block = page_size), so other pages are never visited
  triton  attnbench.kernels.paged_decode: split-KV decode through the block table (decode only)
  With a batch_spec each backend's mixed-batch form is built instead (variants/paged_mixed.py).

Honest limits: the Triton kernel is checked under TRITON_INTERPRET=1 and compiled for sm_80/sm_90
without a GPU; it has not run on one here. flex with 16-token pages has not run on a GPU either
(its decode kernel narrows its tile to the page; prefill may need kernel_options). On this 2-core
CPU, loaded, one thread, B=16, uniform:1k..16k decode: flex over 16-token pages took ~2.7 s,
over 128-token pages ~0.8 s, over the padded cache (128-key blocks) ~0.26 s: FlexAttention's CPU
path pays per KV block, so small pages cost it more than the padding they save.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import replace

import torch
import torch.nn.functional as F

from attnbench.core import batch_spec
from attnbench.core.errors import UsageError
from attnbench.core.problem import Problem
from attnbench.variants import paged_mixed as mixed
from attnbench.variants.base import Backend, Fn, Reason, Variant
from attnbench.variants.shared import check_heads, fill_defaults, softmax_attention

KV_LAYOUTS = ("dense", "paged")
DEFAULTS = {"kv_layout": "paged", "page_size": 16, "seq_dist": "fixed"}
SEQ_DIST_ACCEPTED = ("fixed, uniform:A..B (seeded uniform draws in [A, B], e.g. uniform:1k..16k) or a list "
                     "cycled over the batch (e.g. 1k,3k,8k); lengths are integers >= 1 with optional k (×1024)")
_LENGTH = re.compile(r"^(\d+)([kKmM]?)$")


# ---------------------------------------------------------------- the length distribution
def _length(text: str, dist: str) -> int:
    m = _LENGTH.match(text.strip())
    n = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2}[m.group(2).lower()] if m else 0
    if n < 1:
        raise UsageError(f"bad seq_dist '{dist}': length '{text}'; accepted: {SEQ_DIST_ACCEPTED}")
    return n


def parse_seq_dist(text: str) -> tuple[str, tuple[int, ...]]:
    """("fixed", ()), ("uniform", (lo, hi)) or ("list", lengths); UsageError saying what is accepted."""
    t = str(text).strip()
    if t == "fixed":
        return "fixed", ()
    if t.startswith("uniform:"):
        lo_s, sep, hi_s = t[len("uniform:"):].partition("..")
        if not sep:
            raise UsageError(f"bad seq_dist '{text}': a uniform range needs both ends; accepted: {SEQ_DIST_ACCEPTED}")
        lo, hi = _length(lo_s, t), _length(hi_s, t)
        if hi < lo:
            raise UsageError(f"bad seq_dist '{text}': the end is below the start; accepted: {SEQ_DIST_ACCEPTED}")
        return "uniform", (lo, hi)
    if not t or ":" in t or ".." in t:
        raise UsageError(f"bad seq_dist '{text}'; accepted: {SEQ_DIST_ACCEPTED}")
    return "list", tuple(_length(x, t) for x in t.split(","))


def seq_lengths(dist: str, batch: int, fixed: int) -> list[int]:
    """The B lengths of a distribution; `fixed` is --seq (used by "fixed" only)."""
    kind, args = parse_seq_dist(dist)
    if kind == "fixed":
        return [fixed] * batch
    if kind == "list":
        return [args[i % len(args)] for i in range(batch)]
    rng = random.Random(f"attnbench seq_dist {args[0]}..{args[1]}")  # str seeds are stable across runs
    return [rng.randint(*args) for _ in range(batch)]


def check_params(kv_layout: object, page_size: object, seq_dist: object) -> None:
    """The three parameters, each with what is accepted (UsageError): CLI flags and suites."""
    if kv_layout not in KV_LAYOUTS:
        raise UsageError(f"bad kv_layout '{kv_layout}'; accepted: {', '.join(KV_LAYOUTS)}")
    if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size < 1:
        raise UsageError(f"bad page_size {page_size!r}; accepted: an integer >= 1 (16 is vLLM's default)")
    parse_seq_dist(seq_dist)


def flag_params(kv_layout: str | None, page_size: int | None, seq_dist: str | None) -> dict:
    """`run --kv-layout/--page-size/--seq-dist` as parameters, each checked (UsageError naming the flag)."""
    given = {"kv_layout": kv_layout, "page_size": page_size, "seq_dist": seq_dist}
    out = {k: v for k, v in given.items() if v is not None}
    try:
        check_params(**(DEFAULTS | out))
    except UsageError as e:
        name = next(k for k in out if f"bad {k}" in str(e))
        raise UsageError(f"--{name.replace('_', '-')}: {e}") from None
    return out


def lengths_of(p: Problem) -> list[int]:
    """The KV lengths of a resolved problem (seq_k = Lmax): its seq_dist's, or its batch spec's."""
    spec = batch_spec.of_problem(p)
    return spec.kv_lens if spec is not None else seq_lengths(p.param("seq_dist"), p.batch, p.seq_k)


# ---------------------------------------------------------------- the page table
@functools.lru_cache(maxsize=16)
def _table(lengths: tuple[int, ...], page_size: int) -> torch.Tensor:
    pages = [-(-n // page_size) for n in lengths]
    order = list(range(sum(pages)))
    random.Random(0).shuffle(order)  # the physical pages of a sequence are scattered over the pool
    table = torch.zeros(len(lengths), max(pages), dtype=torch.int32)
    at = 0
    for b, n in enumerate(pages):
        table[b, :n] = torch.tensor(order[at:at + n], dtype=torch.int32)
        at += n
    return table


def block_table(p: Problem) -> torch.Tensor:
    """(B, max_pages) int32 on the CPU: page j of sequence b is pool[table[b, j]]; entries past
    a sequence's ⌈L_b / page_size⌉ pages are 0 (never read: masked by the length)."""
    return _table(tuple(lengths_of(p)), p.param("page_size"))


def pool_pages(p: Problem) -> int:
    return sum(-(-n // p.param("page_size")) for n in lengths_of(p))


def make_inputs(p: Problem, device: torch.device, seed: int = 0):
    """q (B, Hq, seq_q, D); k, v padded (B, Hkv, Lmax, D) or pools (P, page_size, Hkv, D) holding the
    same token values (a seed gives the same attention in both layouts); slack slots are noise."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    b, hkv, d, lmax = p.batch, p.kv_heads, p.head_dim, p.seq_k
    q = torch.randn(b, p.heads, p.seq_q, d, generator=g) if p.param("batch_spec") is None else mixed.make_q(p, g)
    k, v = (torch.randn(b, hkv, lmax, d, generator=g) for _ in range(2))
    if p.param("kv_layout") == "paged":
        ps, table, pages = p.param("page_size"), block_table(p).long(), pool_pages(p)
        pools = [torch.randn(pages * ps, hkv, d, generator=g) for _ in range(2)]
        for i, n in enumerate(lengths_of(p)):
            t = torch.arange(n)
            slots = table[i, t // ps] * ps + t % ps
            for pool, dense in zip(pools, (k, v)):
                pool[slots] = dense[i, :, :n].transpose(0, 1)
        k, v = (pool.view(pages, ps, hkv, d) for pool in pools)
    return tuple(t.to(device=device, dtype=p.torch_dtype) for t in (q, k, v))


def check_kv(k: torch.Tensor, p: Problem) -> None:
    """k's shape is the layout's (a cheap check: --inputs peaked builds dense inputs)."""
    want = ((pool_pages(p), p.param("page_size"), p.kv_heads, p.head_dim) if p.param("kv_layout") == "paged"
            else (p.batch, p.kv_heads, p.seq_k, p.head_dim))
    if tuple(k.shape) != want:
        raise ValueError(f"paged ({p.param('kv_layout')} layout) takes its own inputs, k of shape {want}; got "
                         f"{tuple(k.shape)} (--inputs peaked builds dense inputs: use --param kv_layout=dense)")


def sequence_kv(kv: torch.Tensor, p: Problem, b: int, n: int, table: torch.Tensor) -> torch.Tensor:
    """(Hkv, n, D): the n tokens of sequence b, gathered from its pages (or sliced from the padded cache)."""
    if p.param("kv_layout") == "dense":
        return kv[b, :, :n]
    pages = table[b, : -(-n // p.param("page_size"))]
    return kv.index_select(0, pages).reshape(-1, p.kv_heads, p.head_dim)[:n].transpose(0, 1)


def ragged_attention(q, k, v, p: Problem, table: torch.Tensor | None = None) -> torch.Tensor:
    """Each sequence attends its own keys exactly (softmax_attention, materialised); padded query
    rows are 0. (B, Hq, seq_q, D) in and out; the variant's reference and the eager backend."""
    check_kv(k, p)
    table = block_table(p).to(k.device).long() if table is None else table
    if p.param("batch_spec") is not None:  # packed queries, each request over its own KV
        return mixed.attention(q, k, v, p, lambda t, b, n: sequence_kv(t, p, b, n, table))
    out = torch.zeros_like(q)
    for b, n in enumerate(lengths_of(p)):
        rows = 1 if p.mode == "decode" else n
        kb, vb = (sequence_kv(t, p, b, n, table)[None] for t in (k, v))
        out[b:b + 1, :, :rows] = softmax_attention(q[b:b + 1, :, :rows], kb, vb, causal=p.causal)
    return out


# ---------------------------------------------------------------- cost models (real tokens only)
def attended_pairs(p: Problem) -> int:
    """Σ_b of the (query, key) pairs of sequence b: L_b in decode, L_b(L_b + 1)/2 in prefill."""
    return sum(n if p.mode == "decode" else n * (n + 1) // 2 for n in lengths_of(p))


def flops(p: Problem) -> float:
    """4·Hq·D per attended pair (QKᵀ and PV), summed over the real pairs of every sequence."""
    if p.param("batch_spec") is not None:
        return mixed.flops(p)
    return 4.0 * p.heads * p.head_dim * attended_pairs(p)


def kv_cache_bytes(p: Problem) -> float:
    """The K and V of the real tokens: 2·Hkv·D·Σ_b L_b·itemsize (no padding, no page slack)."""
    return 2.0 * p.kv_heads * p.head_dim * sum(lengths_of(p)) * p.itemsize


def io_bytes(p: Problem) -> float:
    """Real queries read and outputs written (B rows in decode, Σ L_b in prefill) plus the real
    tokens' K and V; the block table (4·B·max_pages bytes) is left out."""
    if p.param("batch_spec") is not None:
        return mixed.io_bytes(p)
    rows = p.batch if p.mode == "decode" else sum(lengths_of(p))
    return 2.0 * p.heads * p.head_dim * rows * p.itemsize + kv_cache_bytes(p)


def ragged_fields(p: Problem) -> dict:
    """The record's length distribution for a problem with a `seq_dist` parameter, else {}:
    seq_dist, seq_lengths {min, mean, max, total} and padding_frac = padded slots ÷ B·Lmax; a mixed
    batch's composition instead (core/batch_spec.py composition_fields)."""
    if p.param("batch_spec") is not None:
        return batch_spec.composition_fields(p)
    if p.param("seq_dist") is None:
        return {}
    n = lengths_of(p)
    total = sum(n)
    return {"seq_dist": p.param("seq_dist"),
            "seq_lengths": {"min": min(n), "mean": total / len(n), "max": max(n), "total": total},
            "padding_frac": 1.0 - total / (len(n) * max(n))}


# ---------------------------------------------------------------- backends
def _eager_build(p: Problem, device: torch.device) -> Fn:
    table = block_table(p).to(device).long()

    def eager_gather(q, k, v):
        return ragged_attention(q, k, v, p, table)

    return eager_gather


def _sdpa_workspace(p: Problem) -> float:
    """A fused SDPA call beyond its output: the bool mask made additive (B, Lq, Lk), the padded-row
    product, and with the paged layout the pages gathered into a padded K and V."""
    if p.param("batch_spec") is not None:
        return mixed.sdpa_workspace(p)
    gathered = 2 * p.batch * p.kv_heads * p.seq_k * p.head_dim if p.param("kv_layout") == "paged" else 0
    rows = p.batch * p.heads * p.seq_q * p.head_dim if p.mode != "decode" else 0
    return float((p.batch * p.seq_q * p.seq_k + gathered + rows) * p.itemsize)


def _sdpa_flops(p: Problem) -> float:
    """What the padded call computes: 4·Hq·D per slot of the (B, Lq, Lk) rectangle, masked or not."""
    return 4.0 * p.batch * p.heads * p.seq_q * p.seq_k * p.head_dim


def _sdpa_build(p: Problem, device: torch.device) -> Fn:
    if p.param("batch_spec") is not None:
        return mixed.sdpa_build(p, device, block_table(p))
    lens = torch.tensor(lengths_of(p), device=device)
    j = torch.arange(p.seq_k, device=device)
    mask = (j[None, :] < lens[:, None])[:, None, None, :]  # (B, 1, 1, Lmax): the key-padding mask
    rows = None
    if p.mode != "decode":
        i = torch.arange(p.seq_q, device=device)
        mask = mask & (j[None, :] <= i[:, None])  # (B, 1, Lq, Lmax); a padded row sees its keys, then is zeroed
        rows = (i[None, :] < lens[:, None])[:, None, :, None]
    table = block_table(p).to(device).long().flatten()
    gqa, shape = p.groups > 1, (p.batch, -1, p.kv_heads, p.head_dim)

    def padded(t):  # the pages gathered into the padded cache: a copy SDPA needs
        return t.index_select(0, table).reshape(shape)[:, :p.seq_k].transpose(1, 2)

    def sdpa_padded(q, k, v):
        if p.param("kv_layout") == "paged":
            k, v = padded(k), padded(v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return out if rows is None else out * rows

    return sdpa_padded


def _flex_supports(p: Problem, device: torch.device) -> Reason:
    ps = p.param("page_size")
    if p.param("batch_spec") is not None and (why := mixed.flex_why_unsupported(p)):
        return why
    if p.param("kv_layout") == "paged" and (ps < 16 or ps & (ps - 1)):
        return f"flex's KV blocks are the pages: page_size must be a power of two >= 16 (got {ps})"
    if p.head_dim < 16 or p.head_dim & (p.head_dim - 1):
        return f"FlexAttention needs a power-of-two head_dim >= 16 (got {p.head_dim})"
    return None


def _flex_build(p: Problem, device: torch.device) -> Fn:
    from attnbench.variants.backends.flex import BLOCK_SIZE, compiled_flex
    from attnbench.variants.paged_flex import ragged_block_mask

    if p.param("batch_spec") is not None:
        return mixed.flex_build(p, device, block_table(p), pool_pages(p))
    lens = torch.tensor(lengths_of(p), device=device)
    paged, ps = p.param("kv_layout") == "paged", p.param("page_size")
    if paged:  # one KV block per page; the pool seen as one flat sequence (a view in the call)
        block, table, kv_len = ps, block_table(p).long(), pool_pages(p) * ps
    else:
        block, kv_len = BLOCK_SIZE, p.seq_k
        table = torch.arange(-(-kv_len // block)).expand(p.batch, -1)
    mask = ragged_block_mask(lens, table.to(device), block, p.seq_q, kv_len, p.causal, paged)
    attend, gqa, flat = compiled_flex(), p.groups > 1, (1, kv_len, p.kv_heads, p.head_dim)

    def flex_paged(q, k, v):
        if paged:
            k, v = k.view(flat).transpose(1, 2), v.view(flat).transpose(1, 2)
        return attend(q, k, v, block_mask=mask, enable_gqa=gqa)

    return flex_paged


def _triton_supports(p: Problem, device: torch.device) -> Reason:
    if p.param("batch_spec") is not None:
        return mixed.triton_why_unsupported(p) or _triton_head_dim(p)
    if p.mode != "decode":
        return "the Triton paged kernel is decode-only (one query per sequence); prefill: eager, sdpa, flex"
    return _triton_head_dim(p)


def _triton_head_dim(p: Problem) -> Reason:
    return f"the Triton paged kernel supports head_dim <= 256 (got {p.head_dim})" if p.head_dim > 256 else None


def _triton_build(p: Problem, device: torch.device) -> Fn:
    from attnbench.kernels.paged_decode import dense_as_pages, paged_decode

    if p.param("batch_spec") is not None:
        return mixed.triton_build(p, device, block_table(p))
    lens = torch.tensor(lengths_of(p), device=device, dtype=torch.int32)
    max_len = max(lengths_of(p))
    dense = p.param("kv_layout") == "dense"
    table = (torch.arange(p.batch, device=device, dtype=torch.int32)[:, None] if dense
             else block_table(p).to(device))

    def triton_paged(q, k, v):
        if dense:  # the padded cache read in place as B pages of Lmax slots
            k, v = dense_as_pages(k)[0], dense_as_pages(v)[0]
        return paged_decode(q, k, v, table, lens, max_len=max_len)

    return triton_paged


def _backends() -> tuple[Backend, ...]:
    from attnbench.variants.backends import triton as triton_backends
    from attnbench.variants.backends.flex import flex_backend

    return (
        Backend("eager", _eager_build, "gathers each sequence's pages, exact materialised attention per sequence",
                materializes=True),
        Backend("sdpa", _sdpa_build, "torch SDPA on the padded batch with a key-padding mask (paged: pages "
                "gathered into the padded cache inside the call)", workspace=_sdpa_workspace, work_flops=_sdpa_flops),
        Backend("flex", _flex_build, "compiled FlexAttention, a BlockMask over the page table (block = page)",
                compiles=True,
                why_unavailable=flex_backend().why_unavailable, why_unsupported=_flex_supports, memory="O(L)"),
        Backend("triton", _triton_build, "attnbench's Triton paged split-KV decode (fp32: TF32 dots)",
                why_unavailable=triton_backends.flash_backend().why_unavailable, why_unsupported=_triton_supports,
                tf32_dots=True, memory="O(L)"),
    )


def _resolve(p: Problem) -> Problem:
    if p.param("batch_spec") is not None:
        p = mixed.resolve(p, {k: x for k, x in DEFAULTS.items() if k != "seq_dist"})
        check_params(p.param("kv_layout"), p.param("page_size"), "fixed")
        return p
    p = fill_defaults(p, kv_heads=max(1, p.heads // 4), **DEFAULTS)
    check_params(p.param("kv_layout"), p.param("page_size"), p.param("seq_dist"))
    base = p.seq_k if p.mode == "decode" else p.seq_q
    lmax = max(seq_lengths(p.param("seq_dist"), p.batch, base))
    return replace(p, seq_q=1 if p.mode == "decode" else lmax, seq_k=lmax, causal=p.mode != "decode")


PAGED = Variant(
    name="paged", family="serving", oracle="reference", decode_check=True,
    description="ragged batch over a paged KV cache (PagedAttention): --kv-layout, --page-size, --seq-dist; mixed "
                "prefill-and-decode batches: --batch-spec",
    time="O(L²)", memory="O(L²)", reference=lambda q, k, v, p: ragged_attention(q, k, v, p),
    flops=flops, bytes=io_bytes, backends=_backends(), resolve=_resolve, why_unsupported=check_heads,
    defaults=dict(DEFAULTS), make_inputs=make_inputs, modes=("fwd", "decode"), kv_cache_bytes=kv_cache_bytes)

VARIANTS = (PAGED,)
