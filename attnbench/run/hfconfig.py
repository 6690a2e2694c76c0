"""A model's attention as transformers builds it, from a local config.json (or a folder holding one).

The file is read by transformers' own config class (the one its `model_type` names; nothing is
downloaded: `local_files_only`), so every default and derived field is transformers': Gemma-3's
`sliding_window_pattern` → `layer_types`, Qwen2's `max_window_layers`, Llava's `text_config` left to
LlamaConfig's defaults, Falcon's `n_head`/`n_layer` spellings. Then, for each distinct layer type,
the model's own attention module is built on the meta device (no memory, no weights) and read:

    scaling                      the softmax scale (Gemma-2: query_pre_attn_scalar^-½; DeepSeek-V3:
                                 1/√192 × YaRN mscale²); a group's `scale`
    num_key_value_groups,        KV heads (Falcon: `multi_query` → 1 unless new_decoder_architecture;
    num_kv_heads                 num_key_value_heads null → the heads, multi-head attention)
    head_dim / qk_head_dim, kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim   (MLA)
    is_causal                    False: an encoder (ViT), bidirectional
    attn_logit_softcapping       → `softcap`;   a `sinks` parameter (gpt-oss) → `sink_logit=learned`

DeepSeek-V3.2's `index_topk`, `index_n_heads`, `index_head_dim` make its MLA layers `dsa` (topk,
index_heads, index_head_dim). A `layer_types` entry "linear_attention" with the config's
`linear_num_value_heads`, `linear_num_key_heads`, `linear_key_head_dim`, `linear_value_head_dim`,
`linear_conv_kernel_dim` (Qwen3-Next: transformers derives layer_types from
`full_attention_interval`) is a `gdn` group with those heads and head dim as its own `dims`.
Which layers are windowed is what the model's masks do: `layer_types` ("sliding_attention" → the
config's `sliding_window`, "chunked_attention" → `attention_chunk_size`), else every layer when
the modeling code builds a sliding-window mask and `sliding_window` is set (Mistral, Phi-3). A
transformers window w lets query i see keys i-w+1..i, attnbench's `window` = w exactly. The dtype
is the text config's, else the top-level one, else float32 (transformers' default).

A config whose `model_type` the installed transformers does not know (or transformers missing)
falls back to attnbench's own reader (core/models.spec_from_hf_config, documented there), and the
spec's `reader` says so. A config transformers rejects is one UsageError line with its reason.
"""

from __future__ import annotations

import importlib
import inspect
import json
from importlib import resources
from pathlib import Path
from typing import Any

from attnbench.core.errors import UsageError
from attnbench.core.models import (
    LATENT,
    PRESETS,
    RECURRENT,
    SPARSE_LATENT,
    LayerGroup,
    ModelSpec,
    check_preset,
    preset_config,
    preset_manifest,
    preset_source,
    presets,
    read_config_json,
    spec_as_dict,
    spec_from_hf_config,
)
from attnbench.core.problem import DTYPES
from attnbench.variants.backends.hf import import_transformers

ALIASES = {"RefinedWebModel": "falcon", "RefinedWeb": "falcon"}  # Falcon's original (RefinedWeb) format
MLA_DIMS = ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
DSA_PARAMS = {"index_topk": "topk", "index_n_heads": "index_heads", "index_head_dim": "index_head_dim"}
LINEAR = "linear_attention"  # the layer type of Qwen3-Next's Gated DeltaNet layers


def config_file(path: Path) -> Path:
    """The config.json of a file or folder argument."""
    path = Path(path)
    return path / "config.json" if path.is_dir() else path


