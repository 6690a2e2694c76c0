"""Small FlashInfer Trace files written here in the published format, with reference code of our own
(a token-by-token gather and a float32 softmax written from the op pages' math, rounded to the
output dtype as the published references do), so the tests never depend on the published dataset."""

from __future__ import annotations

import json
from pathlib import Path

# Our own reference: every op type through one function; a sequence's keys are gathered token by
# token (page_id * page_size + offset), its queries attend causally aligned bottom-right.
REFERENCE = '''
import math
import torch


def _keys(b, kv_indptr, kv_indices, kv_last_page_len, page_size):
    if kv_indices is None:
        return list(range(int(kv_indptr[b]), int(kv_indptr[b + 1])))
    pages = [int(p) for p in kv_indices[int(kv_indptr[b]):int(kv_indptr[b + 1])]]
    out = []
    for n, page in enumerate(pages):
        used = page_size
        if n == len(pages) - 1 and kv_last_page_len is not None:
            used = int(kv_last_page_len[b])
        out += [page * page_size + t for t in range(used)]
    return out


@torch.no_grad()
def run(sm_scale, kv_indptr, q=None, q_nope=None, q_pe=None, k=None, v=None, k_cache=None, v_cache=None,
        ckv_cache=None, kpe_cache=None, kv_indices=None, kv_last_page_len=None, qo_indptr=None):
    if q_nope is not None:
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([ckv_cache, kpe_cache], dim=-1).flatten(0, 1)[:, None]
        v = ckv_cache.flatten(0, 1)[:, None]
        page_size = ckv_cache.shape[1]
    elif k_cache is not None:
        k, v, page_size = k_cache.flatten(0, 1), v_cache.flatten(0, 1), k_cache.shape[1]
    else:
        page_size = 1
    batch = kv_indptr.shape[0] - 1
    rows = q.shape[0]
    heads, kv_heads = q.shape[1], k.shape[1]
    output = torch.zeros(rows, heads, v.shape[-1], dtype=q.dtype)
    lse = torch.full((rows, heads), -math.inf, dtype=torch.float32)
    for b in range(batch):
        first, n_q = (b, 1) if qo_indptr is None else (int(qo_indptr[b]), int(qo_indptr[b + 1] - qo_indptr[b]))
        slots = _keys(b, kv_indptr, kv_indices, kv_last_page_len, page_size)
        if n_q == 0 or not slots:
            continue
        kb = k[slots].float()
        vb = v[slots].float()
        for i in range(n_q):
            seen = len(slots) - n_q + i + 1
            if seen <= 0:  # a query before the first key sees nothing: a softmax over nothing is undefined
                output[first + i] = float("nan")
                continue
            for h in range(heads):
                g = h // (heads // kv_heads)
                s = (kb[:seen, g] @ q[first + i, h].float()) * sm_scale
                m = s.max()
                e = torch.exp(s - m)
                lse[first + i, h] = (m + torch.log(e.sum())) / math.log(2.0)
                output[first + i, h] = ((e / e.sum()) @ vb[:seen, g]).to(q.dtype)
    return output, lse
'''


# Our own DSA reference: each token attends the cache rows its sparse_indices name (−1: none).
REFERENCE_DSA = '''
import math
import torch


@torch.no_grad()
def run(q_nope, q_pe, ckv_cache, kpe_cache, sparse_indices, sm_scale):
    rows = torch.cat([ckv_cache, kpe_cache], dim=-1).flatten(0, 1).float()
    rank = ckv_cache.shape[-1]
    tokens, heads = q_nope.shape[0], q_nope.shape[1]
    output = torch.zeros(tokens, heads, rank, dtype=q_nope.dtype)
    lse = torch.full((tokens, heads), -math.inf)
    for t in range(tokens):
        picked = [int(i) for i in sparse_indices[t] if int(i) >= 0]
        if not picked:
            continue
        kv = rows[picked]
        q = torch.cat([q_nope[t], q_pe[t]], dim=-1).float()
        s = (q @ kv.T) * sm_scale
        lse[t] = torch.logsumexp(s, dim=-1) / math.log(2.0)
        output[t] = (torch.softmax(s, dim=-1) @ kv[:, :rank]).to(q_nope.dtype)
    return output, lse
'''


def dsa_paged(hq: int, ckv: int, kpe: int, ps: int, topk: int) -> dict:
    return {"name": f"test_dsa_sparse_attention_h{hq}_ps{ps}_topk{topk}", "op_type": "dsa_paged",
            "tags": ["sparse:topk"],
            "axes": _axes({"num_qo_heads": hq, "head_dim_ckv": ckv, "head_dim_kpe": kpe, "page_size": ps,
                           "topk": topk}, ["num_tokens", "num_pages"]),
            "inputs": {"q_nope": {"shape": ["num_tokens", "num_qo_heads", "head_dim_ckv"], "dtype": "bfloat16"},
                       "q_pe": {"shape": ["num_tokens", "num_qo_heads", "head_dim_kpe"], "dtype": "bfloat16"},
                       "ckv_cache": {"shape": ["num_pages", "page_size", "head_dim_ckv"], "dtype": "bfloat16"},
                       "kpe_cache": {"shape": ["num_pages", "page_size", "head_dim_kpe"], "dtype": "bfloat16"},
                       "sparse_indices": {"shape": ["num_tokens", "topk"], "dtype": "int32"},
                       "sm_scale": {"shape": None, "dtype": "float32"}},
            "outputs": {"output": {"shape": ["num_tokens", "num_qo_heads", "head_dim_ckv"], "dtype": "bfloat16"},
                        "lse": {"shape": ["num_tokens", "num_qo_heads"], "dtype": "float32"}},
            "reference": REFERENCE_DSA}


