"""Small FlashInfer Trace `gdn` definitions in the published format (decode and prefill, k-last
state [N, Hv, V, K], GVA), with a reference of our own: written per token and per value head in the
state's own V × K orientation, the decay and β computed from the raw gate inputs, unlike the
backends' batched forms."""

from __future__ import annotations

from fitrace_fixtures import _axes

REFERENCE_GDN = '''
import math
import torch


@torch.no_grad()
def _step(S, q, k, v, log_a, beta, scale):
    """One token of one value head: S (V, K) float32."""
    S = S * torch.exp(log_a)
    err = v - S @ k
    S = S + beta * torch.outer(err, k)
    return S, scale * (S @ q)


@torch.no_grad()
def run(q, k, v, state, A_log, a, dt_bias, b, scale, cu_seqlens=None):
    decode = cu_seqlens is None
    if decode:  # (B, 1, H, D): every sequence one token
        q, k, v, a, b = (x[:, 0] for x in (q, k, v, a, b))
        bounds = [(i, i + 1) for i in range(q.shape[0])]
    else:
        c = [int(x) for x in cu_seqlens]
        bounds = list(zip(c[:-1], c[1:]))
    hv, hqk, size = v.shape[1], q.shape[1], q.shape[2]
    if scale is None or float(scale) == 0.0:
        scale = 1.0 / math.sqrt(size)
    log_a = -torch.exp(A_log.float()) * torch.log1p(torch.exp(a.float() + dt_bias.float()))
    beta = 1.0 / (1.0 + torch.exp(-b.float()))
    out = torch.zeros(q.shape[0], hv, v.shape[2], dtype=q.dtype)
    new_state = torch.zeros(len(bounds), hv, v.shape[2], size, dtype=torch.float32)
    for n, (lo, hi) in enumerate(bounds):
        for h in range(hv):
            g = h * hqk // hv
            S = state[n, h].float().clone()
            for t in range(lo, hi):
                S, o = _step(S, q[t, g].float(), k[t, g].float(), v[t, h].float(), log_a[t, h], beta[t, h],
                             float(scale))
                out[t, h] = o.to(q.dtype)
            new_state[n, h] = S
    if decode:
        out = out[:, None]
    return out, new_state
'''


REFERENCE_GDN_MTP = '''
import math
import torch


@torch.no_grad()
def run(q, k, v, initial_state, initial_state_indices, A_log, a, dt_bias, b, scale, intermediate_states_buffer=None):
    """Each sequence from its pool slot, T tokens in order; the pool is returned unchanged (no state update)."""
    batch, steps, hqk, size = q.shape
    hv = v.shape[2]
    if scale is None or float(scale) == 0.0:
        scale = 1.0 / math.sqrt(size)
    decay = torch.exp(-torch.exp(A_log.float()) * torch.log1p(torch.exp(a.float() + dt_bias.float())))
    beta = 1.0 / (1.0 + torch.exp(-b.float()))
    out = torch.zeros(batch, steps, hv, v.shape[3], dtype=q.dtype)
    for n in range(batch):
        for h in range(hv):
            g = h * hqk // hv
            S = initial_state[int(initial_state_indices[n]), h].float().clone()
            for t in range(steps):
                kt = k[n, t, g].float()
                S = S * decay[n, t, h]
                S = S + beta[n, t, h] * torch.outer(v[n, t, h].float() - S @ kt, kt)
                out[n, t, h] = (float(scale) * (S @ q[n, t, g].float())).to(q.dtype)
    return out, initial_state.clone()
'''


