"""Linear-time approximations of softmax attention: Performer (FAVOR+), Linformer and linear
attention with φ = elu + 1.

performer (Choromanski et al. 2021, "Rethinking Attention with Performers"): positive random
    features φ(x) = exp(Wx' − |x'|²/2) with x' = x / D^¼ and W (m×D) orthogonal Gaussian rows,
    drawn in setup from `seed` (`nb_features` m = 256, `orthogonal` = True). Then
        out = φ(Q)(φ(K)ᵀV) / (φ(Q)(φ(K)ᵀ1)),
    causal via prefix sums S_i = Σ_{j≤i} φ(k_j)v_jᵀ, z_i = Σ_{j≤i} φ(k_j). Stability: the
    paper's max subtraction; a per-row max for queries and one max over the keys (per batch and
    head) cancel in the ratio. The constant 1/√m also cancels and is left out.
linformer (Wang et al. 2020): K and V projected along the sequence with E, F ∈ R^{k×Lk}
    (i.i.d. N(0, 1/k), the paper's JL construction, drawn from `seed`; `k` = 256), then exact
    attention over the k projected keys. Causal is unsupported: E mixes future positions.
linear (Katharopoulos et al. 2020, "Transformers are RNNs"): φ(x) = elu(x) + 1, same formula.

Backends:
    eager    readable formulation: whole-sequence features; causal with cumsum, which holds an
             Lk×m×D prefix tensor per head (O(L·m·D) memory: the reference formulation only).
    chunked  (performer, linear) chunks of `chunk` positions (default 128): within a chunk the
             masked quadratic part φ(Q_c)φ(K_c)ᵀ, across chunks the running state S (m×D) and z
             (m); no L×m×D tensor exists, O(L) time and memory. Key features are stabilised
             with a running max (S and z rescaled when it grows), so no pass over all keys first.
    sdpa     (linformer) torch SDPA over the projected keys.
All math runs in float32 whatever the input dtype (the output is cast back). Not exact: the
reference is exact attention; the error is measured. GQA: φ(K)ᵀV is computed once per K/V head.
Honest limits: Linformer's E and F are random here, not learned, so its error on random inputs
is large (the paper relies on trained projections); the chunked backend also does the local
quadratic work, about 2·C·(m+D) extra FLOPs per query, not counted in the variant's FLOP model.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from ..problem import Problem
from ..registry import Backend, Fn, Reason, Variant, register
from ._common import check_heads, exact_reference, fill_defaults, io_bytes, softmax_attention

CHUNK = 128


# ---------------------------------------------------------------- feature maps
def random_features(m: int, d: int, seed: int, orthogonal: bool = True) -> torch.Tensor:
    """(m, D) Gaussian rows; orthogonal: blocks of D orthonormal rows (QR), each row rescaled
    to the length of a Gaussian vector, so rows are marginally N(0, I) (FAVOR+, section 2.4)."""
    g = torch.Generator().manual_seed(seed)
    if not orthogonal:
        return torch.randn(m, d, generator=g)
    blocks = [torch.linalg.qr(torch.randn(d, d, generator=g))[0].T for _ in range(math.ceil(m / d))]
    lengths = torch.randn(m, d, generator=g).norm(dim=1)  # chi_D, as a Gaussian row's length
    return torch.cat(blocks)[:m] * lengths[:, None]


def favor_logits(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """log φ(x) = Wx' − |x'|²/2 with x' = x / D^¼: (..., L, D) -> (..., L, m).  2·L·m·D FLOPs."""
    x = x.float() * x.shape[-1] ** -0.25
    return x @ w.T - 0.5 * (x * x).sum(-1, keepdim=True)


