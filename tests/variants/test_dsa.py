"""The dsa variant (DeepSeek Sparse Attention) against references written here that mirror the
semantics of flashinfer-bench's `dsa_paged` definitions: the top-k indexer (dsa_topk_indexer_*:
scores = Σ_h w_h·ReLU(q_h·K_tokenᵀ) over a sequence's pages, top-k, token slot = page·64 + offset,
−1 padding; float32 keys here, not FP8 with scales) and the sparse decode (dsa_sparse_decode_h16_
ckv512_kpe64_topk{256,2048}_ps64: logits = q_nope·ckvᵀ + q_pe·kpeᵀ over the valid slots, × sm_scale
= 1/√192, softmax, output = attn·ckv, lse = logsumexp / ln 2). Shapes: 16 heads, latent 512 + rope
64, top-k 256 and 2048, page size 64, indexer 64 heads × 128, small L. Then prefill against a
per-query float64 loop, the cost model against independent counts of pairs, and the Triton kernel
under the interpreter."""

from __future__ import annotations

import math
import os

import pytest
import torch

from attnbench.core.problem import Problem
from attnbench.variants import dsa, mla, registry
from conftest import rel_l2

CPU = torch.device("cpu")
SMALL = {"kv_lora_rank": 32, "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 12, "topk": 24,
         "index_heads": 16, "index_head_dim": 16}


def problem(mode="decode", seq=300, b=2, h=16, topk=256, layout="paged", small=False, dtype="float32", **params):
    dims = SMALL if small else {}
    raw = Problem(batch=b, heads=h, kv_heads=0, seq_q=seq, seq_k=seq, head_dim=128, dtype=dtype, mode=mode,
                  params=tuple(sorted((dsa.DEFAULTS | {"topk": topk, "kv_layout": layout} | dims | params).items())))
    return dsa.DSA.resolve(raw)


