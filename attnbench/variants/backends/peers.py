"""Backends from peer packages (lucidrains' performer-pytorch, linformer, local-attention), so
our implementations are timed against what people actually use. Install: pip install attnbench[peers].

peer:performer-pytorch (performer)  performer_pytorch.FastAttention(dim_heads=D, nb_features=m,
    causal) with its projection matrix replaced by OUR random features (same W), so both compute
    FAVOR+ from the same draw. The package adds eps = 1e-4 to every feature (hard-coded in its
    softmax_kernel), so it runs only for cases with the variant's `eps` = 1e-4: by default its
    cases run at eps = 1e-4 and our backends run there too (besides the sweep's eps), labelled;
    an explicit `--param eps=0` makes it unsupported, naming the parameter. There our non-causal
    output equals its to ~3e-7. Its causal path also adds 1e-6
    to the running key sums in its denominators (ours does not). Without the fast_transformers
    CUDA extension that path is `causal_linear_attention_noncuda` (128 pieces, each holding an
    (L/128)×m×D prefix tensor). Timed: FastAttention.forward. Needs kv_heads == heads; causal
    needs Lq == Lk (it pairs query i with key i).
peer:linformer (linformer)  linformer.LinformerSelfAttention(dim=H·D, seq_len=Lk, k, heads=H,
    dim_head=D) cannot take q/k/v: it projects its input itself. We make its projections
    transparent (to_q and to_out identity; to_k and to_v read the two halves of a [k | v]
    context) and copy our E, F into proj_k, proj_v, so the math is exactly ours. Timed: the
    layout changes (B, H, L, D) -> (B, L, H·D) of q and the [k | v] concatenation, the package's
    forward, and the layout change back. Needs kv_heads == heads or kv_heads == 1 (one_kv_head).
peer:local-attention (sliding_window)  local_attention.LocalAttention(window_size=ws,
    causal, look_backward=1, look_forward=0 if causal else 1, exact_windowsize=True). Our window
    is |i − j| < w; the package's exact window is |i − j| <= ws, so ws = w − 1 gives the same
    pattern. It needs L to be a multiple of ws: causal uses autopad (padding at the end is in
    every query's future, so harmless); non-causal needs ws = w − 1 to divide L, else it is
    unsupported (ws = w would attend one more key on each side: another pattern under our
    label, judged wrong against our reference). Needs kv_heads == heads and Lq == Lk.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import warnings
from typing import Callable

import torch
from torch import nn

from attnbench.core.problem import Problem
from attnbench.variants.base import Backend, Fn, Reason


def _import(module: str):
    with warnings.catch_warnings():  # performer_pytorch imports distutils and torch.cuda.amp
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


def _available(module: str, package: str) -> Callable[[torch.device], Reason]:
    def why_unavailable(device: torch.device) -> Reason:
        try:
            _import(module)
        except ImportError:
            return f"package {package} is not installed (pip install attnbench[peers])"
        return None

    return why_unavailable


def _same_heads(p: Problem, device: torch.device) -> Reason:
    return None if p.kv_heads == p.heads else f"the package needs kv_heads == heads (got {p.kv_heads} of {p.heads})"


# ---------------------------------------------------------------- performer-pytorch
def _performer_build(features: Callable[[Problem, torch.device], torch.Tensor]):
    def build(problem: Problem, device: torch.device) -> Fn:
        pp = _import("performer_pytorch")
        w = features(problem, device)  # (m, D): our draw
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a notice when CUDA code is missing
            fa = pp.FastAttention(dim_heads=problem.head_dim, nb_features=w.shape[0], causal=problem.causal)
        fa = fa.to(device)
        fa.projection_matrix.copy_(w)
        return lambda q, k, v: fa(q, k, v)

    return build


PERFORMER_PYTORCH_EPS = 1e-4  # performer_pytorch.softmax_kernel's default, not settable via FastAttention


def _performer_supports(p: Problem, device: torch.device) -> Reason:
    if p.param("eps") != PERFORMER_PYTORCH_EPS:
        return (f"performer-pytorch adds eps = {PERFORMER_PYTORCH_EPS:g} to its features (hard-coded); this case "
                f"has eps = {p.param('eps'):g}: run with --param eps={PERFORMER_PYTORCH_EPS:g}")
    if p.causal and p.seq_q != p.seq_k:
        return "performer-pytorch's causal path pairs query i with key i, so it needs Lq == Lk"
    return _same_heads(p, device)


# ---------------------------------------------------------------- linformer
class _Half(nn.Module):
    """Reads one half of the last axis: how to_k / to_v see a [k | v] context."""

    def __init__(self, first: bool):
        super().__init__()
        self.first = first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1] // 2
        return x[..., :n] if self.first else x[..., n:]


def _linformer_build(projections: Callable[[Problem, torch.device], tuple[torch.Tensor, torch.Tensor]]):
    return lambda problem, device: _linformer(problem, device, projections)


def _linformer(problem: Problem, device: torch.device, projections) -> Fn:
    lf = _import("linformer")
    b, h, d = problem.batch, problem.heads, problem.head_dim
    attn = lf.LinformerSelfAttention(dim=h * d, seq_len=problem.seq_k, k=int(problem.param("k")), heads=h,
                                     dim_head=d, one_kv_head=problem.kv_heads == 1 and h > 1)
    attn.to_q, attn.to_out = nn.Identity(), nn.Identity()
    attn.to_k, attn.to_v = _Half(True), _Half(False)
    e, f = projections(problem, device)  # (k, Lk) each
    with torch.no_grad():
        attn.proj_k.copy_(e.T)  # the package computes Σ_n x_n·proj[n, :], i.e. E·K with E = projᵀ
        attn.proj_v.copy_(f.T)
    attn = attn.to(device=device, dtype=problem.torch_dtype).eval()  # projections in the inputs' dtype
    rows = lambda x: x.transpose(1, 2).reshape(b, x.shape[2], -1)  # noqa: E731  (B, H, L, D) -> (B, L, H·D)

    def peer_linformer(q, k, v):
        out = attn(rows(q), context=torch.cat([rows(k), rows(v)], -1))  # (B, Lq, H·D)
        return out.reshape(b, q.shape[2], h, d).transpose(1, 2)

    return peer_linformer


def _linformer_supports(p: Problem, device: torch.device) -> Reason:
    if p.kv_heads not in (p.heads, 1):
        return f"the package needs kv_heads == heads or kv_heads == 1 (got {p.kv_heads} of {p.heads})"
    return None


# ---------------------------------------------------------------- local-attention
def local_window_size(p: Problem) -> int | None:
    """The package's window_size for our window w (see the module docstring), or None."""
    w = int(p.param("window"))
    return w - 1 if p.causal or p.seq_k % (w - 1) == 0 else None