def load(path: Path, name: str | None = None, source: str | None = None) -> ModelSpec:
    """The ModelSpec of a local config.json (or folder), read by transformers where it knows the
    model type, else by the fallback reader (the spec's `reader` says which and why)."""
    file = config_file(path)
    raw = read_config_json(file)
    try:
        transformers = import_transformers()
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    except ImportError:
        return _fallback(file, name, source, "transformers is not installed")
    model_type = ALIASES.get(raw.get("model_type"), raw.get("model_type"))
    if model_type not in CONFIG_MAPPING:
        return _fallback(file, name, source,
                         f"model_type {raw.get('model_type')!r} is unknown to transformers {transformers.__version__}")
    cls = CONFIG_MAPPING[model_type]
    log = transformers.utils.logging
    verbosity = log.get_verbosity()
    log.set_verbosity_error()  # its notes (a RefinedWeb file read as Falcon, rope checks) are not the user's errors
    try:
        cfg = cls.from_pretrained(str(file), local_files_only=True)
        reader = f"transformers {transformers.__version__} ({type(cfg).__name__})"
        return from_config(cfg, name or _name(raw, file), source or f"config.json at {file}", reader)
    except UsageError as e:
        raise UsageError(f"--model-config '{file}': {e}") from None
    except Exception as e:  # transformers' own validation: its reason, one line
        raise UsageError(f"--model-config '{file}': transformers {transformers.__version__} rejects it "
                         f"({type(e).__name__}): {' '.join(str(e).split())}") from None
    finally:
        log.set_verbosity(verbosity)


def _fallback(file: Path, name: str | None, source: str | None, why: str) -> ModelSpec:
    from dataclasses import replace

    spec = spec_from_hf_config(file)
    return replace(spec, name=name or spec.name, source=source or spec.source,
                   reader=f"attnbench's fallback reader ({why})")


def _name(raw: dict, file: Path) -> str:
    text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else {}
    return f"config:{raw.get('_name_or_path') or raw.get('model_type') or text.get('model_type') or file.stem}"


# ---------------------------------------------------------------- the model's attention modules
def attention_class(cfg) -> type:
    """The attention module class of a config's modeling file (the first `*Attention` class
    defined there that has a `scaling` once built; vision towers of multimodal files last)."""
    mod_name = type(cfg).__module__.replace(".configuration_", ".modeling_")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise UsageError(f"transformers has no modeling code for {type(cfg).__name__} ({e})") from None
    import torch

    found = [c for n, c in vars(mod).items() if inspect.isclass(c) and n.endswith("Attention")
             and issubclass(c, torch.nn.Module) and c.__module__ == mod.__name__]
    found.sort(key=lambda c: "Vision" in c.__name__)
    if not found:
        raise UsageError(f"{mod_name} defines no attention module attnbench can read")
    return found[0]


def build_module(cls: type, cfg, layer: int):
    """One attention module on the meta device (no memory): cls(config, layer_idx) or cls(config)."""
    import torch

    with torch.device("meta"):
        try:
            return cls(cfg, layer)
        except TypeError:  # no layer_idx (ViT); the signature may hide behind a wrapper, so it is tried
            return cls(cfg)


def _layer_kinds(cfg, layers: int, windowed_mask: bool) -> list[tuple[str, int | None]]:
    """(kind, size) per layer: ("full", None), ("sliding", w), ("chunked", c) or (the layer type, None)."""
    types = getattr(cfg, "layer_types", None)
    w = getattr(cfg, "sliding_window", None)
    if types is None:
        return [("sliding", int(w)) if windowed_mask and w else ("full", None)] * layers
    if len(types) != layers:
        raise UsageError(f"layer_types has {len(types)} entries but num_hidden_layers is {layers}: "
                         "one type per layer")
    out = []
    for t in types:
        if t == "sliding_attention" and w:
            out.append(("sliding", int(w)))
        elif t == "chunked_attention":
            out.append(("chunked", getattr(cfg, "attention_chunk_size", None)))
        elif t in ("full_attention", "sliding_attention"):
            out.append(("full", None))
        else:
            out.append((str(t), None))
    return out


def _uses_window_mask(cls: type) -> bool:
    src = inspect.getsource(inspect.getmodule(cls))
    return "create_sliding_window_causal_mask" in src


