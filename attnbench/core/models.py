"""Model presets (attnbench/models.toml), local Hugging Face config.json files, and KV-cache arithmetic.

A model is its attention as attnbench sees it: query/KV heads, head dimension, dtype, causal,
maximum context, and layer groups (the variant and parameters a group of layers uses). The KV-cache
arithmetic is exact for the caches it describes and counts nothing else (weights, activations, the
allocator's slack and a paged cache's last partial page are not included):

    per layer and token   2·Hkv·D·itemsize   (K and V)      MLA: (kv_lora_rank + qk_rope_head_dim)·itemsize
    tokens cached at L    L, or min(L, window) for a sliding-window group (a ring-buffer cache, as
                          vLLM and Hugging Face keep for Mistral and Gemma-2)

No torch here: the report and `recommend` read these numbers from records.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from attnbench.core.errors import UsageError, did_you_mean
from attnbench.core.problem import DTYPES, ITEMSIZE, parse_dtype

LATENT = "mla"  # the variant whose cache is a latent vector per token (variants/mla.py)


@dataclass(frozen=True)
class LayerGroup:
    """`layers` layers that use `variant` with `params` (name -> value)."""

    variant: str
    layers: int
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)


@dataclass(frozen=True)
class ModelSpec:
    """One model's attention; `source` names where the numbers come from."""

    name: str
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    dtype: str
    causal: bool
    max_context: int
    attention: tuple[LayerGroup, ...]
    source: str
    seq: int | None = None  # a fixed length (a ViT's 197 tokens); None: the user's --seq
    notes: tuple[str, ...] = field(default=())

    def with_layers(self, n: int) -> "ModelSpec":
        """The same model with `n` layers, the groups scaled in proportion (each keeps at least 1)."""
        if n < 1:
            raise UsageError(f"--layers must be at least 1 (got {n})")
        if n == self.layers:
            return self
        groups, left = [], n
        for i, g in enumerate(self.attention):
            k = left if i == len(self.attention) - 1 else max(1, round(g.layers * n / self.layers))
            groups.append(replace(g, layers=max(1, k)))
            left -= groups[-1].layers
        return replace(self, layers=sum(g.layers for g in groups), attention=tuple(groups))


# ---------------------------------------------------------------- KV-cache arithmetic
def _window(g: LayerGroup, spec: ModelSpec) -> int | None:
    w = g.param("window")
    return int(w) if isinstance(w, int) and w < spec.max_context else None


def layer_token_bytes(g: LayerGroup, spec: ModelSpec, dtype: str) -> int:
    """Bytes one layer of group `g` caches per token."""
    if g.variant == LATENT:
        return (int(g.param("kv_lora_rank", 512)) + int(g.param("qk_rope_head_dim", 64))) * ITEMSIZE[dtype]
    return 2 * spec.kv_heads * spec.head_dim * ITEMSIZE[dtype]


def kv_bytes_per_seq(spec: ModelSpec, seq: int, dtype: str | None = None) -> int:
    """KV-cache bytes of one sequence of `seq` tokens, all layers."""
    dtype = dtype or spec.dtype
    total = 0
    for g in spec.attention:
        w = _window(g, spec)
        cached = seq if w is None else min(seq, w + int(g.param("sinks", 0) or 0))
        total += g.layers * cached * layer_token_bytes(g, spec, dtype)
    return total


def kv_bytes_per_token(spec: ModelSpec, dtype: str | None = None) -> int:
    """Bytes the cache grows by per token once the context is past every sliding window (the layers
    whose cache keeps growing); for a model of full-attention layers, kv_bytes_per_seq / seq."""
    dtype = dtype or spec.dtype
    return sum(g.layers * layer_token_bytes(g, spec, dtype) for g in spec.attention if _window(g, spec) is None)


def max_context(per_token: float, per_seq: float, seq: int, budget: float) -> float | None:
    """The longest context whose KV cache (one sequence) fits `budget` bytes, from a record's
    kv_bytes_per_token and kv_bytes_per_seq at `seq` tokens: the cache is fixed + per_token·L (the
    fixed part: the saturated sliding windows; exact once `seq` is past every window). math.inf
    when the cache stops growing (every layer windowed); None when even `seq`'s cache does not fit."""
    fixed = per_seq - per_token * seq
    if per_token <= 0:
        return math.inf if per_seq <= budget else None
    if budget < fixed + per_token:
        return None
    return math.floor((budget - fixed) / per_token)


