"""--model-config read by transformers' own config classes and attention modules (run/hfconfig.py).

The configs below are laid out like the published config.json files of their families (the keys the
published files have, and only those: transformers' defaults fill the rest); the expected numbers
are worked out by hand from each model's published architecture.
"""

from __future__ import annotations

import json

import pytest

from attnbench.cli import main
from attnbench.core.errors import UsageError
from attnbench.core.models import kv_bytes_per_seq, kv_bytes_per_token, presets, spec_as_dict
from attnbench.run.hfconfig import derive_presets, load
from attnbench.variants.backends.hf import transformers_missing

if transformers_missing():
    pytest.skip(transformers_missing(), allow_module_level=True)

GEMMA3_27B_IT = {  # text_config without max_position_embeddings or sliding_window_pattern; dtype at the top
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "mm_tokens_per_image": 256,
    "text_config": {"model_type": "gemma3_text", "hidden_size": 5376, "intermediate_size": 21504,
                    "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128, "num_hidden_layers": 62,
                    "query_pre_attn_scalar": 168, "sliding_window": 1024,
                    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}},
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 896,
                      "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14},
    "torch_dtype": "bfloat16",
}
FALCON_7B = {"architectures": ["FalconForCausalLM"], "model_type": "falcon", "hidden_size": 4544,
             "num_attention_heads": 71, "num_hidden_layers": 32, "multi_query": True, "new_decoder_architecture": False,
             "parallel_attn": True, "alibi": False, "bias": False, "torch_dtype": "bfloat16", "vocab_size": 65024}
FALCON_7B_RW = {"architectures": ["RWForCausalLM"], "model_type": "RefinedWebModel", "hidden_size": 4544,
                "n_head": 71, "n_layer": 32, "multi_query": True, "parallel_attn": True, "alibi": False, "bias": False,
                "torch_dtype": "bfloat16", "vocab_size": 65024}
QWEN2_WINDOWED = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
                  "num_attention_heads": 28, "num_key_value_heads": 4, "num_hidden_layers": 28,
                  "max_position_embeddings": 32768, "use_sliding_window": True, "sliding_window": 4096,
                  "max_window_layers": 21, "torch_dtype": "bfloat16"}
VIT_B_16 = {"architectures": ["ViTForImageClassification"], "model_type": "vit", "hidden_size": 768,
            "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12, "image_size": 224,
            "patch_size": 16, "num_channels": 3, "qkv_bias": True}
LLAVA_15_7B = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
               "text_config": {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                               "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "torch_dtype": "float16",
                               "vocab_size": 32064},
               "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336,
                                 "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
                                 "patch_size": 14, "projection_dim": 768},
               "torch_dtype": "float16"}
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
         "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
         "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}
K8 = 8192


def config(tmp_path, cfg: dict, folder: bool = False):
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    return d if folder else d / "config.json"


def groups(spec):
    return [(g.variant, g.layers, dict(g.params)) for g in spec.attention]


def test_gemma3_defaults_and_kv_at_8k(tmp_path):
    spec = load(config(tmp_path, GEMMA3_27B_IT, folder=True))  # a folder works as well as the file
    assert groups(spec) == [("sliding_window", 52, {"window": 1024}), ("gqa", 10, {})]  # pattern 6: 5 local, 1 global
    assert (spec.max_context, spec.dtype, spec.kv_heads, spec.head_dim) == (131072, "bfloat16", 16, 128)
    layer = 2 * 16 * 128 * 2  # K and V, 16 KV heads of 128, bf16
    assert kv_bytes_per_seq(spec, K8) == 10 * layer * K8 + 52 * layer * 1024 == 1107296256
    assert all(g.scale == pytest.approx(168 ** -0.5) for g in spec.attention)  # query_pre_attn_scalar
    assert spec.reader.startswith("transformers ")


@pytest.mark.parametrize("cfg", [FALCON_7B, FALCON_7B_RW], ids=["falcon", "RefinedWeb"])
def test_falcon_multi_query_is_one_kv_head_in_both_formats(tmp_path, cfg):
    spec = load(config(tmp_path, cfg))
    assert (spec.heads, spec.kv_heads, spec.head_dim, spec.layers, spec.max_context) == (71, 1, 64, 32, 2048)
    assert groups(spec) == [("mqa", 32, {})]
    assert kv_bytes_per_token(spec) == 2 * 1 * 64 * 2 * 32


def test_qwen2_windows_only_layers_from_max_window_layers(tmp_path):
    spec = load(config(tmp_path, QWEN2_WINDOWED))
    assert groups(spec) == [("gqa", 21, {}), ("sliding_window", 7, {"window": 4096})]
    layer = 2 * 4 * 128 * 2
    assert kv_bytes_per_seq(spec, K8) == 21 * layer * K8 + 7 * layer * 4096
    off = load(config(tmp_path, QWEN2_WINDOWED | {"use_sliding_window": False}))
    assert groups(off) == [("gqa", 28, {})]


