"""Model specs, presets, attnbench's fallback config reader and the KV-cache arithmetic.

A model is its attention as attnbench sees it: query/KV heads, head dimension, dtype, causal,
maximum context, and layer groups (the variant and parameters a group of layers uses, and the
softmax scale the model's code applies). Presets are real config.json files in attnbench/presets/,
read by transformers (run/hfconfig.py) like any --model-config file; derived.json keeps what
transformers derived from them so that read-only commands need neither transformers nor torch. The KV-cache
arithmetic is exact for the caches it describes and counts nothing else (weights, activations, the
allocator's slack and a paged cache's last partial page are not included):

    per layer and token   2·Hkv·D·itemsize   (K and V)      MLA: (kv_lora_rank + qk_rope_head_dim)·itemsize
                          DSA: (kv_lora_rank + qk_rope_head_dim + index_head_dim)·itemsize (the latent
                          row and the indexer's key; DeepSeek keeps the indexer key in FP8 with a
                          scale, counted here in the model's dtype)
    tokens cached at L    L, or min(L, window) for a sliding-window group (a ring-buffer cache, as
                          vLLM and Hugging Face keep for Mistral and Gemma-2), min(L, chunk) for a chunked one
    per layer and sequence, constant in L (Gated DeltaNet: no per-token cache)
                          Hv·Dk·Dv·4 (the recurrent state, float32 as FLA and flashinfer keep it)
                          + (conv_kernel − 1)·(2·Hk·Dk + Hv·Dv)·itemsize (the short convolution's
                          last inputs; transformers' cache keeps conv_kernel columns, vLLM conv_kernel − 1)

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

HF_IMPLEMENTATION = {"hf-eager": "eager", "hf-sdpa": "sdpa", "hf-flex": "flex_attention"}  # backend -> what
# a transformers user sets (`attn_implementation=`) to run the same function (variants/backends/hf.py)
LATENT = "mla"  # the variant whose cache is a latent vector per token (variants/mla.py)
SPARSE_LATENT = "dsa"  # MLA's latent cache plus the indexer's key per token (variants/dsa.py)
RECURRENT = "gdn"  # a state per sequence instead of a per-token cache (variants/gdn.py)
STATE_ITEMSIZE = 4  # the recurrent state's bytes per element (float32)


@dataclass(frozen=True)
class LayerGroup:
    """`layers` layers that use `variant` with `params` (name -> value) and the softmax `scale` the
    model's code uses (None: the variant's default, 1/√D; MLA 1/√(qk_nope + qk_rope))."""

    variant: str
    layers: int
    params: tuple[tuple[str, Any], ...] = ()
    scale: float | None = None
    dims: tuple[tuple[str, int], ...] = ()  # this group's own heads, kv_heads, head_dim (and conv_kernel)
    # where its layers differ from the model's: Qwen3-Next's linear-attention layers

    def dim(self, name: str, default: int) -> int:
        return int(dict(self.dims).get(name, default))

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
    reader: str = ""  # what read the config: transformers (its version and class) or the fallback reader

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
    """The most tokens a layer of `g` caches (a sliding window, or a chunked layer's chunk), None: all."""
    w = g.param("window", g.param("chunk"))
    return int(w) if isinstance(w, int) and w < spec.max_context else None


def layer_token_bytes(g: LayerGroup, spec: ModelSpec, dtype: str) -> int:
    """Bytes one layer of group `g` caches per token."""
    if g.variant == RECURRENT:
        return 0
    if g.variant in (LATENT, SPARSE_LATENT):
        index = int(g.param("index_head_dim", 128)) if g.variant == SPARSE_LATENT else 0
        return (int(g.param("kv_lora_rank", 512)) + int(g.param("qk_rope_head_dim", 64)) + index) * ITEMSIZE[dtype]
    return 2 * g.dim("kv_heads", spec.kv_heads) * g.dim("head_dim", spec.head_dim) * ITEMSIZE[dtype]


def layer_state_bytes(g: LayerGroup, spec: ModelSpec, dtype: str) -> int:
    """Bytes one layer of group `g` keeps per sequence whatever its length (a recurrent state)."""
    if g.variant != RECURRENT:
        return 0
    hv, hk, d = g.dim("heads", spec.heads), g.dim("kv_heads", spec.kv_heads), g.dim("head_dim", spec.head_dim)
    conv = (g.dim("conv_kernel", 1) - 1) * (2 * hk * d + hv * d) * ITEMSIZE[dtype]
    return hv * d * d * STATE_ITEMSIZE + conv


def kv_bytes_per_seq(spec: ModelSpec, seq: int, dtype: str | None = None) -> int:
    """KV-cache bytes of one sequence of `seq` tokens, all layers."""
    dtype = dtype or spec.dtype
    total = 0
    for g in spec.attention:
        w = _window(g, spec)
        cached = seq if w is None else min(seq, w + int(g.param("sinks", 0) or 0))
        total += g.layers * (cached * layer_token_bytes(g, spec, dtype) + layer_state_bytes(g, spec, dtype))
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
PRESETS = "presets"  # package folder: one config.json per preset, manifest.toml, derived.json


def preset_manifest() -> dict[str, dict[str, str]]:
    """manifest.toml: per preset, its config file, repo, url, revision, provenance and doc."""
    return tomllib.loads(resources.files("attnbench").joinpath(PRESETS, "manifest.toml").read_text(encoding="utf-8"))


def preset_source(entry: dict[str, str]) -> str:
    """A preset's `source` line: where its config.json stands from and how it was obtained."""
    rev = f"revision {entry['revision']}" if entry.get("revision") else "no revision seen"
    return f"{entry['url']} ({entry['provenance']}; {rev}); {entry['doc']}"


def preset_config(name: str):
    """The packaged config.json of a preset (an importlib Traversable; str() is its path when installed
    from a folder)."""
    entry = preset_manifest()[name]
    return resources.files("attnbench").joinpath(PRESETS, entry["file"])


def spec_as_dict(spec: ModelSpec) -> dict[str, Any]:
    """A ModelSpec as JSON (derived.json)."""
    d = {f: getattr(spec, f) for f in ("name", "heads", "kv_heads", "head_dim", "layers", "dtype", "causal",
                                        "max_context", "source", "seq", "reader")}
    d["notes"] = list(spec.notes)
    d["attention"] = [{"variant": g.variant, "layers": g.layers, "params": dict(g.params), "scale": g.scale}
                      | ({"dims": dict(g.dims)} if g.dims else {}) for g in spec.attention]
    return d


def spec_from_dict(d: dict[str, Any]) -> ModelSpec:
    groups = tuple(LayerGroup(g["variant"], int(g["layers"]), tuple(sorted(g.get("params", {}).items())),
                              g.get("scale"), tuple(sorted(g.get("dims", {}).items()))) for g in d["attention"])
    return ModelSpec(d["name"], d["heads"], d["kv_heads"], d["head_dim"], d["layers"], d["dtype"], d["causal"],
                     d["max_context"], groups, d["source"], d.get("seq"), tuple(d.get("notes", ())),
                     d.get("reader", ""))


def presets() -> dict[str, ModelSpec]:
    """Every preset as transformers derived it from its packaged config.json (derived.json, written by
    run/hfconfig.derive_presets and checked against transformers by the tests): read without importing
    transformers or torch, for `list --models` and the report. `run --model` reads the config itself."""
    raw = json.loads(resources.files("attnbench").joinpath(PRESETS, "derived.json").read_text(encoding="utf-8"))
    return {name: spec_from_dict(d) for name, d in raw["presets"].items()}


def check_preset(name: str) -> str:
    """The preset's key (lower-case) or UsageError naming the list."""
    key = name.strip().lower()
    table = preset_manifest()
    if key not in table:
        raise UsageError(f"unknown model '{name}'{did_you_mean(key, table)}; see `attnbench list --models`")
    return key


def preset(name: str) -> ModelSpec:
    """One preset from derived.json (see presets)."""
    return presets()[check_preset(name)]


# ---------------------------------------------------------------- Hugging Face config.json
def _need(cfg: dict, key: str, path: Path) -> int:
    v = cfg.get(key)
    if v is None:
        raise UsageError(f"--model-config '{path}': missing key '{key}'")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise UsageError(f"--model-config '{path}': '{key}' must be an integer >= 1 (got {v!r})")
    return v


def _sliding_layers(cfg: dict, layers: int, path: Path) -> int:
    """How many layers use the sliding window: HF's `layer_types` (a list of the wrong length is an
    error), Gemma-3's `sliding_window_pattern` (every N-th layer global), Gemma-2's alternation,
    Qwen2's `max_window_layers` (layers from it on), else all of them."""
    types = cfg.get("layer_types")
    if isinstance(types, list):
        if len(types) != layers:
            raise UsageError(f"--model-config '{path}': layer_types has {len(types)} entries but num_hidden_layers "
                             f"is {layers}: one type per layer")
        return sum(1 for t in types if "sliding" in str(t))
    pattern = cfg.get("sliding_window_pattern")
    if isinstance(pattern, int) and pattern > 0:
        return layers - layers // pattern
    if cfg.get("model_type") == "gemma2":
        return (layers + 1) // 2
    if cfg.get("model_type") == "qwen2" and isinstance(cfg.get("max_window_layers"), int):
        return max(0, layers - cfg["max_window_layers"])
    return layers



def read_config_json(path: Path) -> dict:
    """The JSON object of a config file (the `--model-config` FILE); UsageError (one line) when it is
    missing, unreadable or not an object."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--model-config '{path}' does not exist; give a local config.json or its folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"--model-config '{path}' is not a readable JSON file: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"--model-config '{path}': expected a JSON object (a Hugging Face config.json)")
    return raw

def spec_from_hf_config(path: Path) -> ModelSpec:
    """attnbench's fallback reader of a local Hugging Face config.json (nothing is downloaded), for
    a model type the installed transformers does not know (run/hfconfig.py reads the others with
    transformers' own classes). It takes `text_config` when present (the top-level `torch_dtype`
    beside it counts), `num_key_value_heads` absent or null → the heads (MHA), `head_dim` or
    hidden_size / heads, the dtype (default float32, transformers' default), `sliding_window`
    (off when `use_sliding_window` is false; which layers: see _sliding_layers),
    `attn_logit_softcapping` → softcap, `query_pre_attn_scalar` → scale, MLA dimensions → mla,
    `model_type: gpt_oss` → sink_logit=learned. A config is taken as causal. A missing or bad key
    raises UsageError naming it. It knows no other model-specific default: the spec's `reader` says so."""
    path = Path(path)
    top = read_config_json(path)
    cfg = top.get("text_config") if isinstance(top.get("text_config"), dict) else top  # multimodal wrappers
    heads = _need(cfg, "num_attention_heads", path)
    kv = _need(cfg, "num_key_value_heads", path) if cfg.get("num_key_value_heads") is not None else heads
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
    raw_dtype = (cfg.get("torch_dtype") or cfg.get("dtype") or top.get("torch_dtype") or top.get("dtype")
                 or "float32")
    try:
        dtype = parse_dtype(str(raw_dtype))
    except UsageError:
        raise UsageError(
            f"--model-config '{path}': torch_dtype '{raw_dtype}' is not one of {', '.join(DTYPES)}") from None
    cap = cfg.get("attn_logit_softcapping")
    extra = {"softcap": float(cap)} if cap else {}
    qpas = cfg.get("query_pre_attn_scalar")
    scale = float(qpas) ** -0.5 if isinstance(qpas, (int, float)) and qpas > 0 else None
    notes = [f"rope_scaling {json.dumps(cfg['rope_scaling'], sort_keys=True)}"] if cfg.get("rope_scaling") else []
    if cfg.get("kv_lora_rank"):
        mla = {k: _need(cfg, k, path) for k in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")}
        head_dim = mla["qk_rope_head_dim"] + mla["qk_nope_head_dim"]
        groups: tuple[LayerGroup, ...] = (LayerGroup(LATENT, layers, tuple(sorted((mla | extra).items())), scale),)
    else:
        full = "gqa" if kv < heads else "causal"
        window = cfg.get("sliding_window")
        use = cfg.get("use_sliding_window", True) is not False
        n_slide = _sliding_layers(cfg, layers, path) if isinstance(window, int) and window > 0 and use else 0
        if cfg.get("model_type") == "gpt_oss":  # learned per-head sink logits on every layer (weights, not keys)
            extra |= {"sink_logit": "learned"}
        full_group = (LayerGroup("sliding_window", layers - n_slide, tuple(sorted(({"window": ctx} | extra).items())),
                                 scale)
                      if "sink_logit" in extra else LayerGroup(full, layers - n_slide, tuple(sorted(extra.items())),
                                                               scale))
        groups = tuple(g for g in (
            LayerGroup("sliding_window", n_slide, tuple(sorted(({"window": window} | extra).items())), scale),
            full_group,
        ) if g.layers > 0)
    name = f"config:{cfg.get('_name_or_path') or top.get('_name_or_path') or cfg.get('model_type') or path.stem}"
    return ModelSpec(name, heads, kv, head_dim, layers, dtype, True, ctx, groups, f"config.json at {path}",
                     notes=tuple(notes), reader="attnbench's fallback reader")


def default_scale(g: LayerGroup, head_dim: int) -> float:
    """The scale a variant uses when given none: 1/√D; MLA 1/√(qk_nope + qk_rope)."""
    latent = g.variant in (LATENT, SPARSE_LATENT)
    d = int(g.param("qk_nope_head_dim")) + int(g.param("qk_rope_head_dim")) if latent else g.dim("head_dim", head_dim)
    return 1.0 / math.sqrt(d)


def group_scale(g: LayerGroup, head_dim: int) -> float:
    """The softmax scale a group's layers use (its own, else the variant's default)."""
    return g.scale if g.scale is not None else default_scale(g, head_dim)


def describe(spec: ModelSpec) -> dict[str, Any]:
    """A preset as one row of `attnbench list --models` (JSON-able)."""
    groups = ", ".join(
        f"{g.layers}× {g.variant}" + (f" ({', '.join(f'{k}={v}' for k, v in g.params + g.dims)})"
                                      if g.params or g.dims else "")
        + f" scale {group_scale(g, spec.head_dim):.4g}" for g in spec.attention)
    return {"model": spec.name, "heads": spec.heads, "kv_heads": spec.kv_heads, "head_dim": spec.head_dim,
            "layers": spec.layers, "dtype": spec.dtype, "causal": spec.causal, "max_context": spec.max_context,
            "attention": groups, "kv_bytes_first_token": kv_bytes_per_seq(spec, 1),
            "kv_bytes_per_token": kv_bytes_per_token(spec),
            "kv_bytes_max_context": kv_bytes_per_seq(spec, spec.max_context),
            "source": spec.source, "reader": spec.reader}
