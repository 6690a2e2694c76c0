"""transformers' attention as peers: backends `hf-eager`, `hf-sdpa`, `hf-flex`.

Each calls the function transformers' own attention modules call — `eager_attention_forward` of a
model's modeling file, and the `sdpa` / `flex_attention` entries of its attention-function registry
(`ALL_ATTENTION_FUNCTIONS`) — with the keyword arguments a model's attention module passes:

    fn(module, query, key, value, attention_mask, dropout=0.0, scaling=s, sliding_window=w,
       softcap=c, s_aux=sinks)              (the last three only where the model passes them)

`module` carries what the functions read from the attention module: `num_key_value_groups`
(GQA: K/V heads are repeated or passed with enable_gqa), `is_causal`, `training` (False),
`config._attn_implementation`, and `sinks` (gpt-oss: attnbench's sink logits, modifiers.sink_logits).
The mask is what the model's mask builder hands them: an additive
(1, 1, Lq, Lk) float mask for eager and sdpa (0 where attended, the dtype's lowest value elsewhere: causal bottom-right,
the sliding window's band), a BlockMask for flex. Which eager function: a soft-capped case uses
Gemma-2's (`transformers.models.gemma2.modeling_gemma2.eager_attention_forward`, the only one with a
`softcap`), a learned-sink case gpt-oss's (its `s_aux`), the rest Llama's. Unsupported, with the
reason, where transformers has no such path (sdpa with a soft-cap or sinks: transformers itself
refuses them; MLA's latent cache; sinks = N StreamingLLM tokens). Outputs are transposed back to
(B, H, Lq, D) (transformers returns (B, Lq, H, D)).

`attn_implementation` a user sets to get each: hf-eager "eager", hf-sdpa "sdpa", hf-flex
"flex_attention" (IMPLEMENTATION). Unavailable with a reason when transformers is not installed.
Honest limits: transformers compiles flex_attention per shape with torch.compile; past torch's
recompile limit (8 shapes in one process) torch falls back to its unfused flex (a warning), so a
sweep of many shapes in one process times that fallback for the later ones.
"""

from __future__ import annotations

import importlib
from types import ModuleType, SimpleNamespace
from typing import Callable

import torch

from attnbench.core.models import HF_IMPLEMENTATION
from attnbench.core.problem import Problem
from attnbench.variants.backends.flex import no_silent_eager_fallback
from attnbench.variants.base import Backend, Fn, Reason
from attnbench.variants.modifiers import sink_logits

IMPLEMENTATION = HF_IMPLEMENTATION


def import_transformers() -> ModuleType:
    """transformers, imported only by the commands and backends that read or run a model."""
    return importlib.import_module("transformers")


