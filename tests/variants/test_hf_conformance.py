"""Conformance with the models' own code: for every preset and each of its layer groups, transformers'
attention (the `eager_attention_forward` of the model's modeling file, called as the model's attention
module calls it: its `scaling`, sliding window, soft-cap and sinks, with the mask from transformers'
own mask functions) and attnbench's variant, run on the same inputs with the model's real head
geometry, agree to float32 tolerance.

Scaled down only in length (L = 40) and, where a window is shorter than the model's context, in the
window (WINDOW, so that it bites at this L; the window semantics are what is checked: transformers'
sliding_window w and attnbench's window w both let a query see itself and the w - 1 keys before it).
MLA: attnbench's latent cache is decompressed with the variant's own up-projections, then DeepSeek-V3's
eager function attends over the per-head keys and values with DeepSeekV3Attention.scaling (YaRN mscale²).
"""

from __future__ import annotations

import importlib
import json
from types import SimpleNamespace

import pytest
import torch

from attnbench.core.models import preset_config, presets
from attnbench.core.problem import Problem
from attnbench.run.models import group_params
from attnbench.variants import mla as mla_mod
from attnbench.variants import registry
from attnbench.variants.backends.hf import transformers_missing
from attnbench.variants.modifiers import sink_logits

if transformers_missing():
    pytest.skip(transformers_missing(), allow_module_level=True)

from transformers import masking_utils  # noqa: E402

from attnbench.run.hfconfig import ALIASES, attention_class, build_module, text_config  # noqa: E402

L, WINDOW = 40, 12
# Layer kinds that transformers does not compute with the modeling file's eager_attention_forward:
# their conformance is checked against the model's own functions elsewhere.
NOT_EAGER_ATTENTION = {
    "gdn": "a Gated DeltaNet layer is a recurrence, not eager_attention_forward "
           "(test_gdn_reproduces_transformers_recurrence checks it against Qwen3-Next's own function)",
    "dsa": "DeepSeek-V3.2's sparse layer selects keys with its indexer before attention; its selection and "
           "attention are checked against the FlashInfer Trace dsa reference semantics (tests/variants/test_dsa.py)",
}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models():
    """Per preset: (spec, its text config as transformers builds it, the modeling module)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    out = {}
    for name, spec in presets().items():
        path = preset_config(name)
        raw = json.loads(path.read_text())
        cls = CONFIG_MAPPING[ALIASES.get(raw["model_type"], raw["model_type"])]
        cfg = text_config(cls.from_dict(raw))
        out[name] = (spec, cfg, importlib.import_module(attention_class(cfg).__module__))
    return out


def cases():
    return [(name, i) for name, spec in presets().items() for i in range(len(spec.attention))]


def _mask(p: Problem, window: int | None) -> torch.Tensor | None:
    """transformers' own mask functions, evaluated densely: additive (1, 1, Lq, Lk)."""
    if not p.causal:
        return None
    fn = masking_utils.sliding_window_causal_mask_function(window) if window else masking_utils.causal_mask_function
    q = torch.arange(p.seq_q)[:, None] + (p.seq_k - p.seq_q)
    k = torch.arange(p.seq_k)[None, :]
    ok = fn(0, 0, q, k)
    return torch.zeros(ok.shape).masked_fill(~ok, torch.finfo(torch.float32).min)[None, None]