def _local_build(problem: Problem, device: torch.device) -> Fn:
    la = _import("local_attention")
    ws = local_window_size(problem)
    local = la.LocalAttention(window_size=ws, causal=problem.causal, look_backward=1,
                              look_forward=0 if problem.causal else 1, exact_windowsize=True,
                              autopad=problem.causal).to(device)
    return lambda q, k, v: local(q, k, v)


def local_workspace(p: Problem) -> float:
    """LocalAttention's call: each window of ws queries scores its look-back and look-ahead windows
    (2·ws keys causal, 3·ws both sides), held as about 2.5 fp32 score tensors (scores, masked,
    probabilities), beside its padded, windowed copies of K and V."""
    ws = local_window_size(p) or int(p.param("window"))
    span = (2 if p.causal else 3) * ws
    rows = p.batch * p.heads * p.seq_q
    return 2.5 * 4 * rows * span + 2.0 * span / ws * p.batch * p.kv_heads * p.seq_k * p.head_dim * p.itemsize


def _local_supports(p: Problem, device: torch.device) -> Reason:
    if p.seq_q != p.seq_k:
        return f"local-attention needs Lq == Lk (got {p.seq_q} and {p.seq_k})"
    if int(p.param("window")) < 2:
        return "local-attention's exact window |i - j| <= ws needs window >= 2 here"
    if local_window_size(p) is None:
        w = int(p.param("window"))
        return (f"non-causal local-attention computes this window only when L={p.seq_k} is a multiple of "
                f"window-1={w - 1} (otherwise it would attend one more key on each side)")
    return _same_heads(p, device)


# ---------------------------------------------------------------- the backends
def performer_peer(features: Callable[[Problem, torch.device], torch.Tensor],
                   workspace: Callable[[Problem], float] | None = None) -> Backend:
    """features(problem, device) -> (m, D): the performer variant's own random features. The package
    hard-codes eps = 1e-4 (pinned: the variant's other backends also run there, labelled).
    workspace: its memory beyond the output (Backend.workspace; whole-sequence features like ours)."""
    return Backend("peer:performer-pytorch", _performer_build(features),
                   "performer-pytorch FastAttention with our random features (adds eps=1e-4 to features)",
                   why_unavailable=_available("performer_pytorch", "performer-pytorch"),
                   why_unsupported=_performer_supports, workspace=workspace,
                   pinned={"eps": PERFORMER_PYTORCH_EPS})


def linformer_peer(projections: Callable[[Problem, torch.device], tuple[torch.Tensor, torch.Tensor]],
                   workspace: Callable[[Problem], float] | None = None) -> Backend:
    """projections(problem, device) -> (E, F), each (k, Lk): the linformer variant's own.
    workspace: its memory beyond the output (Backend.workspace; it materialises scores like ours)."""
    return Backend("peer:linformer", _linformer_build(projections),
                   "linformer LinformerSelfAttention, projections made identity, our E and F",
                   why_unavailable=_available("linformer", "linformer"), why_unsupported=_linformer_supports,
                   workspace=workspace)


def local_attention_peer() -> Backend:
    return Backend("peer:local-attention", _local_build,
                   "local-attention LocalAttention, exact window of size window-1 (see docs)",
                   why_unavailable=_available("local_attention", "local-attention"), why_unsupported=_local_supports,
                   workspace=local_workspace)
