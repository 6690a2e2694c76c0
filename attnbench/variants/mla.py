"""Multi-head latent attention (MLA): DeepSeek-V2 (DeepSeek-AI 2024, arXiv:2405.04434), DeepSeek-V3.

Keys and values are compressed into one latent c_KV per token (kv_lora_rank r, e.g. 512), shared
by all heads, plus a small key part k_pe (qk_rope_head_dim dr, e.g. 64) that carries RoPE and is
also shared. Per head h, the up-projections W_UK[h] (dn, r) and W_UV[h] (dv, r) give

    k_h = [c_KV · W_UK[h]ᵀ | k_pe]   (Lk, dn + dr)      v_h = c_KV · W_UV[h]ᵀ   (Lk, dv)
    out_h = softmax(q_h · k_hᵀ / √(dn + dr) [+ causal mask]) · v_h                 (Lq, dv)

with q_h = [q_nope | q_pe] (Lq, dn + dr). Two ways to compute it (`--param form=`):
  naive     (prefill; form=auto in fwd): decompress K and V for every head, then attend.
            FLOPs 2·B·H·Lk·r·(dn + dv) (decompression) + 2·B·H·P·(dn + dr + dv) (attention),
            P = attended pairs per head. Time O(H·Lk·r·(dn+dv) + H·L²·(dn+dr+dv)).
  absorbed  (decode; form=auto in decode): W_UK is absorbed into the query,
            q_lat = q_nope · W_UK[h] (Lq, r), so scores are taken against the latent cache itself:
            s = [q_lat | q_pe] · [c_KV | k_pe]ᵀ; the output is o_lat = softmax(s)·c_KV (Lq, r),
            then out_h = o_lat · W_UV[h]ᵀ. Every head reads the same (Lk, r + dr) cache: MQA with
            Dqk = r + dr and Dv = r. FLOPs 2·B·H·Lq·r·(dn + dv) (the two projections) +
            2·B·H·P·(2r + dr). Time O(H·Lk·(2r + dr)) per decoded token, not O(H·Lk·r·(dn+dv)).
Both give the same output (up to rounding); tests/variants/test_mla.py checks that.

How the Problem's fields map (resolve sets them, the record shows what ran):
  heads     the H query heads;   kv_heads = 1: the one latent shared by every head (set here);
  head_dim  = v_head_dim, the output's head dim (set here from the parameter: --head-dim is
            overridden; the query's head dim is qk_nope_head_dim + qk_rope_head_dim).
Inputs (`make_inputs`; RoPE already applied to q_pe and k_pe, as a cache stores them):
  q  (B, H, Lq, dn + dr)  = [q_nope | q_pe]
  k  (B, 1, Lk, r + dr)   = [c_KV | k_pe], the latent cache as a decode step reads it
  v  (B, 1, Lk, r)        = c_KV, a view of k's first r columns (no copy)
  out (B, H, Lq, dv)
The up-projection weights are built by each backend's setup from a fixed seed (WEIGHT_SEED), with
entries N(0, 1/r) so that the decompressed keys have unit variance like every variant's inputs.
KV cache a decode step reads (per layer): B·Lk·(r + dr)·itemsize (`kv_cache_bytes`), against
MHA/GQA's 2·B·Hkv·Lk·D·itemsize: at r = 512, dr = 64 it is GQA's with Hkv = 2.25 heads of D = 128.
Limits: forward and decode only (no backward: modes fwd, decode); `--inputs peaked` does not apply
(it builds standard q/k/v shapes, not a latent cache); the attention entropy is not recorded.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from attnbench.core.problem import Problem
from attnbench.variants.backends import triton
from attnbench.variants.backends.flex import (
    BLOCK_SIZE,
    causal_mod,
    compiled_block_mask,
    compiled_flex,
    flex_backend,
    full_block_mask,
)
from attnbench.variants.base import Backend, Fn, Reason, Variant
from attnbench.variants.patterns import causal_mask
from attnbench.variants.scaling import with_scale
from attnbench.variants.shared import fill_defaults, sdpa_call, softmax_attention

DEFAULTS = {"kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128,
            "form": "auto"}
DIMS = ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
FORMS = ("auto", "naive", "absorbed")
WEIGHT_SEED = 2405  # the up-projections' seed: every backend and the reference build the same weights


def dims(p: Problem) -> tuple[int, int, int, int]:
    """(r, dr, dn, dv) = (kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim)."""
    return tuple(int(p.param(name)) for name in DIMS)


def form(p: Problem) -> str:
    """"naive" or "absorbed": form=auto is absorbed in decode mode, naive otherwise."""
    f = p.param("form", "auto")
    return ("absorbed" if p.mode == "decode" else "naive") if f == "auto" else f


def scale(p: Problem) -> float:
    r, dr, dn, dv = dims(p)
    return 1.0 / math.sqrt(dn + dr)  # the query/key head dim, as DeepSeek's softmax_scale


def up_weights(p: Problem, device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_UK (H, dn, r), W_UV (H, dv, r)): N(0, 1/r) from WEIGHT_SEED, rounded to the problem's
    dtype, then held in `dtype` (the fp64 reference then uses exactly the backends' weights)."""
    r, dr, dn, dv = dims(p)
    g = torch.Generator(device="cpu").manual_seed(WEIGHT_SEED)
    w = torch.randn(p.heads, dn + dv, r, generator=g) / math.sqrt(r)
    w = w.to(p.torch_dtype).to(device=device, dtype=dtype)
    return w[:, :dn], w[:, dn:]