def test_vit_is_a_bidirectional_float32_encoder_of_197_tokens(tmp_path):
    spec = load(config(tmp_path, VIT_B_16))
    assert (spec.causal, spec.dtype, spec.seq, spec.heads, spec.kv_heads, spec.head_dim) == (
        False, "float32", 197, 12, 12, 64)
    assert groups(spec) == [("mha", 12, {})]


def test_llava_text_config_takes_llamas_defaults_and_the_dtype(tmp_path):
    spec = load(config(tmp_path, LLAVA_15_7B))
    assert (spec.heads, spec.kv_heads, spec.head_dim, spec.layers, spec.max_context, spec.dtype) == (
        32, 32, 128, 32, 4096, "float16")
    assert kv_bytes_per_seq(spec, K8) == 2 * 32 * 128 * 2 * 32 * K8


def test_top_level_dtype_null_kv_heads_and_unknown_model_type(tmp_path):
    top = load(config(tmp_path, {"model_type": "llava", "text_config": {"model_type": "llama"},
                                 "torch_dtype": "float16"}))
    assert top.dtype == "float16"
    mha = load(config(tmp_path, LLAMA | {"num_key_value_heads": None}))
    assert (mha.kv_heads, groups(mha)) == (32, [("causal", 32, {})])
    new = load(config(tmp_path, LLAMA | {"model_type": "not_a_transformers_type"}))
    assert "fallback reader" in new.reader and "not_a_transformers_type" in new.reader


def test_deepseek_v3_scale_is_yarn_mscale_squared(tmp_path):
    ds = presets()["deepseek-v3"]
    mscale = 0.1 * 1.0 * __import__("math").log(40) + 1.0  # YaRN: 0.1·mscale_all_dim·ln(factor) + 1
    assert ds.attention[0].scale == pytest.approx(192 ** -0.5 * mscale ** 2)
    assert mscale ** 2 == pytest.approx(1.874, abs=1e-3)
    assert presets()["gemma-2-27b"].attention[0].scale == pytest.approx(144 ** -0.5)


@pytest.mark.parametrize("bad, says", [
    ({"num_attention_heads": 5}, "rejects it"),
    ({"model_type": "gemma3_text", "layer_types": ["sliding_attention"] * 3}, "layer_types"),
    ({"num_key_value_heads": 5}, "num_key_value_heads=5 does not divide"),
    ({"torch_dtype": "int8"}, "torch_dtype 'int8'"),
])
def test_bad_configs_are_one_line_exit_2(tmp_path, capsys, bad, says):
    path = config(tmp_path, LLAMA | bad)
    out = tmp_path / "r.jsonl"
    assert main(["run", "--model-config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and str(path) in err and not out.exists()


def test_dry_run_json_carries_the_models_kv_cache(capsys):
    assert main(["run", "--model", "gemma-3-27b", "--seq", "1k,8k", "--mode", "decode", "--backends", "eager",
                 "--dry-run", "--json"]) == 0
    [m] = json.loads(capsys.readouterr().out)["models"]
    assert (m["name"], m["dtype"], m["layers"]) == ("gemma-3-27b", "bfloat16", 62)
    assert [(g["variant"], g["layers"]) for g in m["groups"]] == [("sliding_window", 52), ("gqa", 10)]
    assert m["kv_bytes_per_seq"] == {"1024": 62 * 1024 * 2 * 16 * 128 * 2, "8192": 1107296256}
    assert m["kv_bytes_per_token"] == 10 * 2 * 16 * 128 * 2 and m["source"].startswith("https://huggingface.co/")


@pytest.mark.slow
def test_derived_json_is_what_the_installed_transformers_derives():
    live = derive_presets()["presets"]
    shipped = {n: spec_as_dict(s) for n, s in presets().items()}
    for name in shipped:
        a, b = dict(shipped[name]), dict(live[name])
        assert a.pop("reader").split()[0] == b.pop("reader").split()[0] == "transformers", name
        assert a == b, f"{name}: derived.json differs from transformers; run write_derived()"


def test_read_only_paths_do_not_import_transformers():
    import subprocess
    import sys

    code = ("import sys; from attnbench.core.models import presets; presets(); "
            "from attnbench.report.formodel import list_models; "
            "assert 'transformers' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_preset_names_the_list():
    with pytest.raises(UsageError, match="unknown model 'llama-9'.*list --models"):
        load.__globals__["load_preset"]("llama-9")


def test_llama4_scout_chunked_layers_cache_a_chunk_and_are_recorded_unsupported():
    from attnbench.run.models import model_plan

    spec = presets()["llama-4-scout"]
    assert groups(spec) == [("chunked", 36, {"chunk": 8192}), ("gqa", 12, {})]  # 3 chunked RoPE, 1 global NoPE
    layer = 2 * 8 * 128 * 2
    assert kv_bytes_per_seq(spec, 131072) == 36 * layer * 8192 + 12 * layer * 131072
    assert any("attn_temperature_tuning" in n for n in spec.notes)
    plan = model_plan([spec], {"seq": "256", "modes": "decode", "backends": "sdpa"}, __import__("torch").device("cpu"))
    chunked = [c for c in plan.cases if c.variant == "chunked"]
    assert chunked and all(c.status == "unsupported" and "'chunked' is not in this attnbench" in c.reason
                           for c in chunked)
