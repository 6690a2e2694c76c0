"""Peer-package backends against our implementations where the math matches.

Each test skips (with the reason) only when its package is not importable; CI installs them
with `pip install -e .[peers]`."""

import importlib
import warnings
from dataclasses import replace

import pytest
import torch

import attnbench.variants.backends.peers as peers
from attnbench.core.errors import UsageError
from attnbench.core.problem import Problem
from attnbench.variants import registry

CPU = torch.device("cpu")


def _needs(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            importlib.import_module(module)
        except ImportError:
            pytest.skip(f"package {module} is not installed (pip install attnbench[peers])")


def _problem(name, lq=128, lk=128, hq=4, hkv=4, d=16, causal=False, **params):
    var = registry.get(name)
    p = Problem(batch=2, heads=hq, kv_heads=hkv, seq_q=lq, seq_k=lk, head_dim=d, causal=causal)
    return var, var.resolve(p.with_params(**{**var.defaults, **params}))


def _inputs(p, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(p.batch, p.heads, p.seq_q, p.head_dim, generator=g) * scale
    k = torch.randn(p.batch, p.kv_heads, p.seq_k, p.head_dim, generator=g) * scale
    return q, k, torch.randn(p.batch, p.kv_heads, p.seq_k, p.head_dim, generator=g)


@pytest.mark.parametrize("hkv,lq", [(4, 128), (1, 50)])
def test_linformer_peer_equals_eager(hkv, lq):
    _needs("linformer")
    var, p = _problem("linformer", lq=lq, lk=128, hkv=hkv, k=32)
    q, k, v = _inputs(p)
    b = var.backend("peer:linformer")
    assert b.why_unavailable(CPU) is None and b.why_unsupported(p, CPU) is None
    torch.testing.assert_close(b.build(p, CPU)(q, k, v), var.backend("eager").build(p, CPU)(q, k, v),
                               atol=1e-5, rtol=1e-4)
    assert "kv_heads" in b.why_unsupported(replace(p, kv_heads=2), CPU)


@pytest.mark.parametrize("causal", [False, True])
def test_performer_peer_uses_our_features(causal):
    """Same W and the package's eps = 1e-4: non-causal outputs are equal; causal ones differ only
    by the package's 1e-6 in its running denominators."""
    _needs("performer_pytorch")
    var, p = _problem("performer", lq=256, lk=256, causal=causal, nb_features=128, eps=1e-4)
    q, k, v = _inputs(p, scale=0.5)
    theirs = var.backend("peer:performer-pytorch").build(p, CPU)(q, k, v)
    for backend in ("eager", "chunked"):
        ours = var.backend(backend).build(p, CPU)(q, k, v)
        rel = ((theirs - ours).norm() / ours.norm()).item()
        assert rel < (1e-2 if causal else 1e-5), (backend, rel)
    decode = var.backend("peer:performer-pytorch").why_unsupported(replace(p, seq_q=1, mode="decode"), CPU)
    assert ("Lq == Lk" in decode) if causal else decode is None


def test_performer_peer_declines_other_eps():
    var, p = _problem("performer", nb_features=32)  # eps = 0, the variant's default
    reason = var.backend("peer:performer-pytorch").why_unsupported(p, CPU)
    assert "eps = 0.0001" in reason and "--param eps=0.0001" in reason


def _sliding():
    try:
        return registry.get("sliding_window")
    except UsageError as e:  # the sparse family belongs to another module
        pytest.skip(f"sliding_window is not registered: {e}")


@pytest.mark.parametrize("causal,length,window", [(True, 128, 16), (True, 100, 9), (False, 128, 17)])
def test_local_attention_peer_same_pattern(causal, length, window):
    _needs("local_attention")
    var = _sliding()
    _, p = _problem("sliding_window", lq=length, lk=length, causal=causal, window=window)
    b = var.backend("peer:local-attention")
    assert b.why_unsupported(p, CPU) is None and peers.local_window_size(p) == window - 1
    q, k, v = _inputs(p)
    torch.testing.assert_close(b.build(p, CPU)(q, k, v), var.reference(q, k, v, p), atol=1e-5, rtol=1e-4)


def test_local_attention_peer_is_unsupported_when_window_minus_one_does_not_divide():
    """Non-causal, L % (w−1) != 0: the package's only other choice, ws = w, attends |i − j| <= w,
    our window one key wider on each side (another pattern under our label): refused, with why."""
    var = _sliding()
    _, p = _problem("sliding_window", lq=128, lk=128, window=16)
    assert peers.local_window_size(p) is None
    reason = var.backend("peer:local-attention").why_unsupported(p, CPU)
    assert "multiple of window-1=15" in reason and "one more key" in reason
    _, ok = _problem("sliding_window", lq=120, lk=120, window=16)  # 120 = 8 × 15
    assert peers.local_window_size(ok) == 15


def test_missing_package_reason():
    reason = peers._available("attnbench_no_such_module", "no-such-package")(CPU)
    assert reason == "package no-such-package is not installed (pip install attnbench[peers])"