# ---------------------------------------------------------------- the math
def decompress(k: torch.Tensor, w_uk: torch.Tensor, w_uv: torch.Tensor, p: Problem):
    """Latent cache k (B, 1, Lk, r + dr) -> per-head K (B, H, Lk, dn + dr) and V (B, H, Lk, dv)."""
    r = dims(p)[0]
    c, k_pe = k[..., :r], k[..., r:]  # (B, 1, Lk, r), (B, 1, Lk, dr)
    k_nope = torch.matmul(c, w_uk.transpose(-2, -1))  # (B, H, Lk, dn): 2·B·H·Lk·r·dn FLOPs
    vals = torch.matmul(c, w_uv.transpose(-2, -1))  # (B, H, Lk, dv): 2·B·H·Lk·r·dv FLOPs
    b, h, lk = k.shape[0], w_uk.shape[0], k.shape[2]
    return torch.cat([k_nope, k_pe.expand(b, h, lk, k_pe.shape[-1])], dim=-1), vals


def absorb(q: torch.Tensor, w_uk: torch.Tensor, p: Problem) -> torch.Tensor:
    """q (B, H, Lq, dn + dr) -> latent query [q_nope·W_UK[h] | q_pe] (B, H, Lq, r + dr)."""
    dn = dims(p)[2]
    q_lat = torch.matmul(q[..., :dn], w_uk)  # (B, H, Lq, r): 2·B·H·Lq·dn·r FLOPs
    return torch.cat([q_lat, q[..., dn:]], dim=-1)


def expand_out(o_lat: torch.Tensor, w_uv: torch.Tensor) -> torch.Tensor:
    """Latent output (B, H, Lq, r) -> (B, H, Lq, dv) by W_UV[h]ᵀ: 2·B·H·Lq·r·dv FLOPs."""
    return torch.matmul(o_lat, w_uv.transpose(-2, -1))


def naive_attention(q, k, w_uk, w_uv, p: Problem) -> torch.Tensor:
    """Decompress, then materialised softmax attention per head: (B, H, Lq, dv)."""
    keys, vals = decompress(k, w_uk, w_uv, p)
    return softmax_attention(q, keys, vals, causal=p.causal, scale=scale(p))


def absorbed_attention(q, k, w_uk, w_uv, p: Problem) -> torch.Tensor:
    """Attention in the latent space, the H heads stacked as H·Lq rows of one matrix so the
    cache is read once: scores (B, H·Lq, Lk) materialised. Returns (B, H, Lq, dv)."""
    b, h, lq = q.shape[:3]
    r, lk = dims(p)[0], k.shape[2]
    qa = absorb(q, w_uk, p).reshape(b, h * lq, -1)  # (B, H·Lq, r + dr), row = head·Lq + query
    s = torch.matmul(qa, k[:, 0].transpose(-2, -1)) * scale(p)  # (B, H·Lq, Lk)
    if p.causal:
        allowed = causal_mask(lq, lk, q.device).repeat(h, 1)  # (H·Lq, Lk)
        s = s.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(s if s.dtype == torch.float64 else s.float(), dim=-1)
    if p.causal:  # rows with no visible key (Lq > Lk) are NaN: make them 0
        probs = probs.nan_to_num(0.0)
    o_lat = torch.matmul(probs.to(k.dtype), k[:, 0, :, :r])  # (B, H·Lq, r)
    return expand_out(o_lat.reshape(b, h, lq, r), w_uv)