def gdn_mtp(hqk: int = 2, hv: int = 4, size: int = 16) -> dict:
    """A gdn mtp definition of our own (var batch_size, seq_len, pool_size), with the optional buffer."""
    tok = ["batch_size", "seq_len"]
    pool = ["pool_size", "num_v_heads", "head_size", "head_size"]
    inputs = {"q": {"shape": [*tok, "num_q_heads", "head_size"], "dtype": "bfloat16"},
              "k": {"shape": [*tok, "num_k_heads", "head_size"], "dtype": "bfloat16"},
              "v": {"shape": [*tok, "num_v_heads", "head_size"], "dtype": "bfloat16"},
              "initial_state": {"shape": pool, "dtype": "float32"},
              "initial_state_indices": {"shape": ["batch_size"], "dtype": "int32"},
              "A_log": {"shape": ["num_v_heads"], "dtype": "float32"},
              "a": {"shape": [*tok, "num_v_heads"], "dtype": "bfloat16"},
              "dt_bias": {"shape": ["num_v_heads"], "dtype": "float32"},
              "b": {"shape": [*tok, "num_v_heads"], "dtype": "bfloat16"},
              "scale": {"shape": None, "dtype": "float32"},
              "intermediate_states_buffer": {"shape": ["pool_size", "seq_len", "num_v_heads", "head_size",
                                                       "head_size"], "dtype": "float32", "optional": True}}
    return {"name": f"test_gdn_mtp_qk{hqk}_v{hv}_d{size}_k_last", "op_type": "gdn", "tags": ["stage:mtp"],
            "axes": _axes({"num_q_heads": hqk, "num_k_heads": hqk, "num_v_heads": hv, "head_size": size},
                          ["batch_size", "seq_len", "pool_size"]),
            "inputs": inputs,
            "outputs": {"output": {"shape": [*tok, "num_v_heads", "head_size"], "dtype": "bfloat16"},
                        "final_state": {"shape": pool, "dtype": "float32"}},
            "reference": REFERENCE_GDN_MTP}


def gdn(stage: str, hqk: int = 2, hv: int = 4, size: int = 16) -> dict:
    """A gdn definition of our own: decode (var batch_size) or prefill (var total_seq_len, num_seqs,
    len_cu_seqlens)."""
    const = {"num_q_heads": hqk, "num_k_heads": hqk, "num_v_heads": hv, "head_size": size}
    if stage == "decode":
        axes = _axes({**const, "seq_len": 1}, ["batch_size"])
        tok, seqs = ["batch_size", "seq_len"], "batch_size"
    else:
        axes = _axes(const, ["total_seq_len", "num_seqs", "len_cu_seqlens"])
        tok, seqs = ["total_seq_len"], "num_seqs"
    inputs = {"q": {"shape": [*tok, "num_q_heads", "head_size"], "dtype": "bfloat16"},
              "k": {"shape": [*tok, "num_k_heads", "head_size"], "dtype": "bfloat16"},
              "v": {"shape": [*tok, "num_v_heads", "head_size"], "dtype": "bfloat16"},
              "state": {"shape": [seqs, "num_v_heads", "head_size", "head_size"], "dtype": "float32"},
              "A_log": {"shape": ["num_v_heads"], "dtype": "float32"},
              "a": {"shape": [*tok, "num_v_heads"], "dtype": "bfloat16"},
              "dt_bias": {"shape": ["num_v_heads"], "dtype": "float32"},
              "b": {"shape": [*tok, "num_v_heads"], "dtype": "bfloat16"}}
    if stage != "decode":
        inputs["cu_seqlens"] = {"shape": ["len_cu_seqlens"], "dtype": "int64"}
    inputs["scale"] = {"shape": None, "dtype": "float32"}
    return {"name": f"test_gdn_{stage}_qk{hqk}_v{hv}_d{size}_k_last", "op_type": "gdn",
            "tags": [f"stage:{stage}", "layout:k-last"], "axes": axes, "inputs": inputs,
            "outputs": {"output": {"shape": [*tok, "num_v_heads", "head_size"], "dtype": "bfloat16"},
                        "new_state": {"shape": [seqs, "num_v_heads", "head_size", "head_size"],
                                      "dtype": "float32"}},
            "reference": REFERENCE_GDN}