def transformers_missing(_device: torch.device | None = None) -> Reason:
    """Why transformers cannot be used here, or None (found without importing it: `list` stays fast)."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return "transformers is not installed; pip install transformers"
    return None


def _eager_function(p: Problem) -> Callable:
    import_transformers()
    model = "gemma2" if p.param("softcap") else "gpt_oss" if p.param("sink_logit") == "learned" else "llama"
    return importlib.import_module(f"transformers.models.{model}.modeling_{model}").eager_attention_forward


def _registry_function(name: str) -> Callable:
    import_transformers()
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[name]


def additive_mask(p: Problem, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """(1, 1, Lq, Lk): 0 where attended, the dtype's min elsewhere (transformers' eager masks)."""
    window = p.param("window")
    if not p.causal and not window:
        return None
    i = torch.arange(p.seq_q, device=device)[:, None] + (p.seq_k - p.seq_q)
    j = torch.arange(p.seq_k, device=device)[None, :]
    ok = torch.ones(p.seq_q, p.seq_k, dtype=torch.bool, device=device)
    if p.causal:
        ok &= j <= i
    if window:
        ok &= (i - j).abs() < window
    return torch.zeros(ok.shape, dtype=dtype, device=device).masked_fill(~ok, torch.finfo(dtype).min)[None, None]


def _block_mask(p: Problem, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    off, window, causal = p.seq_k - p.seq_q, p.param("window"), p.causal

    def mask_mod(b, h, q_idx, kv_idx):
        i = q_idx + off
        ok = (kv_idx <= i) if causal else (kv_idx >= 0)
        return ok & ((i - kv_idx).abs() < window) if window else ok

    return create_block_mask(mask_mod, None, None, p.seq_q, p.seq_k, device=device, _compile=False)


def _module(p: Problem, impl: str) -> torch.nn.Module:
    m = torch.nn.Module()
    m.num_key_value_groups = p.heads // p.kv_heads
    m.is_causal = p.causal
    m.training = False
    m.config = SimpleNamespace(_attn_implementation=impl)
    return m


def _kwargs(p: Problem, device: torch.device, scale: float) -> dict:
    kw: dict = {"dropout": 0.0, "scaling": scale}
    if p.param("window"):
        kw["sliding_window"] = int(p.param("window"))
    if p.param("softcap"):
        kw["softcap"] = float(p.param("softcap"))
    if p.param("sink_logit") == "learned":
        kw["s_aux"] = sink_logits(p.heads, device)  # the logits attnbench's sliding_window uses
    return kw


def _build(name: str) -> Callable[[Problem, torch.device], Fn]:
    impl = IMPLEMENTATION[name]

    def build(p: Problem, device: torch.device) -> Fn:
        if impl == "flex_attention":
            no_silent_eager_fallback()  # transformers compiles flex_attention itself: static shapes, no eager fallback
        fn = _eager_function(p) if impl == "eager" else _registry_function(impl)
        module = _module(p, impl)
        if p.param("sink_logit") == "learned":  # gpt-oss's eager reads module.sinks; flex takes s_aux
            module.sinks = sink_logits(p.heads, device)
        scale = float(p.param("scale") or 0.0) or p.head_dim ** -0.5
        kw = _kwargs(p, device, scale)
        mask = _block_mask(p, device) if impl == "flex_attention" else additive_mask(p, device, p.torch_dtype)

        def call(q, k, v):
            out = fn(module, q, k, v, mask if mask is None or impl == "flex_attention" else mask.to(q.dtype), **kw)[0]
            return out.transpose(1, 2)

        return call

    return build


def _why_unsupported(name: str) -> Callable[[Problem, torch.device], Reason]:
    def supports(p: Problem, device: torch.device) -> Reason:
        if p.causal and p.seq_q > p.seq_k:
            return (f"{name}: causal with Lq > Lk leaves rows with no visible key, which transformers' masks never "
                    "build (its eager would average V there)")
        if p.param("sinks"):
            return f"{name}: transformers has no StreamingLLM sink tokens (sinks=N); use sink_logit"
        if name == "hf-sdpa" and p.param("softcap"):
            return "hf-sdpa: transformers' sdpa path has no soft-cap (Gemma-2 needs eager or flex_attention)"
        if name == "hf-sdpa" and p.param("sink_logit") == "learned":
            return "hf-sdpa: transformers' sdpa path has no learned sinks (gpt-oss needs eager)"
        if name == "hf-flex" and p.param("sink_logit") == "learned" and device.type == "cpu":
            return "hf-flex: transformers' flex_attention runs learned sinks only on a GPU (it refuses the CPU)"
        return None

    return supports


def hf_backends() -> tuple[Backend, ...]:
    """hf-eager, hf-sdpa, hf-flex (see the module doc)."""
    return tuple(Backend(name, _build(name), f"transformers' {impl} attention (attn_implementation=\"{impl}\")",
                         why_unavailable=transformers_missing, why_unsupported=_why_unsupported(name),
                         materializes=name == "hf-eager", compiles=name == "hf-flex")
                 for name, impl in IMPLEMENTATION.items())