# ---------------------------------------------------------------- flashinfer-like references
def indexer_like(q_index, k_pages, weights, seq_lens, table, topk):
    """q_index (B, HI, DI), k_pages (pages, ps, DI), weights (B, HI) -> (B, topk) int slots, −1 pad."""
    ps = k_pages.shape[1]
    out = torch.full((q_index.shape[0], topk), -1, dtype=torch.int64)
    for b in range(q_index.shape[0]):
        n = int(seq_lens[b])
        pages = table[b, : -(-n // ps)]
        keys = k_pages[pages].reshape(-1, k_pages.shape[-1])[:n].double()
        scores = (torch.relu(q_index[b].double() @ keys.T) * weights[b].double()[:, None]).sum(0)
        top = scores.topk(min(topk, n)).indices
        out[b, : len(top)] = pages[top // ps] * ps + top % ps
    return out


def sparse_decode_like(q_nope, q_pe, ckv, kpe, sparse_indices, sm_scale):
    """(output (B, H, 512), lse base 2 (B, H)) over the valid slots of the flattened pages."""
    kc_all, kp_all = ckv.reshape(-1, ckv.shape[-1]).double(), kpe.reshape(-1, kpe.shape[-1]).double()
    b_n, h_n = q_nope.shape[:2]
    out = torch.zeros(b_n, h_n, ckv.shape[-1], dtype=torch.float64)
    lse = torch.full((b_n, h_n), -math.inf, dtype=torch.float64)
    for b in range(b_n):
        idx = sparse_indices[b][sparse_indices[b] != -1].long()
        if idx.numel() == 0:
            continue
        logits = (q_nope[b].double() @ kc_all[idx].T + q_pe[b].double() @ kp_all[idx].T) * sm_scale
        lse[b] = torch.logsumexp(logits, -1) / math.log(2.0)
        out[b] = torch.softmax(logits, -1) @ kc_all[idx]
    return out, lse


def pieces(p, k):
    """The paged cache split as flashinfer stores it: ckv, kpe, indexer keys (pages, 64, ·)."""
    r, start, _ = dsa.widths(p)
    return k[..., :r], k[..., r:start], k[..., start:]


def flashinfer_pipeline(p, q, k):
    """The model's decode step from the definitions' ops: absorb W_UK, indexer, sparse decode, W_UV."""
    r, dr, dn, dv = mla.dims(p)
    ckv, kpe, kidx = pieces(p, k)
    qi, w = dsa.index_inputs(p, CPU)
    table = dsa.block_table(p)
    sel = indexer_like(qi[:, 0], kidx, w[:, 0], [p.seq_k] * p.batch, table, p.param("topk"))
    w_uk, w_uv = mla.up_weights(p, CPU, torch.float64)
    q_nope = torch.einsum("bhd,hdr->bhr", q[:, :, 0, :dn].double(), w_uk)
    o, lse = sparse_decode_like(q_nope, q[:, :, 0, dn:], ckv, kpe, sel, 1 / math.sqrt(dn + dr))
    return torch.einsum("bhr,hvr->bhv", o, w_uv)[:, :, None], sel, (q_nope, o, lse)


# ---------------------------------------------------------------- decode at the definitions' shapes
@pytest.mark.parametrize("topk,seq", [(256, 300), (256, 200), (2048, 2100)], ids=["k256-L300", "k256-L200-padded",
                                                                                     "k2048-L2100"])
def test_decode_reproduces_the_definitions(topk, seq):
    p = problem(seq=seq, topk=topk)
    assert (p.heads, *mla.dims(p)[:2], p.param("page_size"), p.param("index_heads")) == (16, 512, 64, 64, 64)
    q, k, v = dsa.make_inputs(p, CPU, 1)
    want, sel_want, _ = flashinfer_pipeline(p, q, k)
    slots = dsa.token_slots(p, CPU)
    qi, w = dsa.index_inputs(p, CPU)
    sel = dsa.selected_slots(dsa.select(k, slots, qi, w, p), slots)[:, 0]
    assert sel.shape == (p.batch, topk)
    assert ((sel == -1).sum(-1) == max(0, topk - seq)).all()  # −1 padding when fewer tokens exist
    for b in range(p.batch):  # the same tokens (the order of equal-rank picks is torch.topk's)
        assert torch.equal(sel[b].sort().values, sel_want[b].sort().values)
    for backend in ("eager", "gather"):
        with torch.no_grad():
            out = dsa.DSA.backend(backend).build(p, CPU)(q, k, v)
        assert rel_l2(out, want) < 1e-5, backend  # fp32: ~1e-7; one wrong token or scale is > 1e-3


@pytest.mark.slow  # ~25 s interpreted (top-k 2048 over r = 512)
def test_triton_kernel_reproduces_the_sparse_decode_definition_with_lse():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    from attnbench.kernels.dsa_decode import dsa_decode

    for topk, seq in ((256, 200), (2048, 2100)):
        p = problem(seq=seq, topk=topk)
        q, k, v = dsa.make_inputs(p, CPU, 2)
        _, sel, (q_nope, o_want, lse_want) = flashinfer_pipeline(p, q, k)
        dr = mla.dims(p)[1]
        qa = torch.cat([q_nope, q[:, :, 0, -dr:].double()], -1).float()[:, :, None]  # (B, H, 1, 576)
        ckv, kpe, _ = pieces(p, k)
        kv = torch.cat([ckv, kpe], -1).reshape(-1, 576)
        out, lse = dsa_decode(qa, kv, sel[:, None].to(torch.int32), rank=512, softmax_scale=192 ** -0.5,
                              return_lse=True)
        assert rel_l2(out[:, :, 0], o_want) < 1e-5, topk
        assert (lse[:, :, 0].double() - lse_want).abs().max() < 1e-4, topk
        assert registry.decide(dsa.DSA, "triton", p, CPU, check_availability=False).runnable
        with torch.no_grad():
            whole = dsa.DSA.backend("triton").build(p, CPU)(q, k, v)
        assert rel_l2(whole, dsa.reference(q.double(), k.double(), v.double(), p)) < 1e-5


def test_triton_kernel_masks_padding_and_empty_rows():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    from attnbench.kernels.dsa_decode import dsa_decode

    g = torch.Generator().manual_seed(0)
    q, kv = torch.randn(2, 3, 2, 40, generator=g), torch.randn(90, 40, generator=g)
    idx = torch.randint(0, 90, (2, 2, 50), generator=g, dtype=torch.int32)
    idx[0, 1, 7:] = -1
    idx[1, 0] = -1  # a row with no valid index: output 0, lse −inf
    out, lse = dsa_decode(q, kv, idx, rank=32, softmax_scale=0.2, num_splits=3, return_lse=True)
    for b in range(2):
        for i in range(2):
            valid = idx[b, i][idx[b, i] >= 0].long()
            if valid.numel() == 0:
                assert torch.all(out[b, :, i] == 0) and torch.all(lse[b, :, i] == -math.inf)
                continue
            s = (q[b, :, i].double() @ kv[valid].double().T) * 0.2
            ref = torch.softmax(s, -1) @ kv[valid, :32].double()
            assert (out[b, :, i].double() - ref).abs().max() < 1e-5


# ---------------------------------------------------------------- prefill, layouts, dtypes
def per_query_reference(p, q, k):
    """Prefill in float64, one query at a time: its indexer scores over keys j <= i, top-k, then
    absorbed attention over those tokens (dense layout)."""
    r, dr, dn, dv = mla.dims(p)
    _, start, _ = dsa.widths(p)
    qi, w = (t.double() for t in dsa.index_inputs(p, CPU))
    w_uk, w_uv = mla.up_weights(p, CPU, torch.float64)
    out = torch.zeros(p.batch, p.heads, p.seq_q, dv, dtype=torch.float64)
    for b in range(p.batch):
        cache = k[b, 0].double()
        for i in range(p.seq_q):
            keys = cache[: i + 1]
            score = (torch.relu(qi[b, i] @ keys[:, start:].T) * w[b, i][:, None]).sum(0)
            top = score.topk(min(p.param("topk"), i + 1)).indices
            qa = torch.cat([torch.einsum("hd,hdr->hr", q[b, :, i, :dn].double(), w_uk), q[b, :, i, dn:].double()], -1)
            probs = torch.softmax(qa @ keys[top, :start].T / math.sqrt(dn + dr), -1)
            out[b, :, i] = torch.einsum("hr,hvr->hv", probs @ keys[top, :r], w_uv)
    return out


def test_prefill_matches_a_per_query_reference():
    p = problem(mode="fwd", seq=60, b=1, h=4, layout="dense", small=True)
    assert p.causal and p.seq_q == p.seq_k == 60
    q, k, v = dsa.make_inputs(p, CPU, 3)
    want = per_query_reference(p, q, k)
    for backend in ("eager", "gather"):
        with torch.no_grad():
            assert rel_l2(dsa.DSA.backend(backend).build(p, CPU)(q, k, v), want) < 1e-5, backend


def test_paged_and_dense_layouts_attend_the_same_tokens():
    outs = []
    for layout in ("dense", "paged"):
        p = problem(seq=100, layout=layout, small=True, page_size=16)
        q, k, v = dsa.make_inputs(p, CPU, 4)
        assert k.shape == ((2, 1, 100, 64) if layout == "dense" else (14, 16, 64))
        with torch.no_grad():
            outs.append(dsa.DSA.backend("gather").build(p, CPU)(q, k, v))
    assert rel_l2(outs[1], outs[0]) < 1e-6


def test_half_precision_within_the_dtypes_error():
    p = problem(seq=90, small=True, dtype="bfloat16")
    q, k, v = dsa.make_inputs(p, CPU, 5)
    ref = dsa.reference(q.double(), k.double(), v.double(), p)
    for backend in ("eager", "gather"):
        with torch.no_grad():
            out = dsa.DSA.backend(backend).build(p, CPU)(q, k, v)
        assert out.dtype == torch.bfloat16 and rel_l2(out, ref) < 8 * 2.0 ** -8, backend


# ---------------------------------------------------------------- cost model
def test_cost_parts_against_counted_pairs():
    p = problem(mode="fwd", seq=50, b=2, h=4, layout="dense", small=True)  # topk 24 < L = 50
    visible = sum(i + 1 for i in range(50))
    selected = sum(min(24, i + 1) for i in range(50))
    parts = dsa.cost_parts(p)
    assert parts["indexer"]["flops"] == 2 * 2 * visible * 16 * (16 + 1)
    assert parts["attention"]["flops"] == 2 * 2 * 4 * (50 * 32 * (16 + 12) + selected * (2 * 32 + 16))
    assert dsa.DSA.flops(p) == parts["indexer"]["flops"] + parts["attention"]["flops"]
    q, k, v = dsa.make_inputs(p, CPU)
    slots = dsa.token_slots(p, CPU)
    pos = dsa.select(k, slots, *dsa.index_inputs(p, CPU), p)
    assert int((pos >= 0).sum()) == 2 * selected  # the model's pairs are the ones selected


def test_attention_cost_is_flat_past_topk_while_the_indexer_grows():
    costs = [dsa.cost_parts(problem(seq=n, topk=2048)) for n in (4096, 8192, 65536)]
    att = [c["attention"] for c in costs]
    assert att[0] == att[1] == att[2]
    idx = [c["indexer"]["flops"] for c in costs]
    assert idx[1] == 2 * idx[0] and idx[2] == 16 * idx[0]
    small = dsa.cost_parts(problem(seq=1024, topk=2048))["attention"]["flops"]
    assert small < att[0]["flops"]  # below topk every token is attended
    p = problem(seq=65536, topk=2048)
    assert dsa.kv_cache_bytes(p) == 2 * (65536 * 128 + 2048 * 576) * 4


def test_resolve_supports_and_triton_refusals():
    p = problem(seq=300)
    assert (p.seq_q, p.seq_k, p.kv_heads, p.head_dim, p.causal) == (1, 300, 1, 128, True)
    assert "bad topk 0" in dsa.DSA.why_unsupported(problem(topk=0))
    assert "bad kv_layout 'ring'" in dsa.DSA.why_unsupported(problem(layout="ring"))
    verdict = registry.decide(dsa.DSA, "triton", problem(mode="fwd", seq=64), CPU, check_availability=False)
    assert verdict.status == "unsupported" and "decode kernel" in verdict.reason
    assert registry.decide(dsa.DSA, "triton", p, CPU).status == "unavailable"
