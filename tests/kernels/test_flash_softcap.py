"""attnbench.kernels.flash with softcap, token sinks and learned sink logits, under the Triton
interpreter (CPU tensors), forward and backward, against an fp64 materialised softmax written here
from the documented conventions; the sink tile ranges probed directly; the variants' Triton
backends wired to the kernel; the AOT compile covers the new paths (constexprs on)."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.interpreter
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it)", allow_module_level=True)
triton = pytest.importorskip("triton")

from test_kernels_flash import assert_close, make_qkv, visible_mask  # noqa: E402

from attnbench.core.problem import Problem  # noqa: E402
from attnbench.kernels import _common, flash, flash_attention  # noqa: E402
from attnbench.variants import registry  # noqa: E402

CPU = torch.device("cpu")


def oracle(q, k, v, *, causal=False, window=None, sinks=0, softcap=0.0, sink_logits=None, dtype=torch.float64):
    """softmax over [capped scores of visible keys, σ_h] in `dtype`, the σ column dropped; empty rows 0."""
    q, k, v = (t.to(dtype) for t in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    lq, lk = q.shape[2], k.shape[2]
    mask = visible_mask(lq, lk, window=window)
    if sinks:
        mask |= torch.arange(lk)[None, :] < sinks
    if causal:
        mask &= visible_mask(lq, lk, causal=True)
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~mask, float("-inf"))
    if sink_logits is not None:
        col = sink_logits.to(dtype).view(1, -1, 1, 1).expand(*s.shape[:-1], 1)
        return torch.softmax(torch.cat([s, col], -1), -1)[..., :-1] @ v
    return torch.softmax(s, -1).nan_to_num(0.0) @ v


# (B, Hq, Hkv, Lq, Lk, D, causal, window, sinks, softcap, learned)
CASES = {
    "softcap-mha": (1, 2, 2, 70, 70, 32, False, None, 0, 5.0, False),
    "softcap-causal-gqa-long-q": (1, 2, 1, 90, 50, 16, True, None, 0, 2.0, False),  # rows without keys
    "sinks-causal-ragged": (1, 2, 1, 100, 130, 32, True, 20, 4, 0.0, False),
    "sinks-bidir": (1, 2, 2, 77, 77, 16, False, 9, 3, 0.0, False),
    "window<sinks": (1, 2, 2, 96, 96, 16, True, 5, 70, 0.0, False),  # sink tiles overlap the band
    "sinks-above-band": (1, 2, 1, 40, 200, 16, False, 7, 190, 0.0, False),  # sinks past the band's hi
    "learned": (1, 4, 2, 65, 65, 32, True, 16, 0, 0.0, True),
    "all-three": (1, 2, 1, 61, 99, 40, False, 11, 5, 1.5, True),
}
GRAD_CASES = ("softcap-causal-gqa-long-q", "sinks-causal-ragged", "window<sinks", "all-three")


def _run(name, dtype, grads):
    b, hq, hkv, lq, lk, d, causal, window, sinks, cap, learned = CASES[name]
    q, k, v = make_qkv(b, hq, hkv, lq, lk, d, dtype, grad=grads)
    with torch.no_grad():
        k.mul_(2.0)  # scores up to ~±8: the cap bites
    sl = torch.linspace(-1.0, 3.0, hq) if learned else None
    kw = dict(causal=causal, window=window, sinks=sinks, softcap=cap, sink_logits=sl)
    out = flash_attention(q, k, v, **kw)
    exact, low = oracle(q, k, v, **kw), oracle(q, k, v, dtype=q.dtype, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_close("out", out, exact, low)
    if not grads:
        return
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(q.dtype)
    got = torch.autograd.grad(out, (q, k, v), do)
    want = torch.autograd.grad(exact, (q, k, v), do.double())
    want_low = torch.autograd.grad(low, (q, k, v), do)
    for label, g, w, wl in zip(("dq", "dk", "dv"), got, want, want_low):
        assert_close(label, g, w, wl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_forward(name, dtype):
    _run(name, dtype, grads=False)


@pytest.mark.parametrize("name", GRAD_CASES)
def test_backward_fp32(name):
    _run(name, torch.float32, grads=True)


def test_softcap_zero_and_no_sinks_is_the_plain_kernel():
    q, k, v = make_qkv(1, 2, 1, 50, 70, 32, torch.float32)
    plain = flash_attention(q, k, v, causal=True, window=9)
    same = flash_attention(q, k, v, causal=True, window=9, softcap=0.0, sinks=0, sink_logits=None)
    assert torch.equal(plain, same)


def test_empty_rows_with_a_learned_sink_output_zero():
    """Causal, Lq > Lk: the first queries see no key; all their mass goes to the sink."""
    q, k, v = make_qkv(1, 2, 2, 40, 8, 16, torch.float32, grad=True)
    out = flash_attention(q, k, v, causal=True, sink_logits=torch.zeros(2))
    assert torch.all(out[:, :, :32] == 0) and torch.isfinite(out).all()
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.all(dq[:, :, :32] == 0) and torch.isfinite(dk).all() and torch.isfinite(dv).all()


def test_bad_arguments_raise():
    q, k, v = make_qkv(1, 4, 2, 8, 8, 16, torch.float32)
    for kw, msg in ((dict(sinks=-1), "sinks must be an int"), (dict(softcap=-2.0), "softcap must be"),
                    (dict(softcap=float("nan")), "softcap must be"), (dict(sink_logits=torch.ones(3)), "sink_logits"),
                    (dict(softcap=5.0, alibi_slopes=torch.ones(4)), "softcap with alibi_slopes")):
        with pytest.raises(ValueError, match=msg):
            flash_attention(q, k, v, **kw)


# ---------------------------------------------------------------- sink tile ranges
@triton.jit
def _sink_probe(Out, Lq, Lk, window, sinks, BLOCK_M: triton.language.constexpr, BLOCK_N: triton.language.constexpr,
                CAUSAL: triton.language.constexpr):
    pid = triton.language.program_id(0)
    lo, full_lo, full_hi, hi = _common._key_band(pid * BLOCK_M, Lq, Lk, window, BLOCK_M, BLOCK_N, CAUSAL, True)
    below, above, end = _common._sink_tiles(lo, hi, sinks, Lk, BLOCK_N, CAUSAL)
    for i, x in enumerate((lo, hi, below, above, end)):
        triton.language.store(Out + pid * 5 + i, x)


@pytest.mark.parametrize("lq,lk,causal,window,sinks", [
    (200, 200, True, 50, 4), (150, 260, False, 30, 100), (40, 200, False, 7, 190), (96, 96, True, 5, 70),
    (260, 150, False, 33, 1)])
def test_sink_tiles_cover_every_sink_key_outside_the_band_once(lq, lk, causal, window, sinks):
    bm, bn = 32, 64
    blocks = triton.cdiv(lq, bm)
    out = torch.zeros(blocks * 5, dtype=torch.int32)
    _sink_probe[(blocks,)](out, lq, lk, window, sinks, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal)
    mask = visible_mask(lq, lk, causal=causal, window=window) | (torch.arange(lk)[None, :] < sinks)
    if causal:
        mask &= visible_mask(lq, lk, causal=True)
    for blk, (lo, hi, below, above, end) in enumerate(out.view(-1, 5).tolist()):
        band_end = lo + -(-(hi - lo) // bn) * bn
        assert below <= lo and above == band_end and below % bn == 0
        read = set(range(0, below)) | set(range(lo, band_end)) | set(range(above, end))
        seen = set(mask[blk * bm:(blk + 1) * bm].any(0).nonzero().flatten().tolist())
        assert seen <= read, sorted(seen - read)[:5]  # no visible key is skipped
        assert not set(range(0, below)) & set(range(above, end))


# ---------------------------------------------------------------- the variants' Triton backends
@pytest.mark.parametrize("name,params", [("sliding_window", dict(window=7, sinks=3, softcap=2.0, sink_logit="learned")),
                                         ("gqa", dict(softcap=2.0))])
def test_variant_triton_backend_runs_the_kernel_with_the_params(name, params):
    v = registry.get(name)
    raw = Problem(batch=1, heads=4, kv_heads=0, seq_q=45, seq_k=0, head_dim=16, dtype="float32", causal=True,
                  params=tuple(sorted({**v.defaults, **params}.items())))
    p = v.resolve(raw)
    assert registry.decide(v, "triton", p, CPU, check_availability=False).runnable
    q, k, vv = make_qkv(1, 4, p.kv_heads, 45, 45, 16, torch.float32)
    out = v.backend("triton").build(p, CPU)(q, k, vv)
    sl = torch.linspace(0.0, 4.0, 4) if params.get("sink_logit") == "learned" else None
    want = oracle(q, k, vv, causal=True, window=params.get("window"), sinks=params.get("sinks", 0),
                  softcap=params["softcap"], sink_logits=sl)
    assert (out.double() - want).abs().max().item() < 2e-5


def test_aot_compiles_the_new_paths():
    """The AOT report compiles every flash kernel twice, at each worst case: the ALiBi path and the
    softcap + sinks + sink-logit path (the two exclude each other; tests/kernels/test_kernels_compile.py
    runs the report, slow)."""
    mods = {k.name: k for k in flash.AOT_KERNELS if k.name.endswith(".softcap_sinks")}
    assert set(mods) == {"flash.fwd.softcap_sinks", "flash.bwd_dkdv.softcap_sinks", "flash.bwd_dq.softcap_sinks"}
    for kernel in flash.AOT_KERNELS:
        on = {k for k, v in kernel.constexprs.items() if v}
        want = {"SOFTCAP", "HAS_SINKS", "HAS_SINK_LOGIT"} if kernel.name in mods else {"HAS_ALIBI"}
        assert on == {"CAUSAL", "HAS_WINDOW"} | want
        assert {"SinkLogits", "softcap", "sinks"} <= set(kernel.fn.arg_names)  # interpreted: no .params
        assert kernel.types["SinkLogits"] == "*fp32" and kernel.types["softcap"] == "fp32"
    assert sorted((k.name, k.head_dims) for k in flash.AOT_KERNELS if k.name in mods) == sorted(
        (name, dims) for name in mods for dims in ((64, 128), (256,)))