def _axes(const: dict, var: list[str]) -> dict:
    return {**{k: {"type": "const", "value": v} for k, v in const.items()}, **{k: {"type": "var"} for k in var}}


def gqa_paged(stage: str, hq: int, hkv: int, d: int, ps: int, dtype: str = "bfloat16") -> dict:
    rows = "batch_size" if stage == "decode" else "total_q"
    var = ["batch_size", "num_pages", "len_indptr", "num_kv_indices"] + ([] if stage == "decode" else ["total_q"])
    inputs = {"q": {"shape": [rows, "num_qo_heads", "head_dim"], "dtype": dtype},
              "k_cache": {"shape": ["num_pages", "page_size", "num_kv_heads", "head_dim"], "dtype": dtype},
              "v_cache": {"shape": ["num_pages", "page_size", "num_kv_heads", "head_dim"], "dtype": dtype}}
    if stage != "decode":
        inputs["qo_indptr"] = {"shape": ["len_indptr"], "dtype": "int32"}
    inputs |= {"kv_indptr": {"shape": ["len_indptr"], "dtype": "int32"},
               "kv_indices": {"shape": ["num_kv_indices"], "dtype": "int32"}}
    if ps > 1:
        inputs["kv_last_page_len"] = {"shape": ["batch_size"], "dtype": "int32"}
    inputs["sm_scale"] = {"shape": None, "dtype": "float32"}
    return {"name": f"test_gqa_paged_{stage}_h{hq}_kv{hkv}_d{d}_ps{ps}", "op_type": "gqa_paged",
            "tags": [f"stage:{stage}"],
            "axes": _axes({"num_qo_heads": hq, "num_kv_heads": hkv, "head_dim": d, "page_size": ps}, var),
            "inputs": inputs,
            "outputs": {"output": {"shape": [rows, "num_qo_heads", "head_dim"], "dtype": dtype},
                        "lse": {"shape": [rows, "num_qo_heads"], "dtype": "float32"}},
            "reference": REFERENCE}


def gqa_ragged(hq: int, hkv: int, d: int, dv: int | None = None, op: str = "gqa_ragged") -> dict:
    dims = {"head_dim": d} if dv is None else {"qk_dim": d, "vo_dim": dv}
    qk, vo = ("head_dim", "head_dim") if dv is None else ("qk_dim", "vo_dim")
    return {"name": f"test_{op}_h{hq}_kv{hkv}_d{d}", "op_type": op, "tags": ["stage:prefill"],
            "axes": _axes({"num_qo_heads": hq, "num_kv_heads": hkv, **dims}, ["len_indptr", "total_q", "total_kv"]),
            "inputs": {"q": {"shape": ["total_q", "num_qo_heads", qk], "dtype": "bfloat16"},
                       "k": {"shape": ["total_kv", "num_kv_heads", qk], "dtype": "bfloat16"},
                       "v": {"shape": ["total_kv", "num_kv_heads", vo], "dtype": "bfloat16"},
                       "qo_indptr": {"shape": ["len_indptr"], "dtype": "int32"},
                       "kv_indptr": {"shape": ["len_indptr"], "dtype": "int32"},
                       "sm_scale": {"shape": None, "dtype": "float32"}},
            "outputs": {"output": {"shape": ["total_q", "num_qo_heads", vo], "dtype": "bfloat16"},
                        "lse": {"shape": ["total_q", "num_qo_heads"], "dtype": "float32"}},
            "reference": REFERENCE}


def mla_paged(stage: str, hq: int, ckv: int, kpe: int, ps: int) -> dict:
    rows = "batch_size" if stage == "decode" else "total_q"
    var = ["batch_size", "num_pages", "len_indptr", "num_kv_indices"] + ([] if stage == "decode" else ["total_q"])
    inputs = {"q_nope": {"shape": [rows, "num_qo_heads", "head_dim_ckv"], "dtype": "bfloat16"},
              "q_pe": {"shape": [rows, "num_qo_heads", "head_dim_kpe"], "dtype": "bfloat16"},
              "ckv_cache": {"shape": ["num_pages", "page_size", "head_dim_ckv"], "dtype": "bfloat16"},
              "kpe_cache": {"shape": ["num_pages", "page_size", "head_dim_kpe"], "dtype": "bfloat16"}}
    if stage != "decode":
        inputs["qo_indptr"] = {"shape": ["len_indptr"], "dtype": "int32"}
    inputs |= {"kv_indptr": {"shape": ["len_indptr"], "dtype": "int32"},
               "kv_indices": {"shape": ["num_kv_indices"], "dtype": "int32"}}
    if ps > 1:
        inputs["kv_last_page_len"] = {"shape": ["batch_size"], "dtype": "int32"}
    inputs["sm_scale"] = {"shape": None, "dtype": "float32"}
    return {"name": f"test_mla_paged_{stage}_h{hq}_ps{ps}", "op_type": "mla_paged", "tags": [f"stage:{stage}"],
            "axes": _axes({"num_qo_heads": hq, "head_dim_ckv": ckv, "head_dim_kpe": kpe, "page_size": ps}, var),
            "inputs": inputs,
            "outputs": {"output": {"shape": [rows, "num_qo_heads", "head_dim_ckv"], "dtype": "bfloat16"},
                        "lse": {"shape": [rows, "num_qo_heads"], "dtype": "float32"}},
            "reference": REFERENCE}


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, indent=1))
    return path


def workload_line(definition: str, uuid: str, axes: dict, inputs: dict) -> str:
    return json.dumps({"definition": definition, "solution": None, "evaluation": None,
                       "workload": {"uuid": uuid, "axes": axes, "inputs": inputs}})