def spec_max_context(spec: ModelSpec, budget: float, dtype: str | None = None) -> float | None:
    """The longest context whose KV cache (one sequence, all layers) fits `budget` bytes: exact, by
    bisection on kv_bytes_per_seq (it never decreases with L). math.inf when the cache stops growing
    within the budget; None when one token's cache does not fit."""
    if kv_bytes_per_seq(spec, 1, dtype) > budget:
        return None
    if kv_bytes_per_token(spec, dtype) == 0:
        return math.inf
    lo, hi = 1, 2
    while kv_bytes_per_seq(spec, hi, dtype) <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if kv_bytes_per_seq(spec, mid, dtype) <= budget else (lo, mid)
    return lo


# ---------------------------------------------------------------- presets
def _group(raw: Any, where: str) -> LayerGroup:
    if not isinstance(raw, dict) or not isinstance(raw.get("variant"), str):
        raise UsageError(f"{where}: each attention entry needs a variant name")
    layers = raw.get("layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise UsageError(f"{where}: attention layers must be an integer >= 1 (got {layers!r})")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise UsageError(f"{where}: attention params must be a table")
    return LayerGroup(raw["variant"], layers, tuple(sorted(params.items())))


_INT_KEYS = ("heads", "kv_heads", "head_dim", "layers", "max_context")


def spec_from_table(name: str, t: dict[str, Any], where: str = "models.toml") -> ModelSpec:
    """A ModelSpec from one preset table, checked (types, heads % kv_heads, layers add up)."""
    where = f"{where} [{name}]"
    for k in _INT_KEYS:
        v = t.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UsageError(f"{where}: {k} must be an integer >= 1 (got {v!r})")
    if t["heads"] % t["kv_heads"]:
        raise UsageError(f"{where}: kv_heads={t['kv_heads']} must divide heads={t['heads']}")
    if not isinstance(t.get("causal"), bool) or t.get("dtype") not in DTYPES:
        raise UsageError(f"{where}: causal must be true/false and dtype one of {', '.join(DTYPES)}")
    if not isinstance(t.get("source"), str) or not t["source"].strip():
        raise UsageError(f"{where}: source (paper or model card) is missing")
    groups = tuple(_group(g, where) for g in t.get("attention") or [])
    if not groups or sum(g.layers for g in groups) != t["layers"]:
        raise UsageError(f"{where}: the attention groups' layers must add up to layers={t['layers']}")
    seq = t.get("seq")
    if seq is not None and (not isinstance(seq, int) or seq < 1):
        raise UsageError(f"{where}: seq must be an integer >= 1")
    return ModelSpec(name, *(t[k] for k in ("heads", "kv_heads", "head_dim", "layers")), t["dtype"], t["causal"],
                     t["max_context"], groups, t["source"], seq)


def preset_text() -> str:
    return resources.files("attnbench").joinpath("models.toml").read_text(encoding="utf-8")


def presets() -> dict[str, ModelSpec]:
    """Every preset of attnbench/models.toml, by name."""
    data = tomllib.loads(preset_text())
    return {name: spec_from_table(name, t) for name, t in data.items()}


def preset(name: str) -> ModelSpec:
    table = presets()
    key = name.strip().lower()
    if key not in table:
        raise UsageError(f"unknown model '{name}'{did_you_mean(key, table)}; see `attnbench list --models`")
    return table[key]


# ---------------------------------------------------------------- Hugging Face config.json
def _need(cfg: dict, key: str, path: Path) -> int:
    v = cfg.get(key)
    if v is None:
        raise UsageError(f"--model-config '{path}': missing key '{key}'")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise UsageError(f"--model-config '{path}': '{key}' must be an integer >= 1 (got {v!r})")
    return v


def _sliding_layers(cfg: dict, layers: int) -> int:
    """How many layers use the sliding window: HF's `layer_types`, Gemma-3's `sliding_window_pattern`
    (every N-th layer global), Gemma-2's alternation, else all of them."""
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == layers:
        return sum(1 for t in types if "sliding" in str(t))
    pattern = cfg.get("sliding_window_pattern")
    if isinstance(pattern, int) and pattern > 0:
        return layers - layers // pattern
    if cfg.get("model_type") == "gemma2":
        return (layers + 1) // 2
    return layers


def spec_from_hf_config(path: Path) -> ModelSpec:
    """A ModelSpec from a local Hugging Face config.json (nothing is downloaded); a missing or bad
    key raises UsageError naming it. num_key_value_heads defaults to num_attention_heads (HF's own
    default: multi-head attention)."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--model-config '{path}' does not exist; give a local config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"--model-config '{path}' is not a readable JSON file: {' '.join(str(e).split())}") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"--model-config '{path}': expected a JSON object (a Hugging Face config.json)")
    cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg  # multimodal wrappers
    heads = _need(cfg, "num_attention_heads", path)
    kv = _need(cfg, "num_key_value_heads", path) if "num_key_value_heads" in cfg else heads
    layers = _need(cfg, "num_hidden_layers", path)
    if cfg.get("head_dim") is not None:
        head_dim = _need(cfg, "head_dim", path)
    elif cfg.get("hidden_size") is not None:
        head_dim = _need(cfg, "hidden_size", path) // heads
    else:
        raise UsageError(f"--model-config '{path}': missing key 'head_dim' (or 'hidden_size')")
    if heads % kv:
        raise UsageError(f"--model-config '{path}': num_key_value_heads={kv} must divide num_attention_heads={heads}")
    ctx = _need(cfg, "max_position_embeddings", path)
    raw_dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
    try:
        dtype = parse_dtype(str(raw_dtype))
    except UsageError:
        raise UsageError(
            f"--model-config '{path}': torch_dtype '{raw_dtype}' is not one of {', '.join(DTYPES)}") from None
    cap = cfg.get("attn_logit_softcapping")
    extra = {"softcap": float(cap)} if cap else {}
    notes = [f"rope_scaling {json.dumps(cfg['rope_scaling'], sort_keys=True)}"] if cfg.get("rope_scaling") else []
    if cfg.get("kv_lora_rank"):
        mla = {k: _need(cfg, k, path) for k in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")}
        head_dim = mla["qk_rope_head_dim"] + mla["qk_nope_head_dim"]
        groups: tuple[LayerGroup, ...] = (LayerGroup(LATENT, layers, tuple(sorted((mla | extra).items()))),)
    else:
        full = "gqa" if kv < heads else "causal"
        window = cfg.get("sliding_window")
        use = cfg.get("use_sliding_window", True) is not False
        n_slide = _sliding_layers(cfg, layers) if isinstance(window, int) and window > 0 and use else 0
        if cfg.get("model_type") == "gpt_oss":  # learned per-head sink logits on every layer (weights, not keys)
            extra |= {"sink_logit": "learned"}
        full_group = (LayerGroup("sliding_window", layers - n_slide, tuple(sorted(({"window": ctx} | extra).items())))
                      if "sink_logit" in extra else LayerGroup(full, layers - n_slide, tuple(sorted(extra.items()))))
        groups = tuple(g for g in (
            LayerGroup("sliding_window", n_slide, tuple(sorted(({"window": window} | extra).items()))),
            full_group,
        ) if g.layers > 0)
    name = f"config:{cfg.get('_name_or_path') or cfg.get('model_type') or path.stem}"
    return ModelSpec(name, heads, kv, head_dim, layers, dtype, True, ctx, groups, f"config.json at {path}",
                     notes=tuple(notes))


def describe(spec: ModelSpec) -> dict[str, Any]:
    """A preset as one row of `attnbench list --models` (JSON-able)."""
    groups = ", ".join(
        f"{g.layers}× {g.variant}" + (f" ({', '.join(f'{k}={v}' for k, v in g.params)})" if g.params else "")
        for g in spec.attention)
    return {"model": spec.name, "heads": spec.heads, "kv_heads": spec.kv_heads, "head_dim": spec.head_dim,
            "layers": spec.layers, "dtype": spec.dtype, "causal": spec.causal, "max_context": spec.max_context,
            "attention": groups, "kv_bytes_first_token": kv_bytes_per_seq(spec, 1),
            "kv_bytes_per_token": kv_bytes_per_token(spec),
            "kv_bytes_max_context": kv_bytes_per_seq(spec, spec.max_context),
            "source": spec.source}
