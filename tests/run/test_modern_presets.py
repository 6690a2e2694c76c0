"""DeepSeek-V3.2 (dsa layers) and Qwen3-Next (gdn and gqa layers) read from config.json as the models'
code reads them (transformers' own config classes), and their KV-cache/state bytes against counts
made here from the config's own numbers."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from attnbench.core.models import kv_bytes_per_seq, kv_bytes_per_token, preset_manifest
from attnbench.run.hfconfig import load, load_preset
from attnbench.run.models import model_plan
from attnbench.variants.backends.hf import transformers_missing

if transformers_missing():
    pytest.skip(transformers_missing(), allow_module_level=True)

CPU = torch.device("cpu")


def raw(name: str) -> dict:
    file = preset_manifest()[name]["file"]
    return json.loads(resources.files("attnbench").joinpath("presets", file).read_text())


def test_deepseek_v32_layers_are_dsa_with_the_indexer_from_the_config():
    cfg, spec = raw("deepseek-v3.2"), load_preset("deepseek-v3.2")
    [g] = spec.attention
    assert (g.variant, g.layers) == ("dsa", cfg["num_hidden_layers"])
    assert dict(g.params) == {"topk": cfg["index_topk"], "index_heads": cfg["index_n_heads"],
                              "index_head_dim": cfg["index_head_dim"], "kv_lora_rank": cfg["kv_lora_rank"],
                              "qk_rope_head_dim": cfg["qk_rope_head_dim"], "qk_nope_head_dim": cfg["qk_nope_head_dim"],
                              "v_head_dim": cfg["v_head_dim"]}
    assert g.scale == pytest.approx(load_preset("deepseek-v3").attention[0].scale)  # the same YaRN mscale²
    per_token = cfg["num_hidden_layers"] * (cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"] + cfg["index_head_dim"]) * 2
    assert kv_bytes_per_token(spec) == per_token == 61 * 704 * 2
    assert kv_bytes_per_seq(spec, 4096) == 4096 * per_token


def test_qwen3_next_layer_pattern_and_state_bytes_from_the_config():
    cfg, spec = raw("qwen3-next-80b-a3b"), load_preset("qwen3-next-80b-a3b")
    n, every = cfg["num_hidden_layers"], cfg["full_attention_interval"]
    full = sum(1 for i in range(n) if (i + 1) % every == 0)
    gdn, gqa = spec.attention
    assert (gdn.variant, gdn.layers, gqa.variant, gqa.layers) == ("gdn", n - full, "gqa", full)
    assert (gdn.layers, gqa.layers) == (36, 12)
    assert dict(gdn.dims) == {"heads": cfg["linear_num_value_heads"], "kv_heads": cfg["linear_num_key_heads"],
                              "head_dim": cfg["linear_key_head_dim"], "conv_kernel": cfg["linear_conv_kernel_dim"]}
    assert (spec.heads, spec.kv_heads, spec.head_dim) == (16, 2, 256)
    hv, hk, d = cfg["linear_num_value_heads"], cfg["linear_num_key_heads"], cfg["linear_key_head_dim"]
    state = hv * d * d * 4 + (cfg["linear_conv_kernel_dim"] - 1) * (2 * hk * d + hv * d) * 2  # fp32 state, bf16 conv
    per_token = full * 2 * cfg["num_key_value_heads"] * cfg["head_dim"] * 2
    assert kv_bytes_per_token(spec) == per_token
    for L in (4096, 65536):
        assert kv_bytes_per_seq(spec, L) == (n - full) * state + L * per_token


def test_explicit_layer_types_decide_the_groups(tmp_path):
    cfg = raw("qwen3-next-80b-a3b") | {"num_hidden_layers": 4,
                                        "layer_types": ["full_attention", "linear_attention", "linear_attention",
                                                        "full_attention"]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    spec = load(tmp_path / "config.json")
    assert [(g.variant, g.layers) for g in spec.attention] == [("gqa", 2), ("gdn", 2)]


def test_a_qwen3_next_run_gives_each_group_its_own_heads_and_the_models_kv_bytes():
    spec = load_preset("qwen3-next-80b-a3b")
    plan = model_plan([spec], {"seq": "4k", "modes": "decode", "backends": "recurrent,sdpa"}, CPU)
    shapes = {c.variant: (c.problem.heads, c.problem.kv_heads, c.problem.head_dim) for c in plan.cases}
    assert shapes == {"gdn": (32, 16, 128), "gqa": (16, 2, 256)}
    for c in plan.cases:
        rec = plan.annotate({"variant": c.variant, "backend": c.backend, **c.problem.as_dict()})
        assert rec["kv_bytes_per_seq"] == kv_bytes_per_seq(spec, 4096), c.variant
