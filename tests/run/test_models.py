"""Model presets, --model-config and the KV-cache arithmetic (core/models.py, run/models.py)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import fields

import pytest
import torch

from attnbench.cli import main
from attnbench.core.errors import UsageError
from attnbench.core.models import (
    LayerGroup,
    ModelSpec,
    kv_bytes_per_seq,
    kv_bytes_per_token,
    max_context,
    preset,
    preset_config,
    preset_manifest,
    preset_source,
    presets,
    spec_from_hf_config,
    spec_max_context,
)
from attnbench.run.hfconfig import load
from attnbench.run.models import model_plan, resolve_models

CPU = torch.device("cpu")
LLAMA3_8B_CONFIG = {  # the keys of meta-llama/Meta-Llama-3-8B's config.json that attnbench reads, by hand
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
    "max_position_embeddings": 8192, "torch_dtype": "bfloat16", "rope_theta": 500000.0,
}


def write_config(tmp_path, cfg: dict):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return p


def test_every_preset_is_a_config_file_with_its_source_and_a_valid_derived_spec():
    table = presets()
    manifest = preset_manifest()
    assert set(table) == set(manifest) and len(table) >= 24
    for name, spec in table.items():
        entry = manifest[name]
        assert preset_config(name).is_file(), name
        assert entry["url"].startswith("https://huggingface.co/") and entry["provenance"] and entry["doc"], name
        assert spec.source == preset_source(entry) and spec.reader.startswith("transformers "), name
        assert spec.heads % spec.kv_heads == 0, name
        assert sum(g.layers for g in spec.attention) == spec.layers, name
        for f in fields(ModelSpec):
            v = getattr(spec, f.name)
            if f.name in ("heads", "kv_heads", "head_dim", "layers", "max_context"):
                assert isinstance(v, int) and not isinstance(v, bool) and v >= 1, (name, f.name)
        assert spec.dtype in ("float32", "float16", "bfloat16") and isinstance(spec.causal, bool)
        assert all(isinstance(g.scale, float) and 0 < g.scale < 1 for g in spec.attention), name


def test_well_known_numbers():
    llama = preset("llama-3-8b")
    assert (llama.heads, llama.kv_heads, llama.head_dim, llama.layers, llama.causal) == (32, 8, 128, 32, True)
    vit = preset("vit-b-16")
    assert (vit.seq, vit.causal, vit.attention[0].variant) == (197, False, "mha")
    mistral = preset("mistral-7b")
    assert mistral.attention[0].param("window") == 4096
    ds = preset("deepseek-v3")
    assert ds.attention[0].variant == "mla" and ds.attention[0].param("kv_lora_rank") == 512


def test_kv_arithmetic_by_hand():
    llama = preset("llama-3-8b")
    per_token = 2 * 8 * 128 * 2 * 32  # K and V, 8 KV heads of 128, bf16, 32 layers
    assert kv_bytes_per_token(llama) == per_token == kv_bytes_per_seq(llama, 1000) // 1000
    assert kv_bytes_per_seq(llama, 4096, "float32") == 2 * per_token * 4096
    assert spec_max_context(llama, 80 * 2**30) == 80 * 2**30 // per_token == 655360
    mistral = preset("mistral-7b")  # every layer windowed at 4096: the cache stops growing
    assert kv_bytes_per_seq(mistral, 100_000) == kv_bytes_per_seq(mistral, 4096) == 4096 * per_token
    assert kv_bytes_per_token(mistral) == 0 and spec_max_context(mistral, 2**30) == math.inf
    assert kv_bytes_per_token(preset("deepseek-v3")) == (512 + 64) * 2 * 61  # latent + rope key per layer
    gemma = preset("gemma-2-9b")  # 21 global layers grow, 21 local ones stop at 4096
    layer = 2 * 8 * 256 * 2
    assert kv_bytes_per_seq(gemma, 8192) == 21 * layer * 8192 + 21 * layer * 4096
    for budget in (2**30, 80 * 2**30):  # the answer inside the window, and past it
        n = spec_max_context(gemma, budget)
        assert kv_bytes_per_seq(gemma, n) <= budget < kv_bytes_per_seq(gemma, n + 1)
    # from a record past the window, the linear extrapolation is exact past the window
    assert n > 4096 and max_context(kv_bytes_per_token(gemma), kv_bytes_per_seq(gemma, 8192), 8192, budget) == n


def test_with_layers_scales_the_groups():
    g = preset("gemma-2-9b").with_layers(10)
    assert g.layers == 10 and [x.layers for x in g.attention] == [5, 5]
    with pytest.raises(UsageError, match="--layers"):
        preset("llama-3-8b").with_layers(0)


def test_unknown_model_names_the_list():
    with pytest.raises(UsageError, match="unknown model 'llama-9'.*list --models"):
        preset("llama-9")


def test_hf_config_of_a_gqa_model_gives_the_presets_shapes(tmp_path):
    cfg = load(write_config(tmp_path, LLAMA3_8B_CONFIG))
    ref = preset("llama-3-8b")
    same = ("heads", "kv_heads", "head_dim", "layers", "dtype", "causal", "max_context")
    assert {k: getattr(cfg, k) for k in same} == {k: getattr(ref, k) for k in same}
    assert cfg.attention == ref.attention
    given = {"seq": "256", "modes": "fwd,decode", "backends": "sdpa"}
    a, b = model_plan([cfg], given, CPU), model_plan([ref], given, CPU)
    assert [(c.variant, c.backend, c.problem) for c in a.cases] == [(c.variant, c.backend, c.problem) for c in b.cases]
    p = a.cases[0].problem
    assert (p.heads, p.kv_heads, p.head_dim, p.causal, p.dtype) == (32, 8, 128, True, "bfloat16")
    assert p.param("scale") is None  # 1/√128 is gqa's own scale: no parameter, the records of plain gqa


def test_fallback_reader_sliding_window_softcap_and_mla(tmp_path):
    mistral = spec_from_hf_config(write_config(tmp_path, LLAMA3_8B_CONFIG | {"sliding_window": 4096}))
    assert mistral.attention == (LayerGroup("sliding_window", 32, (("window", 4096),)),)
    assert mistral.reader == "attnbench's fallback reader"
    gemma = spec_from_hf_config(write_config(tmp_path, LLAMA3_8B_CONFIG | {
        "model_type": "gemma2", "sliding_window": 4096, "attn_logit_softcapping": 50.0, "head_dim": 256,
        "num_attention_heads": 16, "num_hidden_layers": 42, "query_pre_attn_scalar": 256}))
    assert [(g.variant, g.layers, g.param("softcap"), g.scale) for g in gemma.attention] == [
        ("sliding_window", 21, 50.0, 1 / 16), ("gqa", 21, 50.0, 1 / 16)]
    qwen = spec_from_hf_config(write_config(tmp_path, LLAMA3_8B_CONFIG | {"sliding_window": 4096,
                                                                          "use_sliding_window": False}))
    assert qwen.attention[0].variant == "gqa"
    ds = spec_from_hf_config(write_config(tmp_path, LLAMA3_8B_CONFIG | {
        "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128}))
    assert ds.attention[0].variant == "mla" and ds.head_dim == 192
    mha = spec_from_hf_config(write_config(tmp_path, LLAMA3_8B_CONFIG | {"num_key_value_heads": None}))
    assert mha.kv_heads == 32
    with pytest.raises(UsageError, match="layer_types has 3 entries but num_hidden_layers is 32"):
        spec_from_hf_config(write_config(tmp_path, LLAMA3_8B_CONFIG | {"sliding_window": 64,
                                                                       "layer_types": ["sliding_attention"] * 3}))


@pytest.mark.parametrize("drop, key", [("num_attention_heads", "num_attention_heads"),
                                       ("num_hidden_layers", "num_hidden_layers"),
                                       ("max_position_embeddings", "max_position_embeddings"),
                                       ("hidden_size", "head_dim")])
def test_fallback_reader_names_the_missing_key(tmp_path, drop, key):
    cfg = {k: v for k, v in LLAMA3_8B_CONFIG.items() if k != drop}
    with pytest.raises(UsageError, match=f"missing key '{key}'"):
        spec_from_hf_config(write_config(tmp_path, cfg))


def test_cli_bad_config_is_one_line_exit_2(tmp_path, capsys):
    path = write_config(tmp_path, LLAMA3_8B_CONFIG | {"num_attention_heads": 5})  # transformers rejects it
    out = tmp_path / "r.jsonl"
    assert main(["run", "--model-config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rejects it" in err and "attention heads (5)" in err and not out.exists()
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["run", "--model-config", str(tmp_path / "bad.json")]) == 2
    assert "not a readable JSON file" in capsys.readouterr().err
    assert main(["run", "--model", "llama-3-8b", "--variants", "mha"]) == 2
    assert "--variants does not combine with --model" in capsys.readouterr().err


def test_missing_variant_or_parameter_is_unsupported_never_replaced():
    spec = ModelSpec("toy", 8, 2, 64, 2, "float32", True, 4096,
                     (LayerGroup("no_such_variant", 1), LayerGroup("gqa", 1, (("no_such_param", 3),))), "test")
    plan = model_plan([spec], {"seq": "128,256", "modes": "decode"}, CPU)
    assert len(plan.cases) == 4 and all(c.status == "unsupported" and c.backend == "-" for c in plan.cases)
    reasons = {c.variant: c.reason for c in plan.cases}
    assert "'no_such_variant' is not in this attnbench" in reasons["no_such_variant"]
    assert "no parameter 'no_such_param'" in reasons["gqa"] and "no_such_param=3" in reasons["gqa"]


def test_flags_replace_the_models_axes_and_records_get_the_model_fields():
    [spec] = resolve_models("llama-3-8b", None, 16)
    plan = model_plan([spec], {"seq": "128", "modes": "decode", "heads": ["16"], "dtype": "float32",
                               "backends": "sdpa"}, CPU)
    [case] = plan.cases
    assert (case.problem.heads, case.problem.kv_heads, case.problem.dtype) == (16, 8, "float32")
    rec = {"variant": case.variant, "backend": case.backend, **case.problem.as_dict()}
    out = plan.annotate(rec)
    assert out["model"] == "llama-3-8b" and out["layers"] == 16
    assert out["kv_bytes_per_seq"] == 2 * 8 * 128 * 4 * 16 * 128 and out["kv_bytes_per_token"] == 2 * 8 * 128 * 4 * 16
    assert plan.annotate({**rec, "seq_k": 64}) == {**rec, "seq_k": 64}  # not one of the plan's cases


def test_list_models_shows_every_preset(capsys):
    assert main(["list", "--models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["model"] for r in rows} == set(presets())
    llama = next(r for r in rows if r["model"] == "llama-3-8b")
    assert llama["kv_bytes_per_token"] == 131072 and re.search("Llama 3", llama["source"])


def test_param_goes_to_the_groups_that_declare_it():
    plan = model_plan([preset("gemma-3-27b")], {"seq": "2k", "modes": "fwd", "backends": "eager",
                                                "params": {"window": "512"}}, CPU)
    windows = {c.variant: c.problem.param("window") for c in plan.cases}
    assert windows == {"sliding_window": 512, "gqa": None}
    with pytest.raises(UsageError, match="--param nb_features: no layer group of gemma-3-27b"):
        model_plan([preset("gemma-3-27b")], {"seq": "2k", "params": {"nb_features": "8"}}, CPU)


def test_frontier_groups_take_the_models_shape_unless_given():
    from dataclasses import replace

    from attnbench.core.problem import Problem
    from attnbench.run.models import frontier_groups, frontier_kv

    base = Problem(heads=8, kv_heads=0, head_dim=64, dtype="float32", mode="decode")
    [(v, p, why)] = frontier_groups(preset("llama-3-8b"), base, {"dtype"})
    assert (v, p.heads, p.kv_heads, p.head_dim, p.dtype, p.causal, why) == ("gqa", 32, 8, 128, "float32", True, None)
    groups = frontier_groups(preset("gemma-3-27b"), base, set())
    assert [(v, p.param("window")) for v, p, _ in groups] == [("sliding_window", 1024), ("gqa", None)]
    row = frontier_kv(preset("llama-3-8b"), {"largest_ok": 2048}, replace(p, batch=2))
    assert row["kv_bytes_per_seq"] == 2 * 2048 * 2 * 8 * 128 * 4 * 32 and row["layers"] == 32
    assert frontier_kv(preset("llama-3-8b"), {"largest_ok": None}, p)["kv_bytes_per_seq"] is None


@pytest.mark.slow
def test_run_model_end_to_end_tags_records(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    rc = main(["run", "--model", "llama-3-8b,deepseek-v3", "--seq", "64", "--mode", "decode", "--heads", "4",
               "--kv-heads", "2", "--head-dim", "16", "--dtype", "float32", "--backends", "sdpa",
               "--time-budget", "0.2", "--out", str(out), "--json"])
    assert rc == 0
    from attnbench.core.results import read

    _, recs = read(out)
    by = {r["model"]: r for r in recs}
    llama = by["llama-3-8b"]
    assert (llama["status"], llama["heads"], llama["kv_heads"], llama["head_dim"]) == ("ok", 4, 2, 16)
    assert llama["layers"] == 32 and llama["kv_bytes_per_seq"] == 2 * 2 * 16 * 4 * 64 * 32
    if "mla" not in __import__("attnbench.variants.registry", fromlist=["names"]).names():
        assert by["deepseek-v3"]["status"] == "unsupported" and "mla" in by["deepseek-v3"]["reason"]


def test_a_backend_one_groups_variant_lacks_is_unsupported_there_and_a_typo_is_refused():
    plan = model_plan([preset("gemma-2-27b"), preset("deepseek-v3")],
                      {"seq": "256", "modes": "decode", "backends": "eager,hf-eager"}, CPU)
    got = {(c.variant, c.backend): (c.status, c.reason) for c in plan.cases}
    assert got[("mla", "hf-eager")] == ("unsupported", "mla has no backend 'hf-eager'")
    assert got[("gqa", "hf-eager")][0] != "unsupported" and got[("mla", "eager")][0] != "unsupported"
    with pytest.raises(UsageError, match="unknown backend 'eagr'"):
        model_plan([preset("deepseek-v3")], {"seq": "256", "backends": "eagr"}, CPU)
