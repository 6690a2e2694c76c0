"""Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024, arXiv:2412.06464; Qwen3-Next's linear layers).
Variant `gdn`, family "linear-recurrent".

Per value head a state S (V × K, "k-last": the layout [B, H, V, K] of flashinfer-bench's `gdn`
definitions) replaces the KV cache. Per token t, with α_t = exp(g_t) ∈ (0, 1] and β_t ∈ (0, 1):

    S̃   = α_t · S                          decay (the gate)
    u_t = β_t · (v_t − S̃ k_t)             the delta rule: what S̃ mispredicts for k_t
    S   = S̃ + u_t k_tᵀ                     (V × K)
    o_t = scale · S q_t                    scale = 1/√K

q and k are L2-normalised first (`qk_norm=l2`, as Qwen3-Next calls FLA with
use_qk_l2norm_in_kernel; `qk_norm=none` takes them as given, as flashinfer's definitions do).
The gates come as the model computes them: g = −exp(A_log)·softplus(a + dt_bias), β = sigmoid(b),
with A_log, dt_bias (Hv,) and a, b (B, Hv, L) drawn in each backend's setup from GATE_SEED (in a
model they are projections of the hidden state; here they are fixed by the problem, so every
backend and the fp64 reference see the same gates). GVA: heads = Hv value heads, kv_heads = the
q/k heads (Hv a multiple of them, value head h reads q/k head h // (Hv/Hqk)); head_dim = K = V.

Modes
  decode  one token; the state is the cache: S (B, Hv, V, K) fp32, drawn in setup from STATE_SEED
          (N(0, 1/K)), read, updated into a new buffer (the input state is left as it was, so
          every timed call does the same work). Bytes per sequence are constant in L (seq_k is
          only the context length the state summarises): `kv_cache_bytes` = B·Hv·V·K·4.
  fwd     prefill of L tokens from a zero state (causal by construction; the final state is
          computed, not returned).

Backends
  recurrent  the step-by-step recurrence above (the reference; in float64 it is the oracle),
             one batched step per token: O(L) steps.
  chunked    the WY/UT form in chunks of `chunk` tokens (64): inside a chunk, with cumulative log
             gates G_i and T = (I + A)⁻¹, A_ij = β_i e^{G_i−G_j} k_i·k_j (j < i), found by one
             unit-triangular solve with right-hand sides [β v | β e^G k] (giving U', W); then per
             chunk in sequence: U = U' − W Sᵀ, O = scale·(e^G q Sᵀ + (q kᵀ ⊙ e^{G_i−G_j}, j ≤ i) U),
             S ← e^{G_c} S + Uᵀ (e^{G_c−G} k). A decode step is one recurrent step (chunk of 1).
  fla        flash-linear-attention's chunk_gated_delta_rule / fused_recurrent_gated_delta_rule
             (Triton GPU kernels): unavailable without a CUDA device.

FLOPs (`gdn_flops`) count products, as attention FLOPs do (the gates, the L2 norms and other
element-wise work are left out): a recurrent step is 7·K·V per value head (the decay K·V,
S̃k, u kᵀ and S q 2·K·V each); a chunk of c tokens is 2c²K (k kᵀ) + 2c²K (q kᵀ) + 2c²V (P·U)
+ c(c−1)(K+V) (the unit-triangular solve, c(c−1)/2 multiply-adds per right-hand side) + 6cKV
(W Sᵀ, q Sᵀ, the state update) + KV (the decay of S). decode counts the step, fwd the chunks
(the last chunk partial; the chunked backend pads it: that padding is not counted).
Honest limits: modes decode and fwd only (no backward); `--inputs peaked` does not apply; the
attention entropy is not recorded; the recurrent backend in fwd takes L Python steps (slow past
a few thousand tokens; the fp64 reference is skipped there by the run's reference limit).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from attnbench.core.problem import Problem
from attnbench.variants.base import Backend, Fn, Reason, Variant
from attnbench.variants.shared import fill_defaults

DEFAULTS = {"chunk": 64, "qk_norm": "l2"}
QK_NORMS = ("l2", "none")
GATE_SEED, STATE_SEED = 2412, 6464
NORM_EPS = 1e-6  # FLA's l2norm: x / sqrt(Σx² + eps)


# ---------------------------------------------------------------- the problem's fixed inputs
def gate_params(p: Problem, device, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    """(A_log (Hv,), dt_bias (Hv,), a (B, Hv, L), b (B, Hv, L)) from GATE_SEED, as Qwen3-Next
    initialises them: A = U(1, 16), dt = log-uniform in [1e-3, 0.1] (dt_bias = softplus⁻¹(dt));
    a, b standard normal (the projections' outputs)."""
    g = torch.Generator(device="cpu").manual_seed(GATE_SEED)
    h, n = p.heads, p.seq_q
    a_log = torch.log(1.0 + 15.0 * torch.rand(h, generator=g))
    dt = torch.exp(math.log(1e-3) + (math.log(0.1) - math.log(1e-3)) * torch.rand(h, generator=g))
    dt_bias = dt + torch.log(-torch.expm1(-dt))  # softplus⁻¹(dt)
    a, b = (torch.randn(p.batch, h, n, generator=g) for _ in range(2))
    return tuple(t.to(device=device, dtype=dtype) for t in (a_log, dt_bias, a, b))


def gates(a_log, dt_bias, a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """(g = log α ≤ 0, β) (B, Hv, L): g = −exp(A_log)·softplus(a + dt_bias), β = sigmoid(b)."""
    g = -torch.exp(a_log)[:, None] * F.softplus(a + dt_bias[:, None])
    return g, torch.sigmoid(b)


def initial_state(p: Problem, device, dtype=torch.float32) -> torch.Tensor | None:
    """Decode: the cache, S (B, Hv, V, K) ~ N(0, 1/K) from STATE_SEED; prefill: None (zero)."""
    if p.mode != "decode":
        return None
    g = torch.Generator(device="cpu").manual_seed(STATE_SEED)
    s = torch.randn(p.batch, p.heads, p.head_dim, p.head_dim, generator=g) / math.sqrt(p.head_dim)
    return s.to(device=device, dtype=dtype)


def scale(p: Problem) -> float:
    return 1.0 / math.sqrt(p.head_dim)


def prepare(q, k, p: Problem, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k (B, Hqk, L, K) -> L2-normalised (qk_norm=l2), in `dtype`, expanded to the Hv value
    heads (value head h reads q/k head h // G)."""
    q, k = q.to(dtype), k.to(dtype)
    if p.param("qk_norm") == "l2":
        q, k = (x * torch.rsqrt((x * x).sum(-1, keepdim=True) + NORM_EPS) for x in (q, k))
    return q.repeat_interleave(p.groups, 1), k.repeat_interleave(p.groups, 1)


# ---------------------------------------------------------------- the recurrence (reference)
def recurrent(q, k, v, g, beta, s0, sc: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Step by step. q, k (B, H, L, K), v (B, H, L, V), g, beta (B, H, L), s0 (B, H, V, K) or
    None; all in one float dtype. Returns (out (B, H, L, V), final state (B, H, V, K))."""
    b, h, n, dk = k.shape
    s = torch.zeros(b, h, v.shape[-1], dk, dtype=q.dtype, device=q.device) if s0 is None else s0.clone()
    out = torch.empty(b, h, n, v.shape[-1], dtype=q.dtype, device=q.device)
    alpha = g.exp()
    for t in range(n):
        s = s * alpha[..., t, None, None]  # S̃ = α S: K·V
        pred = torch.einsum("bhvk,bhk->bhv", s, k[..., t, :])  # S̃ k: 2·K·V
        u = beta[..., t, None] * (v[..., t, :] - pred)
        s = s + u[..., :, None] * k[..., t, None, :]  # + u kᵀ: 2·K·V
        out[..., t, :] = torch.einsum("bhvk,bhk->bhv", s, q[..., t, :]) * sc  # S q: 2·K·V
    return out, s


def reference(q, k, v, p: Problem) -> torch.Tensor:
    """The recurrence in the inputs' dtype (float64 for the oracle), gates and state from the seeds."""
    dt = q.dtype if q.dtype == torch.float64 else torch.float32
    qe, ke = prepare(q, k, p, dt)
    g, beta = gates(*gate_params(p, q.device, dt))
    out, _ = recurrent(qe, ke, v.to(dt), g, beta, initial_state(p, q.device, dt), scale(p))
    return out.to(q.dtype)


# ---------------------------------------------------------------- the chunked (WY/UT) form
def chunked(q, k, v, g, beta, s0, sc: float, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The WY/UT chunked form (see the module docstring); same arguments and results as
    `recurrent`. The sequence is padded to a multiple of `chunk` with tokens that change
    nothing (α = 1, β = 0, k = 0)."""
    b, h, n, dk = k.shape
    dv = v.shape[-1]
    pad = -n % chunk
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = F.pad(g, (0, pad)), F.pad(beta, (0, pad))
    nc = (n + pad) // chunk
    q, k, v = (x.reshape(b, h, nc, chunk, x.shape[-1]) for x in (q, k, v))
    g, beta = g.reshape(b, h, nc, chunk).cumsum(-1), beta.reshape(b, h, nc, chunk)  # g: cumulative G_i
    i = torch.arange(chunk, device=q.device)
    below, upto = i[:, None] > i[None, :], i[:, None] >= i[None, :]
    diff = g[..., :, None] - g[..., None, :]  # G_i − G_j (B, H, N, c, c)
    decay_incl = torch.where(upto, diff, float("-inf")).exp()  # e^{G_i − G_j}, j ≤ i
    a = (k @ k.transpose(-1, -2)) * decay_incl * beta[..., :, None]  # 2c²K per chunk
    a = a.masked_fill(~below, 0.0)
    eye = torch.eye(chunk, dtype=q.dtype, device=q.device)
    rhs = torch.cat([v * beta[..., None], k * (beta * g.exp())[..., None]], -1)  # [β v | β e^G k]
    x = torch.linalg.solve_triangular(eye + a, rhs, upper=False, unitriangular=True)  # c(c−1)(K+V)
    u0, w = x[..., :dv], x[..., dv:]
    attn = (q @ k.transpose(-1, -2)) * decay_incl  # 2c²K per chunk
    q_g = q * g.exp()[..., None]  # e^{G_i} q_i
    last = g[..., -1:]  # G_c (B, H, N, 1)
    k_g = k * (last - g).exp()[..., None]  # e^{G_c − G_j} k_j
    s = torch.zeros(b, h, dv, dk, dtype=q.dtype, device=q.device) if s0 is None else s0
    out = torch.empty(b, h, nc, chunk, dv, dtype=q.dtype, device=q.device)
    for c in range(nc):
        st = s.transpose(-1, -2)  # Sᵀ (K × V)
        u = u0[:, :, c] - w[:, :, c] @ st  # 2cKV
        out[:, :, c] = (q_g[:, :, c] @ st + attn[:, :, c] @ u) * sc  # 2cKV + 2c²V
        s = s * last[:, :, c, :, None].exp() + u.transpose(-1, -2) @ k_g[:, :, c]  # KV + 2cKV
    return out.reshape(b, h, nc * chunk, dv)[:, :, :n], s


# ---------------------------------------------------------------- backends
def _setup(p: Problem, device):
    dt = torch.float32
    return gate_params(p, device, dt), initial_state(p, device, dt)


def _recurrent_build(p: Problem, device: torch.device) -> Fn:
    params, s0 = _setup(p, device)
    sc = scale(p)

    def gdn_recurrent(q, k, v):
        qe, ke = prepare(q, k, p, torch.float32)
        g, beta = gates(*params)
        return recurrent(qe, ke, v.float(), g, beta, s0, sc)[0].to(q.dtype)

    return gdn_recurrent


def _chunked_build(p: Problem, device: torch.device) -> Fn:
    params, s0 = _setup(p, device)
    sc, size = scale(p), int(p.param("chunk"))
    step = p.mode == "decode"

    def gdn_chunked(q, k, v):
        qe, ke = prepare(q, k, p, torch.float32)
        g, beta = gates(*params)
        if step:  # one token: the chunk is the step
            return recurrent(qe, ke, v.float(), g, beta, s0, sc)[0].to(q.dtype)
        return chunked(qe, ke, v.float(), g, beta, s0, sc, size)[0].to(q.dtype)

    return gdn_chunked


def _fla_available(device: torch.device) -> Reason:
    if device.type != "cuda":
        return ("flash-linear-attention's kernels are Triton GPU kernels: without a CUDA device its calls raise "
                "'0 active drivers' (measured, fla 0.6.0 on CPU)")
    try:
        import fla.ops.gated_delta_rule  # noqa: F401
    except ImportError as e:
        return f"flash-linear-attention is not importable ({e}); pip install flash-linear-attention"
    return None


def _fla_build(p: Problem, device: torch.device) -> Fn:
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

    params, s0 = _setup(p, device)
    sc, l2 = scale(p), p.param("qk_norm") == "l2"
    call = fused_recurrent_gated_delta_rule if p.mode == "decode" else chunk_gated_delta_rule

    def gdn_fla(q, k, v):  # fla takes (B, L, H, D) and g in log space; state_v_first: [B, H, V, K]
        g, beta = gates(*params)
        out, _ = call(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), g=g.transpose(1, 2),
                      beta=beta.transpose(1, 2), scale=sc, initial_state=s0, output_final_state=True,
                      use_qk_l2norm_in_kernel=l2, state_v_first=True)
        return out.transpose(1, 2)

    return gdn_fla


BACKENDS = (
    Backend("chunked", _chunked_build, "WY/UT chunked form in torch (chunks of `chunk`, one triangular solve per "
            "chunk, chunks in sequence); decode: one recurrent step"),
    Backend("recurrent", _recurrent_build, "the recurrence step by step in torch (the reference formulation)"),
    Backend("fla", _fla_build, "flash-linear-attention's chunk_gated_delta_rule (prefill) and "
            "fused_recurrent_gated_delta_rule (decode)", why_unavailable=_fla_available),
)


# ---------------------------------------------------------------- problem and cost model
def resolve(p: Problem) -> Problem:
    p = fill_defaults(p, kv_heads=max(1, p.heads // 2), **DEFAULTS)
    seq_q = 1 if p.mode == "decode" else p.seq_q
    return replace(p, seq_q=seq_q, seq_k=p.seq_k if p.mode == "decode" else seq_q, causal=True)


def supports(p: Problem) -> Reason:
    if p.kv_heads < 1 or p.heads % p.kv_heads:
        return f"gdn's q/k heads (kv_heads={p.kv_heads}) must divide its value heads (heads={p.heads})"
    chunk = p.param("chunk")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        return f"bad chunk {chunk!r}; accepted: an integer >= 1 (64: FLA's and flashinfer's)"
    if p.param("qk_norm") not in QK_NORMS:
        return f"unknown qk_norm '{p.param('qk_norm')}'; accepted: {', '.join(QK_NORMS)}"
    return None


def make_inputs(p: Problem, device: torch.device, seed: int = 0):
    """q, k (B, Hqk, Lq, K) and v (B, Hv, Lq, V), standard normal from a CPU generator."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d = p.head_dim
    q, k = (torch.randn(p.batch, p.kv_heads, p.seq_q, d, generator=gen) for _ in range(2))
    v = torch.randn(p.batch, p.heads, p.seq_q, d, generator=gen)
    return tuple(t.to(device=device, dtype=p.torch_dtype) for t in (q, k, v))


def chunk_flops(c: int, dk: int, dv: int) -> float:
    """One chunk of c tokens, one value head (the module docstring's count)."""
    return 2.0 * c * c * (2 * dk + dv) + c * (c - 1) * (dk + dv) + 6.0 * c * dk * dv + dk * dv


def gdn_flops(p: Problem) -> float:
    d, heads = p.head_dim, p.batch * p.heads
    if p.mode == "decode":
        return 7.0 * d * d * heads
    size = int(p.param("chunk"))
    full, rest = divmod(p.seq_q, size)
    return heads * (full * chunk_flops(size, d, d) + (chunk_flops(rest, d, d) if rest else 0.0))


def state_bytes(p: Problem) -> float:
    """The cache: B·Hv·V·K fp32 state, whatever the inputs' dtype (constant in L)."""
    return 4.0 * p.batch * p.heads * p.head_dim * p.head_dim


def gdn_bytes(p: Problem) -> float:
    """Read q, k, v and the gate inputs (a, b fp32 per token and value head; A_log, dt_bias), write
    the output and the new state; decode also reads the state."""
    tokens = p.batch * p.seq_q
    io = tokens * (2 * p.kv_heads + 2 * p.heads) * p.head_dim * p.itemsize
    gate = 4.0 * (2 * tokens * p.heads + 2 * p.heads)
    return io + gate + state_bytes(p) * (2 if p.mode == "decode" else 1)


GDN = Variant(
    name="gdn", family="linear-recurrent", oracle="reference", decode_check=True,
    description="Gated DeltaNet (Qwen3-Next): a gated delta-rule V×K state per value head instead of a KV "
                "cache; GVA (default q/k heads = heads/2); chunked prefill, recurrent decode",
    time="O(L)", memory="O(L)", reference=reference, flops=gdn_flops, bytes=gdn_bytes, backends=BACKENDS,
    resolve=resolve, why_unsupported=supports, defaults=dict(DEFAULTS), make_inputs=make_inputs,
    modes=("fwd", "decode"), kv_cache_bytes=state_bytes)

VARIANTS = (GDN,)