def reference(q, k, v, p: Problem) -> torch.Tensor:
    """The definition (naive form) in the inputs' dtype; the oracle runs it on float64 inputs.
    In decode mode the absorbed form (the same numbers in float64, to 1e-12: tests/variants/
    test_mla.py): decompressing a 32k cache for 32 heads in float64 takes minutes on a CPU."""
    w_uk, w_uv = up_weights(p, q.device, q.dtype)
    attend = absorbed_attention if p.mode == "decode" else naive_attention
    return attend(q, k, w_uk, w_uv, p)


# ---------------------------------------------------------------- backends
def _eager_build(p: Problem, device: torch.device) -> Fn:
    w_uk, w_uv = up_weights(p, device, p.torch_dtype)
    attend = absorbed_attention if form(p) == "absorbed" else naive_attention

    def eager(q, k, v):
        return attend(q, k, w_uk, w_uv, p)

    return eager


def _sdpa_build(p: Problem, device: torch.device) -> Fn:
    import torch.nn.functional as F

    w_uk, w_uv = up_weights(p, device, p.torch_dtype)
    kwargs = sdpa_call(p) | {"scale": scale(p)}  # enable_gqa: H query heads on 1 latent head

    if form(p) == "naive":
        def sdpa_naive(q, k, v):
            keys, vals = decompress(k, w_uk, w_uv, p)
            return F.scaled_dot_product_attention(q, keys, vals, **kwargs)

        return sdpa_naive

    def sdpa_absorbed(q, k, v):  # Dqk = r + dr, Dv = r: SDPA over the latent cache
        qa = absorb(q, w_uk, p)  # (B, H, Lq, r + dr)
        if p.causal:  # rows differ in what they see: H heads over the 1 latent head (enable_gqa)
            return expand_out(F.scaled_dot_product_attention(qa, k, v, **kwargs), w_uv)
        b, h, lq = qa.shape[:3]  # every row sees every key: the H·Lq rows as one head, no K/V repeat
        o_lat = F.scaled_dot_product_attention(qa.reshape(b, 1, h * lq, -1), k, v, scale=kwargs["scale"])
        return expand_out(o_lat.reshape(b, h, lq, -1), w_uv)

    return sdpa_absorbed


def _flex_build(p: Problem, device: torch.device) -> Fn:
    w_uk, w_uv = up_weights(p, device, p.torch_dtype)
    if p.causal:
        block_mask = compiled_block_mask()(causal_mod(p), B=None, H=None, Q_LEN=p.seq_q, KV_LEN=p.seq_k,
                                           device=device, BLOCK_SIZE=BLOCK_SIZE)
    else:  # never None: see backends/flex.full_block_mask
        block_mask = full_block_mask(p.seq_q, p.seq_k, BLOCK_SIZE, device)
    attend, sc = compiled_flex(), scale(p)

    if form(p) == "naive":
        def flex_naive(q, k, v):
            keys, vals = decompress(k, w_uk, w_uv, p)
            return attend(q, keys, vals, block_mask=block_mask, scale=sc)

        return flex_naive

    def flex_absorbed(q, k, v):
        return expand_out(attend(absorb(q, w_uk, p), k, v, block_mask=block_mask, scale=sc, enable_gqa=True), w_uv)

    return flex_absorbed


def _triton_build(p: Problem, device: torch.device) -> Fn:
    from attnbench.kernels.mla_decode import mla_decode

    w_uk, w_uv = up_weights(p, device, p.torch_dtype)
    r, sc = dims(p)[0], scale(p)

    def triton_mla_decode(q, k, v):
        o_lat = mla_decode(absorb(q, w_uk, p), k, rank=r, softmax_scale=sc, causal=p.causal)
        return expand_out(o_lat, w_uv)

    return triton_mla_decode


def _triton_supports(p: Problem, device: torch.device) -> Reason:
    from attnbench.kernels.mla_decode import MAX_QUERIES

    if form(p) != "absorbed" or p.seq_q > MAX_QUERIES:
        return (f"the Triton MLA kernel computes the absorbed decode form with Lq <= {MAX_QUERIES} "
                f"(got form {form(p)}, Lq={p.seq_q}); prefill runs on eager, sdpa and flex")
    return None


