"""FlashInfer Trace `gdn` (Gated DeltaNet) definitions, decode and prefill, on attnbench's `gdn`
variant (variants/gdn.py): the inputs synthesized from the axes, the backends, the float64 oracle
and the cost of one call.

The published definitions (gdn_decode_*, gdn_prefill_*: GVA, q/k heads Hqk, value heads Hv a
multiple of them, head size K = V, "k-last" state [N, Hv, V, K]) compute, per value head h (q/k
head h // (Hv/Hqk)) and token t:

    g_t = exp(−exp(A_log) · softplus(a_t + dt_bias))      the decay, in (0, 1)
    β_t = sigmoid(b_t)
    S   = g_t · S;  S += β_t (v_t − S k_t) k_tᵀ           S (V × K): the delta rule
    o_t = scale · S q_t                                    scale 0 or missing: 1/√K

q and k are taken as given (no L2 norm inside: variants/gdn.py's `qk_norm=none`). decode: inputs
(B, 1, H, D), state (B, Hv, V, K); prefill: packed (T, H, D) tokens, sequences by `cu_seqlens`,
state (N, Hv, V, K) per sequence. Outputs: `output` in q's dtype and `new_state` float32.
mtp (multi-token prediction, speculative verification): inputs (B, T, H, D), each sequence's
initial state read from a pool (P, Hv, V, K) at initial_state_indices[b]; outputs `output`
(B, T, Hv, V) and `final_state`, which the published reference returns as the pool unchanged
(flashinfer's disable_state_update=True): the backends do the same (a copy of the pool), so for mtp
the state check only confirms the pool is untouched and the output carries the check. The optional
`intermediate_states_buffer` (a side buffer the reference writes in place, not an output) is not
given, to the reference or to the backends.

Backends (`fn(inputs) -> (output, new_state)`):
    recurrent  the recurrence step by step in float32 (variants/gdn.py `recurrent`), the
               sequences of a prefill padded at their end to the longest with tokens that change
               nothing (g = 1, β = 0, k = 0), one batched step per token
    chunked    prefill: the WY/UT chunked form (variants/gdn.py `chunked`, chunks of 64) on the same
               padded batch; decode of one token: the chunk is one recurrent step, so chunked is
               the recurrent step (the same code, said so in its description)
The gather and padding are in the call, the index of it in setup. The oracle: the same recurrence
in float64 from the same inputs, output and state kept in float64.

Synthesized inputs (no blob): q, k N(0, 1) rows normalised to unit length (the model L2-normalises
them before the kernel; raw N(0, 1) keys of length √K make I − β k kᵀ expand by up to βK per step
and the recurrence overflow), then rounded to their dtype; v N(0, 1); state N(0, 1/K) (the scale a
unit-key delta rule keeps); A_log = log U(1, 16), dt_bias = softplus⁻¹(U_log(1e-3, 0.1)) (how
Qwen3-Next initialises them), a, b N(0, 1): decays over (0.007, 1) and β over (0.1, 0.9).
`cu_seqlens` from the known lengths, else total_seq_len split at random over num_seqs;
`initial_state_indices` distinct pool slots (a seeded permutation; pool_size >= batch_size).
"""

from __future__ import annotations

import math
import random as pyrandom

import torch
import torch.nn.functional as F

from attnbench.variants.gdn import chunked, recurrent

CHUNK = 64
GDN_STAGES = ("decode", "prefill", "mtp")
SIDE_BUFFERS = ("intermediate_states_buffer",)  # optional, written in place by the reference: not given


# ---------------------------------------------------------------- inputs
def _split(total: int, parts: int, rng: pyrandom.Random) -> list[int]:
    if parts <= 0:
        return []
    cuts = sorted(rng.randint(0, total) for _ in range(parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total])]