@pytest.mark.parametrize("name, index", cases())
def test_group_reproduces_transformers_attention(models, name, index):
    spec, cfg, modeling = models[name]
    g = spec.attention[index]
    params = group_params(g, spec.head_dim)
    window = params.get("window")
    if window is not None and window < spec.max_context:
        params["window"] = window = WINDOW
    elif window is not None:
        params["window"], window = L, None  # a window over the whole context (gpt-oss's full layers)
    if g.variant not in registry.names():
        pytest.skip(f"{name}: variant '{g.variant}' is not in this attnbench (its runs record it unsupported)")
    if g.variant in NOT_EAGER_ATTENTION:
        pytest.skip(f"{name} group {index}: {NOT_EAGER_ATTENTION[g.variant]}")
    v = registry.get(g.variant)
    p = v.resolve(Problem(batch=1, heads=spec.heads, kv_heads=spec.kv_heads, seq_q=L, seq_k=L, head_dim=spec.head_dim,
                          dtype="float32", causal=spec.causal, mode="fwd").with_params(**params))
    assert registry.decide(v, "eager", p, CPU).runnable
    gen = torch.Generator().manual_seed(index)
    q, k, val = (v.make_inputs(p, CPU, 0) if v.make_inputs else
                 (torch.randn(1, spec.heads, L, spec.head_dim, generator=gen),
                  *(torch.randn(1, spec.kv_heads, L, spec.head_dim, generator=gen) for _ in range(2))))
    ours = v.backend("eager").build(p, CPU)(q, k, val)

    real = build_module(attention_class(cfg), cfg, _layer_of(cfg, g, window))
    module = SimpleNamespace(num_key_value_groups=spec.heads // spec.kv_heads, training=False,
                             is_causal=spec.causal, scaling=float(real.scaling))
    kw = {"scaling": float(real.scaling), "dropout": 0.0}
    if getattr(real, "attn_logit_softcapping", None):
        kw["softcap"] = float(real.attn_logit_softcapping)
    if window:
        kw["sliding_window"] = window
    if hasattr(real, "sinks"):
        module.sinks = sink_logits(spec.heads)  # the logits attnbench's sink_logit=learned uses
        module.num_key_value_groups = spec.heads // spec.kv_heads
    if g.variant == "mla":
        w_uk, w_uv = mla_mod.up_weights(p, CPU, torch.float32)
        keys, vals = mla_mod.decompress(k, w_uk, w_uv, p)
        module.num_key_value_groups = 1
        theirs = modeling.eager_attention_forward(module, q, keys, vals, _mask(p, None), **kw)[0]
    else:
        theirs = modeling.eager_attention_forward(module, q, k, val, _mask(p, window), **kw)[0]
    theirs = theirs.transpose(1, 2)
    assert theirs.shape == ours.shape
    err = (ours - theirs).norm() / theirs.norm()
    assert err < 1e-5, f"{name} group {index} ({g.variant}): relative L2 {err:.2e}"
    ref = v.reference(q, k, val, p)  # the variant's own oracle agrees too
    assert ((ref - theirs).norm() / theirs.norm()) < 1e-5


def _layer_of(cfg, g, window) -> int:
    """A layer index of the group's kind (the module's scaling and sinks are per layer type)."""
    types = getattr(cfg, "layer_types", None) or []
    want = "sliding_attention" if window else "full_attention"
    return types.index(want) if want in types else 0


def test_the_scales_are_the_models_own(models):
    ds = presets()["deepseek-v3"].attention[0]
    assert ds.scale / 192 ** -0.5 == pytest.approx(1.874, abs=1e-3)  # YaRN mscale² at factor 40
    assert presets()["gemma-2-27b"].attention[0].scale == pytest.approx(144 ** -0.5)
    assert group_params(presets()["llama-3-8b"].attention[0], 128) == {}  # 1/√D: no parameter


@pytest.mark.parametrize("mode", ["fwd", "decode"])
def test_gdn_reproduces_transformers_recurrence(mode):
    """attnbench's gdn (recurrent and chunked backends) against Qwen3-Next's own
    torch_recurrent_gated_delta_rule on the same q, k, v, gates and initial state (GVA: 8 value
    heads over 4 q/k heads; transformers' state is k-first (B, H, K, V), ours k-last)."""
    qwen3_next = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    from attnbench.variants import gdn

    v = registry.get("gdn")
    p = v.resolve(Problem(batch=2, heads=8, kv_heads=4, seq_q=L, seq_k=L, head_dim=32, dtype="float32",
                          causal=True, mode=mode).with_params(chunk=16))
    q, k, val = v.make_inputs(p, CPU, 0)
    g, beta = gdn.gates(*gdn.gate_params(p, CPU))
    s0 = gdn.initial_state(p, CPU)
    theirs, _ = qwen3_next.torch_recurrent_gated_delta_rule(
        q.transpose(1, 2), k.transpose(1, 2), val.transpose(1, 2), g.transpose(1, 2), beta.transpose(1, 2),
        initial_state=None if s0 is None else s0.transpose(-1, -2), use_qk_l2norm_in_kernel=True)
    theirs = theirs.transpose(1, 2)
    for backend in ("recurrent", "chunked"):
        ours = v.backend(backend).build(p, CPU)(q, k, val)
        assert ours.shape == theirs.shape
        err = (ours - theirs).norm() / theirs.norm()
        assert err < 1e-5, f"gdn {mode} {backend}: relative L2 {err:.2e} against transformers' recurrence"