def _dtype(cfg, top) -> str:
    raw = getattr(cfg, "dtype", None) or getattr(top, "dtype", None) or "float32"
    name = str(raw).removeprefix("torch.")
    if name not in DTYPES:
        raise UsageError(f"torch_dtype '{name}' is not one attnbench runs; accepted: {', '.join(DTYPES)}")
    return name


def text_config(top):
    """The config of the attention attnbench models: a multimodal config's text (decoder) config."""
    cfg = top.get_text_config(decoder=True) if hasattr(top, "get_text_config") else top
    if getattr(cfg, "num_hidden_layers", None) is None and hasattr(top, "vision_config") and cfg is top:
        cfg = top.vision_config
    return cfg


def from_config(top, name: str, source: str, reader: str) -> ModelSpec:
    """A ModelSpec from a transformers config object (see the module doc)."""
    cfg = text_config(top)
    cls = attention_class(cfg)
    layers = int(cfg.num_hidden_layers)
    kinds = _layer_kinds(cfg, layers, _uses_window_mask(cls))
    first = {k: kinds.index(k) for k in dict.fromkeys(kinds)}
    mods = {k: build_module(cls, cfg, i) for k, i in first.items()}
    m0 = next(iter(mods.values()))
    heads = int(cfg.num_attention_heads)
    kv = _kv_heads(m0, cfg, heads)
    if kv < 1 or heads % kv:
        raise UsageError(f"num_key_value_heads={kv} does not divide num_attention_heads={heads}: attnbench's "
                         "grouped-query attention needs whole groups")
    mla = all(getattr(m0, d, None) or getattr(cfg, d, None) for d in MLA_DIMS) and getattr(cfg, "kv_lora_rank", None)
    head_dim = int(getattr(m0, "qk_head_dim", None) or getattr(m0, "head_dim", None) or cfg.hidden_size // heads)
    causal = bool(getattr(m0, "is_causal", True))
    seq = None
    ctx = getattr(cfg, "max_position_embeddings", None)
    if ctx is None and getattr(cfg, "image_size", None) and getattr(cfg, "patch_size", None):
        seq = ctx = (int(cfg.image_size) // int(cfg.patch_size)) ** 2 + 1  # the patches and the [class] token
    if ctx is None:
        raise UsageError(f"{type(cfg).__name__} gives no max_position_embeddings (nor image_size/patch_size)")
    count: dict[tuple, int] = {}
    for k in kinds:
        count[k] = count.get(k, 0) + 1
    groups = []
    for k, n in count.items():
        groups.append(_group(k, n, mods[k], cfg, heads, kv, causal, int(ctx), mla))
    notes = [f"rope {json.dumps(cfg.rope_parameters, sort_keys=True, default=str)}"] if getattr(
        cfg, "rope_parameters", None) else []
    if getattr(cfg, "attn_temperature_tuning", False):  # Llama-4's NoPE layers
        notes.append(f"attn_temperature_tuning: queries at positions >= floor_scale={cfg.floor_scale} are scaled by "
                     f"1 + {cfg.attn_scale}·ln(floor((pos+1)/floor_scale) + 1) in the global layers; not modelled "
                     "(the scale is exact below that position)")
    return ModelSpec(name, heads, kv, head_dim, layers, _dtype(cfg, top), causal, int(ctx), tuple(groups), source,
                     seq, tuple(notes), reader)


def _kv_heads(m, cfg, heads: int) -> int:
    if getattr(m, "num_kv_heads", None):
        return int(m.num_kv_heads)
    if getattr(m, "num_key_value_groups", None):
        return heads // int(m.num_key_value_groups)
    return int(getattr(cfg, "num_key_value_heads", None) or heads)


def _group(kind: tuple, n: int, m, cfg, heads: int, kv: int, causal: bool, ctx: int, mla) -> LayerGroup:
    scale = float(m.scaling)
    extra: dict[str, Any] = {}
    cap = getattr(m, "attn_logit_softcapping", None) or getattr(cfg, "attn_logit_softcapping", None)
    if cap:
        extra["softcap"] = float(cap)
    if _is_param(getattr(m, "sinks", None)):
        extra["sink_logit"] = "learned"
    what, size = kind
    if what == LINEAR and getattr(cfg, "linear_num_value_heads", None):
        return _linear_group(n, cfg)
    if mla and getattr(cfg, "index_topk", None):  # DeepSeek Sparse Attention over the MLA cache
        dsa = {mine: int(getattr(cfg, theirs)) for theirs, mine in DSA_PARAMS.items()}
        return LayerGroup(SPARSE_LATENT, n, tuple(sorted(({d: int(getattr(cfg, d)) for d in MLA_DIMS} | dsa
                                                         | extra).items())), scale)
    if mla:
        return LayerGroup(LATENT, n, tuple(sorted(({d: int(getattr(cfg, d)) for d in MLA_DIMS} | extra).items())),
                          scale)
    if what == "sliding":
        return LayerGroup("sliding_window", n, tuple(sorted(({"window": size} | extra).items())), scale)
    if what == "chunked":
        return LayerGroup("chunked", n, tuple(sorted(({"chunk": size} | extra).items())), scale)
    if what != "full":
        return LayerGroup(what, n, tuple(sorted(extra.items())), scale)
    if "sink_logit" in extra:  # sinks live on sliding_window: a window of the whole context is full attention
        return LayerGroup("sliding_window", n, tuple(sorted(({"window": ctx} | extra).items())), scale)
    variant = "mqa" if kv == 1 and heads > 1 else "gqa" if kv < heads else "causal" if causal else "mha"
    return LayerGroup(variant, n, tuple(sorted(extra.items())), scale)


def _linear_group(n: int, cfg) -> LayerGroup:
    """Gated DeltaNet layers: value heads (gdn's heads), q/k heads (its kv_heads), one head dim (gdn
    needs key dim = value dim) and the short convolution's width, as the model's code reads them."""
    dk, dv = int(cfg.linear_key_head_dim), int(cfg.linear_value_head_dim)
    if dk != dv:
        raise UsageError(f"linear_key_head_dim={dk} != linear_value_head_dim={dv}: attnbench's gdn takes one head dim")
    dims = {"heads": int(cfg.linear_num_value_heads), "kv_heads": int(cfg.linear_num_key_heads), "head_dim": dk,
            "conv_kernel": int(getattr(cfg, "linear_conv_kernel_dim", 1) or 1)}
    return LayerGroup(RECURRENT, n, (), dk ** -0.5, tuple(sorted(dims.items())))  # the model's (and FLA's) 1/√K


def _is_param(x: Any) -> bool:
    import torch

    return isinstance(x, torch.nn.Parameter)



# ---------------------------------------------------------------- presets
def load_preset(name: str) -> ModelSpec:
    """A preset read from its packaged config.json by transformers (the same path as --model-config);
    without transformers, the spec it derived when the package was built (derived.json), which the
    spec's `reader` says."""
    from dataclasses import replace

    key = check_preset(name)
    entry = preset_manifest()[key]
    try:
        import_transformers()
    except ImportError:
        spec = presets()[key]
        return replace(spec, reader=f"{spec.reader}, from derived.json (transformers is not installed here)")
    with resources.as_file(preset_config(key)) as path:
        return load(path, name=key, source=preset_source(entry))


def derive_presets() -> dict[str, Any]:
    """derived.json: every preset as the installed transformers reads it."""
    transformers = import_transformers()
    return {"transformers": transformers.__version__,
            "presets": {name: spec_as_dict(load_preset(name)) for name in preset_manifest()}}


def write_derived(path: Path | None = None) -> Path:
    """Regenerate attnbench/presets/derived.json (after adding or replacing a preset's config.json):
    python -c 'from attnbench.run.hfconfig import write_derived; write_derived()'."""
    path = path or Path(str(resources.files("attnbench").joinpath(PRESETS, "derived.json")))
    path.write_text(json.dumps(derive_presets(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path
