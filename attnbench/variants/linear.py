"""Linear-time approximations of softmax attention: Performer (FAVOR+), Linformer and linear
attention with φ = elu + 1.

performer (Choromanski et al. 2021, "Rethinking Attention with Performers"): positive random
    features φ(x) = exp(Wx' − |x'|²/2) with x' = x / D^¼ and W (m×D) orthogonal Gaussian rows,
    drawn in setup from `seed` (`nb_features` m = 256, `orthogonal` = True). Then
        out = φ(Q)(φ(K)ᵀV) / (φ(Q)(φ(K)ᵀ1)),
    causal via prefix sums S_i = Σ_{j≤i} φ(k_j)v_jᵀ, z_i = Σ_{j≤i} φ(k_j). Stability: the
    paper's max subtraction; a per-row max for queries and one max over the keys (per batch and
    head) cancel in the ratio. The constant 1/√m also cancels and is left out.
    `eps` > 0 (default 0): the stabiliser of the reference implementations, added to every
    feature after subtracting the max of the raw projection Wx' (per query row; over all keys and
    features of a batch and head): φ(x) = exp(Wx' − |x'|²/2 − max Wx') + eps (performer-pytorch
    1e-4, Google's fast_attention 1e-6). It does not cancel: it floors every feature, pulling the
    output toward the mean of V, which helps where the random-feature estimate is noise. Measured
    at L = 1k, H = 4, D = 64, m = 256, non-causal, rel L2 against exact attention: N(0,1) inputs
    eps = 0: 3.7, eps = 1e-4: 0.80 (uniform attention scores √(1 − 1/e) ≈ 0.795 there); q, k with
    std 0.5: 0.40 and 0.37. With eps = 1e-4 our output equals performer-pytorch's to 3e-7.
linformer (Wang et al. 2020): K and V projected along the sequence with E, F ∈ R^{k×Lk}
    (i.i.d. N(0, 1/k), the paper's JL construction, drawn from `seed`; `k` = 256), then exact
    attention over the k projected keys. Causal is unsupported: E mixes future positions.
linear (Katharopoulos et al. 2020, "Transformers are RNNs"): φ(x) = elu(x) + 1, same formula.

Backends:
    eager    readable formulation: whole-sequence features; causal with cumsum, which holds an
             Lk×m×D prefix tensor per head (O(L·m·D) memory: the reference formulation only).
    chunked  (performer, linear) chunks of `chunk` positions (default 64): within a chunk the
             masked quadratic part φ(Q_c)φ(K_c)ᵀ, across chunks the running state S (m×D) and z
             (m); no L×m×D tensor exists, O(L) time and memory. Key features are stabilised
             with a running max (S and z rescaled when it grows), so no pass over all keys first.
             Causal: 1024/chunk chunks at a time in batched ops (fewer, larger ops).
             With eps > 0 the floor is relative to the max over all keys, so a first pass over
             the keys finds that max (2·Lk·m·D more FLOPs, not in the FLOP model).
    sdpa     (linformer) torch SDPA over the projected keys.
All math runs in float32 whatever the input dtype (the output is cast back). Not exact: the
reference is exact attention; the error is measured. GQA: φ(K)ᵀV is computed once per K/V head.
Honest limits: FAVOR+'s variance grows like e^{|q'+k'|²}: on standard normal inputs with D=64
(|q'|² ≈ 8) its error against exact attention exceeds 1 even at m=256 (eps = 0); it is small only
for small-norm q, k (e.g. std 0.5 at D=16, as the tests use). Linformer's E and F are random here,
not learned, so its error on random inputs is large (the paper relies on trained projections).
The chunked backend also does the local quadratic work, about 2·C·(m+D) extra FLOPs per query,
not counted in the variant's FLOP model (which counts the prefix-sum formulation).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from attnbench.core.problem import Problem
from attnbench.variants.backends import peers
from attnbench.variants.base import Backend, Fn, Reason, Variant
from attnbench.variants.shared import check_heads, exact_reference, fill_defaults, io_bytes, softmax_attention

CHUNK = 64
BLOCK_ROWS = 1024  # causal chunked: this many rows (BLOCK_ROWS/chunk chunks) per batched step


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


def linear_chunked(
    q, k, v, problem: Problem, phi_q: Callable, phi_k: Callable, name: str, m: int, stabilized: bool, chunk: int
):
    """Chunks of `chunk` positions with a running state [S | z] = Σ φ(k)[vᵀ | 1] (m×(D+1)).

    V gets a column of ones, so one product gives both numerator and denominator.
    stabilized: phi_k returns log-features; a running max c is subtracted and the state is
    rescaled by e^(c_old − c_new) when it grows (the online-softmax trick, applied to keys).
    Causal: BLOCK_ROWS/chunk chunks are processed by one set of batched ops (their states
    combined by a cumsum over the chunk axis, then carried), which keeps the op count, and the
    per-op overhead, low. Non-causal runs (and keys every query sees) use chunks of
    max(chunk, BLOCK_ROWS) rows: there is no local part to bound."""
    qg, kg, vg = _grouped(q, k, v)
    vg = torch.cat([vg, torch.ones_like(vg[..., :1])], -1)  # (B, Hkv, 1, Lk, D+1)
    lq, lk = q.shape[-2], k.shape[-2]
    b, hkv, d = k.shape[0], k.shape[1], v.shape[-1]
    out = torch.zeros(qg.shape[:-1] + (d,), device=q.device, dtype=torch.float32)
    st = {
        "s": torch.zeros(b, hkv, 1, m, d + 1, device=q.device),  # Σ φ(k)[vᵀ | 1]
        "c": torch.full((b, hkv, 1, 1, 1), float("-inf"), device=q.device),
    }  # key max so far

    def key_features(kc):
        with record_function(f"{name}.features"):
            f = phi_k(kc)  # (B, Hkv, 1, c, m)
            if not stabilized:
                return f
            c_new = torch.maximum(st["c"], f.detach().amax((-2, -1), keepdim=True))
            st["s"] = st["s"] * torch.exp(st["c"] - c_new)  # 0 before the first chunk
            st["c"] = c_new
            return f.sub_(c_new).exp_()

    def absorb(fk, vc):  # [S | z] += φ(K_c)ᵀ[V_c | 1]   2·c·m·(D+1)
        with record_function(f"{name}.products"):
            st["s"] = st["s"] + fk.transpose(-2, -1) @ vc

    def finish(t, e, num):  # numerator / denominator (the ones column)
        out[..., t:e, :] = _ratio(num[..., :d], num[..., d:])

    big = max(chunk, BLOCK_ROWS)  # where there is no local part, only memory bounds the chunk
    if not problem.causal:
        for s in range(0, lk, big):
            absorb(key_features(kg[..., s : s + big, :]), vg[..., s : s + big, :])
        for t in range(0, lq, big):
            with record_function(f"{name}.features"):
                fq = phi_q(qg[..., t : t + big, :])
            with record_function(f"{name}.products"):
                finish(t, t + big, fq @ st["s"])  # 2·c·m·(D+1)
        return out.reshape(q.shape).to(q.dtype)
    offset = lk - lq  # bottom-right: query i sees keys j <= i + offset
    q0 = max(0, -offset)  # queries before q0 see no key: their output stays 0
    for s in range(0, q0 + offset, big):  # keys every remaining query sees
        e = min(s + big, q0 + offset)
        absorb(key_features(kg[..., s:e, :]), vg[..., s:e, :])
    per_block = max(1, BLOCK_ROWS // chunk)  # chunks handled together in one set of batched ops
    t = q0
    while t < lq:
        n = min(per_block, (lq - t) // chunk)
        c = chunk if n else lq - t  # the leftover rows: one short chunk
        n = max(n, 1)
        e = t + n * c
        fk, vc = key_features(kg[..., t + offset : e + offset, :]), vg[..., t + offset : e + offset, :]
        with record_function(f"{name}.features"):
            fq = phi_q(qg[..., t:e, :])  # (B, Hkv, G, n·c, m)
        with record_function(f"{name}.products"):
            fkc, vcc, fqc = (x.unflatten(-2, (n, c)) for x in (fk, vc, fq))  # (..., n, c, ·)
            local = (fqc @ fkc.transpose(-2, -1)).tril_()  # (B, Hkv, G, n, c, c)  2·c²·m per chunk
            states = fkc.transpose(-2, -1) @ vcc  # (B, Hkv, 1, n, m, D+1): each chunk's Σφ(k)[vᵀ|1]
            prefix = states.cumsum(-3)
            before = torch.cat([torch.zeros_like(states[..., :1, :, :]), prefix[..., :-1, :, :]], -3)
            before = before + st["s"].unsqueeze(-3)  # state each chunk starts from
            finish(t, e, (local @ vcc + fqc @ before).flatten(-3, -2))  # 2·c²·(D+1) + 2·c·m·(D+1)
            st["s"] = st["s"] + prefix[..., -1, :, :]
        t = e
    return out.reshape(q.shape).to(q.dtype)


# ---------------------------------------------------------------- performer
def _performer_w(problem: Problem, device: torch.device) -> torch.Tensor:
    return random_features(
        int(problem.param("nb_features")),
        problem.head_dim,
        int(problem.param("seed")),
        bool(problem.param("orthogonal")),
    ).to(device)  # (m, D), drawn in setup


def favor_stabilized(x: torch.Tensor, w: torch.Tensor, eps: float, over) -> torch.Tensor:
    """exp(Wx' − |x'|²/2 − max Wx') + eps, the max of the raw projection taken `over` these axes
    (the last for queries; the last two, every key and feature, for keys)."""
    x = x.float() * x.shape[-1] ** -0.25
    r = x @ w.T
    return torch.exp(r - 0.5 * (x * x).sum(-1, keepdim=True) - r.amax(over, keepdim=True)) + eps


def performer_eager(q, k, v, problem: Problem, w: torch.Tensor):
    eps = float(problem.param("eps", 0.0))
    if eps:
        return linear_eager(
            q,
            k,
            v,
            problem,
            lambda x: favor_stabilized(x, w, eps, -1),
            lambda x: favor_stabilized(x, w, eps, (-2, -1)),
            "performer",
        )

    def phi_k(x):  # one max over every key of a (batch, head): cancels in the ratio
        u = favor_logits(x, w)
        return torch.exp(u - u.amax((-2, -1), keepdim=True))

    return linear_eager(q, k, v, problem, lambda x: favor_query(x, w), phi_k, "performer")


def fast_favor(w: torch.Tensor) -> tuple[Callable, Callable]:
    """The same features in fewer passes over the (L, m) logits: W is pre-scaled by D^-¼; the
    key term −|x'|²/2 rides in the product as an extra input column (W gets a column of ones);
    the query term is a per-row constant, cancelled by the row max. Returns (φ(q), log φ(k))."""
    m, d = w.shape
    ws = w * d**-0.25  # (m, D)
    w_aug = torch.cat([ws, torch.ones(m, 1, device=w.device)], 1)  # (m, D+1)

    def phi_q(x):  # (..., c, D) -> (..., c, m)   2·c·m·D
        u = x.float() @ ws.T
        return u.sub_(u.detach().amax(-1, keepdim=True)).exp_()

    def log_phi_k(x):  # (..., c, D) -> (..., c, m)   2·c·m·(D+1)
        x = x.float()
        h = (x * x).sum(-1, keepdim=True) * (-0.5 / math.sqrt(d))  # −|x'|²/2
        return torch.cat([x, h], -1) @ w_aug.T

    return phi_q, log_phi_k


def fast_favor_stabilized(w: torch.Tensor, eps: float) -> tuple[Callable, Callable, Callable]:
    """fast_favor with the `eps` floor: returns (φ(q), the max of W·k' over all keys, φ(k) given
    that max). The max needs every key first: a pass of its own, in BLOCK_ROWS chunks."""
    m, d = w.shape
    ws = w * d**-0.25
    _, log_phi_k = fast_favor(w)

    def phi_q(x):  # exp(Wx' − |x'|²/2 − max_f Wx') + eps
        x = x.float()
        u = x @ ws.T
        h = (x * x).sum(-1, keepdim=True) * (0.5 / math.sqrt(d))
        return u.sub_(u.detach().amax(-1, keepdim=True)).sub_(h).exp_().add_(eps)

    def key_max(k):  # (B, Hkv, Lk, D) -> (B, Hkv, 1, 1, 1): max of W·k' over keys and features
        peak = torch.full(k.shape[:2], float("-inf"), device=k.device)
        for s in range(0, k.shape[-2], BLOCK_ROWS):
            peak = torch.maximum(peak, (k[..., s : s + BLOCK_ROWS, :].float() @ ws.T).amax((-2, -1)))
        return peak[:, :, None, None, None]

    def phi_k(x, top):  # exp(Wx' − |x'|²/2 − top) + eps
        return log_phi_k(x).sub_(top).exp_().add_(eps)

    return phi_q, key_max, phi_k


def feature_bytes(p: Problem) -> float:
    """φ(Q) (B, Hq, Lq, m) and φ(K) (B, Hkv, Lk, m) in fp32."""
    return 4.0 * int(p.param("nb_features")) * (p.batch * p.heads * p.seq_q + p.batch * p.kv_heads * p.seq_k)


def eager_workspace(p: Problem) -> float:
    """The whole-sequence features, each beside the logits it is made from (2×); causal: the
    Lk×m×(D+1) prefix sums per K/V head."""
    prefix = 4.0 * p.batch * p.kv_heads * p.seq_k * int(p.param("nb_features")) * (p.head_dim + 1) if p.causal else 0
    return 2 * feature_bytes(p) + prefix


def _performer_backends() -> tuple[Backend, ...]:
    def build_eager(problem: Problem, device: torch.device) -> Fn:
        w = _performer_w(problem, device)
        return lambda q, k, v: performer_eager(q, k, v, problem, w)

    def build_chunked(problem: Problem, device: torch.device) -> Fn:
        w = _performer_w(problem, device)
        chunk, m, eps = int(problem.param("chunk")), w.shape[0], float(problem.param("eps", 0.0))
        if eps:
            phi_q, key_max, phi_k = fast_favor_stabilized(w, eps)

            def stabilized(q, k, v):
                with record_function("performer.key_max"):
                    top = key_max(k)
                return linear_chunked(q, k, v, problem, phi_q, lambda x: phi_k(x, top), "performer", m, False, chunk)

            return stabilized
        phi_q, log_phi_k = fast_favor(w)
        return lambda q, k, v: linear_chunked(q, k, v, problem, phi_q, log_phi_k, "performer", m, True, chunk)

    return (
        Backend("eager", build_eager, "FAVOR+ on the whole sequence; causal via cumsum (Lk×m×D memory)",
                workspace=eager_workspace),
        # the key features of up to 1024/chunk chunks at once and the query features: ~ one φ(Q), φ(K)
        Backend("chunked", build_chunked, "FAVOR+ in chunks with a running m×D state (O(L) memory)",
                workspace=feature_bytes),
    )


def performer_flops(p: Problem) -> float:
    m, d = int(p.param("nb_features")), p.head_dim
    rows_q, rows_k = p.batch * p.heads * p.seq_q, p.batch * p.kv_heads * p.seq_k
    features = 2.0 * (rows_q + rows_k) * m * d  # Wx' for every query and key row: 2·m·D each
    products = 2.0 * rows_k * m * d + 2.0 * rows_q * m * d  # S = φ(K)ᵀV, then φ(Q)S (causal: same)
    normaliser = 2.0 * rows_q * m  # φ(Q)z
    return features + products + normaliser


def _linear_resolve(**defaults):
    return lambda p: fill_defaults(p, **defaults)


PERFORMER_DEFAULTS = {"nb_features": 256, "orthogonal": True, "seed": 0, "chunk": CHUNK, "eps": 0.0}
PERFORMER = Variant(
    name="performer",
    family="linear",
    description="FAVOR+ positive orthogonal random features (m=nb_features), prefix sums when causal",
    time="O(L·m)",
    memory="O(L·m)",
    reference=exact_reference,
    flops=performer_flops,
    bytes=io_bytes,
    backends=_performer_backends() + (peers.performer_peer(_performer_w, eager_workspace),),
    resolve=_linear_resolve(**PERFORMER_DEFAULTS),
    why_unsupported=check_heads,
    oracle="eager",
    defaults=PERFORMER_DEFAULTS,
)


# ---------------------------------------------------------------- linear (elu + 1)
def _linear_backends() -> tuple[Backend, ...]:
    def build_eager(problem: Problem, device: torch.device) -> Fn:
        return lambda q, k, v: linear_eager(q, k, v, problem, elu_features, elu_features, "linear")

    def build_chunked(problem: Problem, device: torch.device) -> Fn:
        chunk = int(problem.param("chunk"))
        return lambda q, k, v: linear_chunked(
            q, k, v, problem, elu_features, elu_features, "linear", problem.head_dim, False, chunk
        )

    return (
        Backend("eager", build_eager, "φ=elu+1 on the whole sequence; causal via cumsum (Lk×D×D memory)",
                workspace=lambda p: elu_workspace(p, 1.5, prefix=p.causal)),
        Backend("chunked", build_chunked, "φ=elu+1 in chunks with a running D×D state (O(L) memory)",
                workspace=lambda p: elu_workspace(p, 2.0)),
    )


def elu_workspace(p: Problem, copies: float, prefix: bool = False) -> float:
    """fp32 features φ(Q), φ(K) of width D (each beside its elu temporary: 1.5 copies measured for
    the whole-sequence formulation, 2 chunked, at L = 512-1024 on the CPU); causal eager adds the
    Lk×D×D prefix sums per K/V head."""
    d = p.head_dim
    features = 4.0 * d * (p.batch * p.heads * p.seq_q + p.batch * p.kv_heads * p.seq_k)
    return copies * features + (4.0 * p.batch * p.kv_heads * p.seq_k * d * d if prefix else 0.0)


def linear_flops(p: Problem) -> float:
    d = p.head_dim
    rows_q, rows_k = p.batch * p.heads * p.seq_q, p.batch * p.kv_heads * p.seq_k
    return 2.0 * rows_k * d * d + 2.0 * rows_q * d * d + 2.0 * rows_q * d  # φ(K)ᵀV, φ(Q)S, φ(Q)z


LINEAR_DEFAULTS = {"chunk": CHUNK}
LINEAR = Variant(
    name="linear",
    family="linear",
    description="linear attention, φ = elu + 1 (Katharopoulos et al. 2020), prefix sums when causal",
    time="O(L)",
    memory="O(L)",
    reference=exact_reference,
    flops=linear_flops,
    bytes=io_bytes,
    backends=_linear_backends(),
    resolve=_linear_resolve(**LINEAR_DEFAULTS),
    why_unsupported=check_heads,
    oracle="eager",
    defaults=LINEAR_DEFAULTS,
)


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


def projected_bytes(p: Problem) -> float:
    """K and V projected to k rows: 2 × (B, Hkv, k, D)."""
    return 2.0 * p.batch * p.kv_heads * int(p.param("k")) * p.head_dim * p.itemsize


def linformer_eager_workspace(p: Problem) -> float:
    """The projections and materialised fp32 scores over the k projected keys (2.5 tensors of
    (B, Hq, Lq, k), as the cost model counts materialised scores)."""
    return projected_bytes(p) + 2.5 * 4 * p.batch * p.heads * p.seq_q * int(p.param("k"))


def _linformer_backends() -> tuple[Backend, ...]:
    def builder(use_sdpa: bool):
        def build(problem: Problem, device: torch.device) -> Fn:
            e, f = linformer_projections(problem, device)
            return lambda q, k, v: linformer_attention(q, k, v, e, f, use_sdpa)

        return build

    return (
        Backend("eager", builder(False), "project K, V to k rows, then materialised softmax over k keys",
                workspace=linformer_eager_workspace),
        Backend("sdpa", builder(True), "project K, V to k rows, then torch SDPA over k keys",
                workspace=projected_bytes),
    )


def linformer_flops(p: Problem) -> float:
    kp, d = int(p.param("k")), p.head_dim
    projections = 4.0 * p.batch * p.kv_heads * p.seq_k * kp * d  # E·K and F·V: 2·k·Lk·D each
    return projections + 4.0 * p.batch * p.heads * p.seq_q * kp * d  # QKpᵀ and PVp over k keys


def _linformer_supports(p: Problem) -> Reason:
    if p.causal:
        return "linformer cannot be causal: its projection E (k×Lk) mixes future positions into every key"
    if p.mode == "decode":
        return (
            "linformer cannot decode: E and F are fixed for one length Lk and mix all positions, "
            "so there is no incremental KV cache"
        )
    return check_heads(p)


LINFORMER_DEFAULTS = {"k": 256, "seed": 0}
LINFORMER = Variant(
    name="linformer",
    family="linear",
    description="Linformer: K, V projected along the sequence to k rows (random N(0,1/k) E, F)",
    time="O(L·k)",
    memory="O(L·k)",
    reference=exact_reference,
    flops=linformer_flops,
    bytes=io_bytes,
    backends=_linformer_backends() + (peers.linformer_peer(linformer_projections, linformer_eager_workspace),),
    resolve=_linear_resolve(**LINFORMER_DEFAULTS),
    why_unsupported=_linformer_supports,
    oracle="eager",
    defaults=LINFORMER_DEFAULTS,
)

VARIANTS = (PERFORMER, LINEAR, LINFORMER)