def fill_inputs(d, axes: dict[str, int], have: dict, seed: int, lengths: str | None) -> tuple[dict, list[str]]:
    """`have` completed with every input of gdn definition `d` it lacks (see the module docstring),
    the side buffers (SIDE_BUFFERS) left out."""
    notes: list[str] = []
    out = dict(have)
    g = torch.Generator().manual_seed(seed)
    size = axes["head_size"]
    if "cu_seqlens" in d.inputs and "cu_seqlens" not in out:
        if lengths:
            seqs = [int(x) for x in lengths.split(";")[-1].split(",")]
        else:
            rng = pyrandom.Random(f"attnbench fitrace {d.name} {sorted(axes.items())} {seed}")
            seqs = _split(axes["total_seq_len"], axes["len_cu_seqlens"] - 1, rng)
        out["cu_seqlens"] = torch.tensor([0, *torch.tensor(seqs).cumsum(0).tolist()], dtype=torch.int64)
    if "initial_state_indices" in d.inputs and "initial_state_indices" not in out:
        pool, batch = axes["pool_size"], axes["batch_size"]
        if pool < batch:
            raise ValueError(f"cannot synthesize initial_state_indices: {batch} distinct slots asked of a pool "
                             f"of {pool}")
        out["initial_state_indices"] = torch.randperm(pool, generator=g)[:batch].to(torch.int32)
    for name, spec in d.inputs.items():
        if name in SIDE_BUFFERS:
            out.pop(name, None)
            notes.append(f"{name}: optional side buffer (the reference writes it in place; not an output): not given")
            continue
        if name in out:
            continue
        shape = tuple(axes[a] for a in (spec.shape or []))
        dtype = getattr(torch, spec.dtype)
        if spec.shape is None:  # scale: the definitions' default 1/sqrt(head_size)
            out[name] = 1.0 / math.sqrt(size)
            notes.append(f"{name}: no value given; used 1/sqrt({size})")
        elif name in ("q", "k"):
            x = torch.randn(shape, generator=g)
            out[name] = (x / x.norm(dim=-1, keepdim=True)).to(dtype)
        elif name in ("state", "initial_state"):
            out[name] = (torch.randn(shape, generator=g) / math.sqrt(size)).to(dtype)
        elif name == "A_log":
            out[name] = torch.log(1.0 + 15.0 * torch.rand(shape, generator=g)).to(dtype)
        elif name == "dt_bias":
            dt = torch.exp(math.log(1e-3) + (math.log(0.1) - math.log(1e-3)) * torch.rand(shape, generator=g))
            out[name] = (dt + torch.log(-torch.expm1(-dt))).to(dtype)  # softplus⁻¹(dt)
        else:  # v, a, b
            out[name] = torch.randn(shape, generator=g).to(dtype)
    return out, notes


# ---------------------------------------------------------------- the batch
def seq_lengths(stage: str, inputs: dict) -> list[int]:
    """Tokens per sequence: decode one each; mtp T each; prefill from cu_seqlens."""
    if stage in ("decode", "mtp"):
        return [inputs["q"].shape[1]] * inputs["q"].shape[0]
    cu = [int(x) for x in inputs["cu_seqlens"].detach().cpu().tolist()]
    return [cu[i + 1] - cu[i] for i in range(len(cu) - 1)]


def _scale(x: dict) -> float:
    s = x["scale"]
    s = float(s) if s is not None else 0.0
    return s if s != 0.0 else 1.0 / math.sqrt(x["q"].shape[-1])