def favor_query(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """φ(q) with each row's max subtracted (cancels between numerator and denominator)."""
    u = favor_logits(x, w)
    return torch.exp(u - u.amax(-1, keepdim=True))


def elu_features(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x.float()) + 1.0


# ---------------------------------------------------------------- shared math (grouped shapes)
# q is viewed as (B, Hkv, G, Lq, D) and k, v as (B, Hkv, 1, Lk, D): the state φ(K)ᵀV is
# computed once per K/V head and shared by its G query heads (broadcast over the G axis).
def _grouped(q, k, v):
    b, hq, lq, d = q.shape
    hkv = k.shape[1]
    return q.view(b, hkv, hq // hkv, lq, d), k.unsqueeze(2), v.unsqueeze(2).float()


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return num / torch.where(den > 0, den, torch.ones_like(den))  # rows that see no key: 0


def linear_eager(q, k, v, problem: Problem, phi_q: Callable, phi_k: Callable, name: str):
    """Whole-sequence features; causal with cumulative sums (an Lk×m×D tensor per head)."""
    qg, kg, vg = _grouped(q, k, v)
    with record_function(f"{name}.features"):
        fq, fk = phi_q(qg), phi_k(kg)  # (B, Hkv, G, Lq, m), (B, Hkv, 1, Lk, m)
    with record_function(f"{name}.products"):
        if not problem.causal:
            s = fk.transpose(-2, -1) @ vg  # (B, Hkv, 1, m, D)   2·Lk·m·D
            z = fk.sum(-2).unsqueeze(-1)  # (B, Hkv, 1, m, 1)
            out = _ratio(fq @ s, fq @ z)  # (B, Hkv, G, Lq, D)  2·Lq·m·D (+ 2·Lq·m)
        else:
            lq, lk = q.shape[-2], k.shape[-2]
            s = (fk.unsqueeze(-1) * vg.unsqueeze(-2)).cumsum(-3)  # (B, Hkv, 1, Lk, m, D)
            z = fk.cumsum(-2)  # (B, Hkv, 1, Lk, m)
            last = torch.arange(lq, device=q.device) + (lk - lq)  # last key query i sees
            seen = (last >= 0)[:, None]
            last = last.clamp(0, lk - 1)
            num = (fq.unsqueeze(-1) * s[..., last, :, :]).sum(-2)  # (B, Hkv, G, Lq, D)
            den = (fq * z[..., last, :]).sum(-1, keepdim=True)
            out = torch.where(seen, _ratio(num, den), torch.zeros_like(num))
    return out.reshape(q.shape).to(q.dtype)


def linear_chunked(q, k, v, problem: Problem, phi_q: Callable, phi_k: Callable, name: str,
                   m: int, stabilized: bool, chunk: int):
    """Chunks of `chunk` positions with a running state S = Σφ(k)vᵀ (m×D) and z = Σφ(k).

    stabilized: phi_k returns log-features; a running max c is subtracted and S, z are
    rescaled by e^(c_old − c_new) when it grows (the online-softmax trick, applied to keys)."""
    qg, kg, vg = _grouped(q, k, v)
    lq, lk = q.shape[-2], k.shape[-2]
    b, hkv, d = k.shape[0], k.shape[1], v.shape[-1]
    out = torch.zeros(qg.shape[:-1] + (d,), device=q.device, dtype=torch.float32)
    st = {"s": torch.zeros(b, hkv, 1, m, d, device=q.device),  # Σ φ(k)vᵀ
          "z": torch.zeros(b, hkv, 1, m, 1, device=q.device),  # Σ φ(k)
          "c": torch.full((b, hkv, 1, 1, 1), float("-inf"), device=q.device)}  # key max so far

    def key_features(kc):
        with record_function(f"{name}.features"):
            f = phi_k(kc)  # (B, Hkv, 1, c, m)
            if not stabilized:
                return f
            c_new = torch.maximum(st["c"], f.amax((-2, -1), keepdim=True))
            rescale = torch.exp(st["c"] - c_new)  # 0 before the first chunk
            st["s"], st["z"], st["c"] = st["s"] * rescale, st["z"] * rescale, c_new
            return torch.exp(f - c_new)

    def absorb(fk, vc):  # S += φ(K_c)ᵀV_c (2·c·m·D), z += Σφ(K_c)
        with record_function(f"{name}.products"):
            st["s"] = st["s"] + fk.transpose(-2, -1) @ vc
            st["z"] = st["z"] + fk.sum(-2).unsqueeze(-1)

    if not problem.causal:
        for s in range(0, lk, chunk):
            absorb(key_features(kg[..., s:s + chunk, :]), vg[..., s:s + chunk, :])
        for t in range(0, lq, chunk):
            with record_function(f"{name}.features"):
                fq = phi_q(qg[..., t:t + chunk, :])
            with record_function(f"{name}.products"):
                out[..., t:t + chunk, :] = _ratio(fq @ st["s"], fq @ st["z"])  # 2·c·m·D
        return out.reshape(q.shape).to(q.dtype)
    offset = lk - lq  # bottom-right: query i sees keys j <= i + offset
    q0 = max(0, -offset)  # queries before q0 see no key: their output stays 0
    for s in range(0, q0 + offset, chunk):  # keys every remaining query sees
        e = min(s + chunk, q0 + offset)
        absorb(key_features(kg[..., s:e, :]), vg[..., s:e, :])
    for t in range(q0, lq, chunk):
        e = min(t + chunk, lq)
        fk, vc = key_features(kg[..., t + offset:e + offset, :]), vg[..., t + offset:e + offset, :]
        with record_function(f"{name}.features"):
            fq = phi_q(qg[..., t:e, :])  # (B, Hkv, G, c, m)
        with record_function(f"{name}.products"):
            local = (fq @ fk.transpose(-2, -1)).tril_()  # (B, Hkv, G, c, c)  2·c²·m
            num = local @ vc + fq @ st["s"]  # 2·c²·D + 2·c·m·D
            den = local.sum(-1, keepdim=True) + fq @ st["z"]
            out[..., t:e, :] = _ratio(num, den)
        absorb(fk, vc)
    return out.reshape(q.shape).to(q.dtype)


# ---------------------------------------------------------------- performer
def _performer_maps(problem: Problem, device: torch.device):
    w = random_features(int(problem.param("nb_features")), problem.head_dim, int(problem.param("seed")),
                        bool(problem.param("orthogonal"))).to(device)  # (m, D), drawn in setup
    return (lambda x: favor_query(x, w)), w


def performer_eager(q, k, v, problem: Problem, w: torch.Tensor):
    def phi_k(x):  # one max over every key of a (batch, head): cancels in the ratio
        u = favor_logits(x, w)
        return torch.exp(u - u.amax((-2, -1), keepdim=True))

    return linear_eager(q, k, v, problem, lambda x: favor_query(x, w), phi_k, "performer")


def _performer_backends() -> tuple[Backend, ...]:
    def build_eager(problem: Problem, device: torch.device) -> Fn:
        _, w = _performer_maps(problem, device)
        return lambda q, k, v: performer_eager(q, k, v, problem, w)

    def build_chunked(problem: Problem, device: torch.device) -> Fn:
        phi_q, w = _performer_maps(problem, device)
        chunk, m = int(problem.param("chunk")), w.shape[0]
        return lambda q, k, v: linear_chunked(q, k, v, problem, phi_q, lambda x: favor_logits(x, w),
                                              "performer", m, True, chunk)

    return (Backend("eager", build_eager, "FAVOR+ on the whole sequence; causal via cumsum (Lk×m×D memory)"),
            Backend("chunked", build_chunked, "FAVOR+ in chunks with a running m×D state (O(L) memory)"))


def performer_flops(p: Problem) -> float:
    m, d = int(p.param("nb_features")), p.head_dim
    rows_q, rows_k = p.batch * p.heads * p.seq_q, p.batch * p.kv_heads * p.seq_k
    features = 2.0 * (rows_q + rows_k) * m * d  # Wx' for every query and key row: 2·m·D each
    products = 2.0 * rows_k * m * d + 2.0 * rows_q * m * d  # S = φ(K)ᵀV, then φ(Q)S (causal: same)
    normaliser = 2.0 * rows_q * m  # φ(Q)z
    return features + products + normaliser


def _linear_resolve(**defaults):
    return lambda p: fill_defaults(p, **defaults)


PERFORMER_DEFAULTS = {"nb_features": 256, "orthogonal": True, "seed": 0, "chunk": CHUNK}
PERFORMER = register(Variant(
    name="performer", family="linear",
    description="FAVOR+ positive orthogonal random features (m=nb_features), prefix sums when causal",
    time="O(L·m)", memory="O(L·m)", reference=exact_reference, flops=performer_flops, bytes=io_bytes,
    backends=_performer_backends(), resolve=_linear_resolve(**PERFORMER_DEFAULTS), supports=check_heads,
    exact=False, defaults=PERFORMER_DEFAULTS))


# ---------------------------------------------------------------- linear (elu + 1)
def _linear_backends() -> tuple[Backend, ...]:
    def build_eager(problem: Problem, device: torch.device) -> Fn:
        return lambda q, k, v: linear_eager(q, k, v, problem, elu_features, elu_features, "linear")

    def build_chunked(problem: Problem, device: torch.device) -> Fn:
        chunk = int(problem.param("chunk"))
        return lambda q, k, v: linear_chunked(q, k, v, problem, elu_features, elu_features, "linear",
                                              problem.head_dim, False, chunk)

    return (Backend("eager", build_eager, "φ=elu+1 on the whole sequence; causal via cumsum (Lk×D×D memory)"),
            Backend("chunked", build_chunked, "φ=elu+1 in chunks with a running D×D state (O(L) memory)"))


def linear_flops(p: Problem) -> float:
    d = p.head_dim
    rows_q, rows_k = p.batch * p.heads * p.seq_q, p.batch * p.kv_heads * p.seq_k
    return 2.0 * rows_k * d * d + 2.0 * rows_q * d * d + 2.0 * rows_q * d  # φ(K)ᵀV, φ(Q)S, φ(Q)z


LINEAR_DEFAULTS = {"chunk": CHUNK}
LINEAR = register(Variant(
    name="linear", family="linear",
    description="linear attention, φ = elu + 1 (Katharopoulos et al. 2020), prefix sums when causal",
    time="O(L)", memory="O(L)", reference=exact_reference, flops=linear_flops, bytes=io_bytes,
    backends=_linear_backends(), resolve=_linear_resolve(**LINEAR_DEFAULTS), supports=check_heads,
    exact=False, defaults=LINEAR_DEFAULTS))


# ---------------------------------------------------------------- linformer
def linformer_projections(problem: Problem, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """E, F (k, Lk), i.i.d. N(0, 1/k) (Linformer section 4), shared by batch and heads."""
    kp, lk = int(problem.param("k")), problem.seq_k
    g = torch.Generator().manual_seed(int(problem.param("seed")))
    e, f = (torch.randn(kp, lk, generator=g) / math.sqrt(kp) for _ in range(2))
    return e.to(device), f.to(device)


def linformer_attention(q, k, v, e, f, use_sdpa: bool = False) -> torch.Tensor:
    kp = (e @ k.float()).to(k.dtype)  # (B, Hkv, k, D)   2·k·Lk·D
    vp = (f @ v.float()).to(v.dtype)  # (B, Hkv, k, D)   2·k·Lk·D
    if use_sdpa:
        return F.scaled_dot_product_attention(q, kp, vp, enable_gqa=q.shape[1] != k.shape[1])
    return softmax_attention(q, kp, vp)  # 4·Lq·k·D


def _linformer_backends() -> tuple[Backend, ...]:
    def builder(use_sdpa: bool):
        def build(problem: Problem, device: torch.device) -> Fn:
            e, f = linformer_projections(problem, device)
            return lambda q, k, v: linformer_attention(q, k, v, e, f, use_sdpa)

        return build

    return (Backend("eager", builder(False), "project K, V to k rows, then materialised softmax over k keys"),
            Backend("sdpa", builder(True), "project K, V to k rows, then torch SDPA over k keys"))


def linformer_flops(p: Problem) -> float:
    kp, d = int(p.param("k")), p.head_dim
    projections = 4.0 * p.batch * p.kv_heads * p.seq_k * kp * d  # E·K and F·V: 2·k·Lk·D each
    return projections + 4.0 * p.batch * p.heads * p.seq_q * kp * d  # QKpᵀ and PVp over k keys


def _linformer_supports(p: Problem) -> Reason:
    if p.causal:
        return "linformer cannot be causal: its projection E (k×Lk) mixes future positions into every key"
    if p.mode == "decode":
        return ("linformer cannot decode: E and F are fixed for one length Lk and mix all positions, "
                "so there is no incremental KV cache")
    return check_heads(p)


LINFORMER_DEFAULTS = {"k": 256, "seed": 0}
LINFORMER = register(Variant(
    name="linformer", family="linear",
    description="Linformer: K, V projected along the sequence to k rows (random N(0,1/k) E, F)",
    time="O(L·k)", memory="O(L·k)", reference=exact_reference, flops=linformer_flops, bytes=io_bytes,
    backends=_linformer_backends(), resolve=_linear_resolve(**LINFORMER_DEFAULTS),
    supports=_linformer_supports, exact=False, defaults=LINFORMER_DEFAULTS))