BACKENDS = (
    Backend("eager", _eager_build, "plain PyTorch, scores materialised: naive (decompress K/V per head) or "
            "absorbed (heads stacked as rows over the latent cache)", materializes=True),
    Backend("sdpa", _sdpa_build, "torch SDPA after decompression (naive) or over the latent cache with "
            "Dqk = r + dr, Dv = r (absorbed); on CPU Dv != Dqk takes SDPA's math path (scores materialised)",
            materializes=True),
    Backend("flex", _flex_build, "compiled FlexAttention, naive or absorbed (Dv != Dqk, enable_gqa)", compiles=True,
            why_unavailable=flex_backend().why_unavailable, memory="O(L)"),
    Backend("triton", _triton_build, "Triton split-KV decode over the latent cache (absorbed form; the two "
            "projections in torch; fp32: TF32 dots)", why_unavailable=triton.flash_backend().why_unavailable,
            why_unsupported=_triton_supports, tf32_dots=True, memory="O(L)"),
)


# ---------------------------------------------------------------- problem, inputs, cost model
def resolve(p: Problem) -> Problem:
    p = fill_defaults(p, **DEFAULTS)
    return replace(p, kv_heads=1, head_dim=int(p.param("v_head_dim")))


def why_unsupported(p: Problem) -> Reason:
    for name in DIMS:
        value = p.param(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"bad {name} {value!r}; accepted: an integer >= 1"
    if p.param("form") not in FORMS:
        return f"unknown form '{p.param('form')}'; accepted: {', '.join(FORMS)}"
    return None


def make_inputs(p: Problem, device: torch.device, seed: int = 0):
    """q (B, H, Lq, dn + dr), k = the latent cache (B, 1, Lk, r + dr), v = c_KV, k's first r
    columns; standard normal from a CPU generator seeded with `seed`."""
    r, dr, dn, dv = dims(p)
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(p.batch, p.heads, p.seq_q, dn + dr, generator=g)
    k = torch.randn(p.batch, 1, p.seq_k, r + dr, generator=g)
    q, k = (t.to(device=device, dtype=p.torch_dtype) for t in (q, k))
    return q, k, k[..., :r]


def mla_flops(p: Problem) -> float:
    """Forward FLOPs of the problem's form (softmax ignored, as attention_flops counts)."""
    r, dr, dn, dv = dims(p)
    pairs = p.attended_pairs()
    if form(p) == "absorbed":
        return 2.0 * p.batch * p.heads * (p.seq_q * r * (dn + dv) + pairs * (2 * r + dr))
    return 2.0 * p.batch * p.heads * (p.seq_k * r * (dn + dv) + pairs * (dn + dr + dv))


def mla_bytes(p: Problem) -> float:
    """Minimum bytes, either form: read q, the latent cache and both up-projections once, write
    the output once (naive code also writes and reads the decompressed K/V: not counted)."""
    r, dr, dn, dv = dims(p)
    q = p.batch * p.heads * p.seq_q * (dn + dr)
    out = p.batch * p.heads * p.seq_q * dv
    weights = p.heads * (dn + dv) * r
    return float((q + latent_elements(p) + weights + out) * p.itemsize)


def latent_elements(p: Problem) -> int:
    r, dr = dims(p)[:2]
    return p.batch * p.seq_k * (r + dr)


def mla_kv_cache_bytes(p: Problem) -> float:
    """The latent cache one decode step reads (per layer): B·Lk·(r + dr)·itemsize."""
    return float(latent_elements(p) * p.itemsize)


MLA = with_scale(Variant(
    name="mla", family="latent", oracle="reference", decode_check=True,
    description="multi-head latent attention (DeepSeek-V2/V3): K/V from a shared latent, naive prefill, "
                "absorbed decode",
    time="O(L²)", memory="O(L²)", reference=reference, flops=mla_flops, bytes=mla_bytes, backends=BACKENDS,
    resolve=resolve, why_unsupported=why_unsupported, defaults=dict(DEFAULTS), make_inputs=make_inputs,
    modes=("fwd", "decode"), kv_cache_bytes=mla_kv_cache_bytes), scale)

VARIANTS = (MLA,)