def _gates(x: dict, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(log decay, β) in the shape of `a` (..., Hv)."""
    logg = -torch.exp(x["A_log"].to(dt)) * F.softplus(x["a"].to(dt) + x["dt_bias"].to(dt))
    return logg, torch.sigmoid(x["b"].to(dt))


def _expand(t: torch.Tensor, hv: int) -> torch.Tensor:
    return t.repeat_interleave(hv // t.shape[-2], dim=-2)


def solver(stage: str, inputs: dict, device: torch.device, dt: torch.dtype, use_chunks: bool):
    """fn(x) -> (output, new_state) computing in `dt`; the padded index is built here (setup)."""
    lens = seq_lengths(stage, inputs)
    width = max(lens, default=1) or 1
    starts = [0, *torch.tensor(lens).cumsum(0).tolist()][:-1]
    pos = torch.arange(width)[None, :]
    valid = (pos < torch.tensor(lens)[:, None]).to(device)
    idx = torch.where(valid.cpu(), torch.tensor(starts)[:, None] + pos, 0).to(device)
    rows = idx[valid]

    def run(x: dict):
        hv = x["v"].shape[-2]
        logg, beta = _gates(x, dt)
        state = x.get("state")
        s0 = None if state is None else state.to(dt)
        if stage == "mtp":  # each sequence's state from the pool; the pool itself is returned as given
            s0 = x["initial_state"].to(dt).index_select(0, x["initial_state_indices"].long())
        if stage in ("decode", "mtp"):  # (B, T, H, D) -> (B, H, T, D)
            q, k = (_expand(x[n], hv).to(dt).transpose(1, 2) for n in ("q", "k"))
            v = x["v"].to(dt).transpose(1, 2)
            g_, b_ = logg.transpose(1, 2), beta.transpose(1, 2)
            if use_chunks and q.shape[2] > 1:
                out, s = chunked(q, k, v, g_, b_, s0, _scale(x), min(CHUNK, q.shape[2]))
            else:
                out, s = recurrent(q, k, v, g_, b_, s0, _scale(x))
            if stage == "mtp":
                s = x["initial_state"].clone()
            return out.transpose(1, 2).to(x["v"].dtype if dt != torch.float64 else dt), s.to(
                torch.float32 if dt != torch.float64 else dt)
        m = valid[..., None, None]
        q, k = (torch.where(m, _expand(x[n], hv).to(dt)[idx], 0).transpose(1, 2) for n in ("q", "k"))
        v = torch.where(m, x["v"].to(dt)[idx], 0).transpose(1, 2)
        logg = torch.where(valid[..., None], logg[idx], 0).transpose(1, 2)
        beta = torch.where(valid[..., None], beta[idx], 0).transpose(1, 2)
        if use_chunks:
            out, s = chunked(q, k, v, logg, beta, s0, _scale(x), CHUNK)
        else:
            out, s = recurrent(q, k, v, logg, beta, s0, _scale(x))
        out = out.transpose(1, 2)[valid]  # (T, Hv, V), packed again in token order
        packed = torch.empty_like(out)
        packed[rows] = out
        return packed.to(x["v"].dtype if dt != torch.float64 else dt), s.to(
            torch.float32 if dt != torch.float64 else dt)

    return run


def build_recurrent(op: str, stage: str, inputs: dict, device: torch.device):
    return solver(stage, inputs, device, torch.float32, use_chunks=False)


def build_chunked(op: str, stage: str, inputs: dict, device: torch.device):
    """prefill and mtp: the chunked form (mtp: one chunk of its T tokens); decode: the recurrent step."""
    return solver(stage, inputs, device, torch.float32, use_chunks=stage != "decode")


def oracle(stage: str, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence in float64 from the same inputs: (output, new_state), both float64."""
    device = inputs["q"].device
    with torch.no_grad():
        return solver(stage, inputs, device, torch.float64, use_chunks=False)(inputs)


def cost(stage: str, inputs: dict) -> tuple[float, float, dict]:
    """(FLOPs, bytes, per-sequence token counts {min, mean, max, total}) of one call: 7·K·V products
    per token and value head (the decay, S k, the rank-one update, S q, as variants/gdn.py counts);
    q, k, v, a, b, A_log, dt_bias read once, the state read and the new state written (float32),
    the output written."""
    lens = seq_lengths(stage, inputs)
    q, v = inputs["q"], inputs["v"]
    hv, dk, dv, hqk = v.shape[-2], q.shape[-1], v.shape[-1], q.shape[-2]
    tokens = sum(lens)
    flops = 7.0 * dk * dv * hv * tokens
    item = q.element_size()
    io = tokens * (2 * hqk * dk + 2 * hv * dv + 2 * hv) * item + 8 * hv
    state = (inputs.get("state") is not None or "initial_state" in inputs) * len(lens) * hv * dv * dk * 4.0
    nbytes = float(io + state + len(lens) * hv * dv * dk * 4.0)
    stats = {"min": min(lens), "mean": tokens / len(lens), "max": max(lens), "total": tokens} if lens else None
    return flops, nbytes, stats
