"""Sweeps: the --seq grammar, make_sweep validation, expansion into cases (unsupported and
unavailable combinations become records with reasons), suite files."""

from dataclasses import replace

import pytest
import torch

from attnbench.core.errors import UsageError
from attnbench.run.plan import expand, load_suite, make_sweep, parse_length, parse_seq, suite_names

CPU = torch.device("cpu")


# ---------------------------------------------------------------- --seq grammar
@pytest.mark.parametrize("text,want", [
    ("1k..64k", [1024 * 2**i for i in range(7)]),
    ("1k,3k,8k", [1024, 3072, 8192]),
    ("2048", [2048]),
    ("512,1k..4k", [512, 1024, 2048, 4096]),
    ("256..1k", [256, 512, 1024]),
    ("100..500", [100, 200, 400]),  # doubling stops at the last value <= the end
    ("4k,1k,4k", [1024, 4096]),  # sorted, duplicates dropped
    (" 1K , 2k ", [1024, 2048]),
    ("1m", [1024**2]),
    ("8k..8k", [8192]),
])
def test_parse_seq(text, want):
    assert parse_seq(text) == want


def test_parse_seq_1k_to_64k_has_seven_values():
    assert len(parse_seq("1k..64k")) == 7


@pytest.mark.parametrize("text,match", [
    ("1k..", "needs both ends"), ("..4k", "needs both ends"), ("0", "at least 1"), ("64q", "accepted"),
    ("8k..1k", "must not be below"), ("", "empty"), ("   ", "empty"), ("k", "accepted"), ("-5", "accepted"),
    ("1.5k", "accepted"), ("1k,,2k", "accepted"),
])
def test_parse_seq_errors(text, match):
    with pytest.raises(UsageError, match=match):
        parse_seq(text)


def test_parse_length_names_the_option():
    with pytest.raises(UsageError, match="--kv-seq"):
        parse_length("x", "--kv-seq")


# ---------------------------------------------------------------- make_sweep
def test_make_sweep_normalises():
    sw = make_sweep(variants="mha, sliding_window,mha", backends=["sdpa,eager"], seq="1k,2k", heads=8,
                    dtype="fp16,bf16", mode="fwd,decode", causal=[True, False], params={"window": 4})
    assert sw.variants == ("mha", "sliding_window") and sw.backends == ("sdpa", "eager")
    assert sw.seq == (1024, 2048) and sw.heads == (8,)
    assert sw.dtype == ("float16", "bfloat16") and sw.modes == ("fwd", "decode")
    assert sw.causal == (True, False) and sw.params == {"window": 4}
    assert make_sweep(seq=[128, "1k"]).seq == (128, 1024)
    assert make_sweep(variants=None, seq=None) == make_sweep()


@pytest.mark.parametrize("axes,match", [
    (dict(heads=0), "--heads"),
    (dict(heads=[8, -1]), "--heads"),
    (dict(batch=True), "--batch"),
    (dict(seq=0), "--seq"),
    (dict(head_dim=2.5), "--head-dim"),
    (dict(kv_heads=2, kv_groups=4), "mutually exclusive"),
    (dict(variants="flsh"), "did you mean \"flash\""),
    (dict(variants="nosuchthing"), "unknown variant"),
    (dict(variants=" , "), "no variants"),
    (dict(mode="fwdd"), "unknown mode 'fwdd'"),
    (dict(modes=["fwd", "backward"]), "unknown mode"),
    (dict(dtype="fp8"), "unknown dtype"),
    (dict(causal="yes"), "causal"),
    (dict(params=[1, 2]), "params"),
    (dict(variants="mha,gqa", params={"window": 4}), "none of the variants mha, gqa has a parameter 'window'"),
    (dict(variants="sliding_window", params={"windw": 4}), "did you mean \"window\""),
    (dict(variants="sliding_window", params={"window": "wide"}), "window=wide; accepted: a int"),
    (dict(variants="sliding_window", params={"window": 2.5}), "accepted: a int"),
    (dict(variants="performer", params={"orthogonal": "maybe"}), "accepted: a bool"),
    (dict(seqq="1k"), "unknown sweep key 'seqq'"),
])
def test_make_sweep_errors(axes, match):
    with pytest.raises(UsageError, match=match):
        make_sweep(**axes)


def test_params_cast_to_the_declared_type_and_apply_only_where_declared():
    sw = make_sweep(variants="mha,sliding_window,performer", backends="eager", seq="128",
                    params={"window": "32", "eps": "1e-4", "orthogonal": "false"})
    assert sw.params == {"window": 32, "eps": 1e-4, "orthogonal": False}
    by = {c.variant: dict(c.problem.params) for c in expand([sw], CPU)}
    assert by["mha"] == {}  # declares none of them, and its options (softcap) stay off and unrecorded
    assert by["sliding_window"] == {"window": 32}  # options (sinks, softcap) unset: not in the case
    assert by["performer"]["eps"] == 1e-4 and by["performer"]["orthogonal"] is False
    assert "window" not in by["performer"]


def test_param_override_merges_with_the_suite_params(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text('[[sweep]]\nvariants = ["performer"]\nbackends = ["eager"]\nseq = "128"\n'
                     'params = { nb_features = 64 }\n')
    (sw,), _ = load_suite(str(suite), params={"eps": "1e-4"})
    assert sw.params == {"nb_features": 64, "eps": 1e-4}


# ---------------------------------------------------------------- expansion
def _by(cases, **want):
    return [c for c in cases if all(getattr(c, k) == v for k, v in want.items())]


def test_kv_heads_not_dividing_heads_is_unsupported_not_an_error():
    cases = expand([make_sweep(variants="gqa", backends="sdpa", heads=8, kv_heads=3, seq="128")], CPU)
    assert len(cases) == 1
    c = cases[0]
    assert c.status == "unsupported" and "kv_heads=3 must divide heads=8" in c.reason


def test_mha_with_fewer_kv_heads_is_unsupported():
    (c,) = expand([make_sweep(variants="mha", backends="sdpa", heads=8, kv_heads=2, seq="128")], CPU)
    assert c.status == "unsupported" and "kv_heads == heads" in c.reason


def test_kv_groups_not_dividing_heads_is_unsupported():
    (c,) = expand([make_sweep(variants="gqa", backends="sdpa", heads=8, kv_groups=3, seq="128")], CPU)
    assert c.status == "unsupported" and "kv_groups=3 does not divide heads=8" in c.reason
    cases = expand([make_sweep(variants="gqa", backends="sdpa", heads=8, kv_groups=[2, 4], seq="128")], CPU)
    assert [c.problem.kv_heads for c in cases] == [4, 2] and all(c.status is None for c in cases)


def test_each_non_dividing_kv_groups_value_gets_its_record():
    cases = expand([make_sweep(variants="gqa", backends="sdpa", heads=8, kv_groups=[3, 5], seq="128")], CPU)
    assert len(cases) == 2


def test_decode_sets_one_query_and_the_cache_length():
    cases = expand([make_sweep(variants="gqa,mqa", backends="sdpa", heads=8, seq="4k,8k", mode="decode")], CPU)
    assert len(cases) == 4
    for c in cases:
        assert c.status is None and c.problem.mode == "decode"
        assert c.problem.seq_q == 1 and c.problem.seq_k in (4096, 8192)
    assert {c.problem.kv_heads for c in _by(cases, variant="mqa")} == {1}
    (c,) = expand([make_sweep(variants="mha", backends="sdpa", seq="1k", kv_seq="2k", mode="decode")], CPU)
    assert (c.problem.seq_q, c.problem.seq_k) == (1, 2048)


def test_default_backends_exclude_test_only_ones():
    cases = expand([make_sweep(variants="mha", seq="64")], CPU)
    names = {c.backend for c in cases}
    assert {"eager", "sdpa", "sdpa-math", "sdpa-flash", "flex"} <= names and "fault" not in names
    assert _by(cases, backend="sdpa-cudnn")[0].status == "unavailable"
    assert _by(cases, backend="eager")[0].status is None


def test_unknown_backend_for_the_chosen_variants_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown backend 'sdpaa'.*did you mean"):
        expand([make_sweep(variants="mha,gqa", backends="sdpaa", seq="64")], CPU)


def test_backend_one_variant_lacks_gives_an_unsupported_record():
    cases = expand([make_sweep(variants="mha,flash", backends="sdpa,eager", seq="64")], CPU)
    assert len(cases) == 4
    (c,) = _by(cases, variant="flash", backend="sdpa")
    assert c.status == "unsupported" and "no backend 'sdpa'" in c.reason
    assert all(c.status is None for c in cases if (c.variant, c.backend) != ("flash", "sdpa"))


def test_backend_without_backward_on_cpu_is_unsupported():
    (c,) = expand([make_sweep(variants="mha", backends="flex", seq="64", mode="bwd")], CPU)
    assert c.status == "unsupported" and "backward" in c.reason


def test_cartesian_product_and_dedup():
    sw = make_sweep(variants="mha", backends="sdpa", seq="64,128", batch=[1, 2], dtype="fp32,bf16",
                    causal=[False, True], mode="fwd,bwd")
    cases = expand([sw, sw], CPU)  # the same sweep twice: no duplicate cases
    assert len(cases) == 2 * 2 * 2 * 2 * 2
    assert len({(c.variant, c.backend, c.problem) for c in cases}) == len(cases)


def test_expanded_problems_are_resolved():
    cases = expand([make_sweep(variants="cross,gqa,causal", backends="sdpa", heads=8, seq="256")], CPU)
    (cross,) = _by(cases, variant="cross")
    (gqa,) = _by(cases, variant="gqa")
    (causal,) = _by(cases, variant="causal")
    assert (cross.problem.seq_q, cross.problem.seq_k, cross.problem.kv_heads) == (256, 128, 8)
    assert gqa.problem.kv_heads == 2 and causal.problem.causal


# ---------------------------------------------------------------- suites
def test_shipped_quick_suite_loads_and_expands():
    assert "quick" in suite_names()
    sweeps, meta = load_suite("quick")
    assert sweeps and "description" in meta
    cases = expand(sweeps, CPU)
    assert cases and any(c.status is None for c in cases)


@pytest.mark.parametrize("name", suite_names())
def test_every_shipped_suite_loads_and_expands(name):
    sweeps, _ = load_suite(name)
    assert expand(sweeps, CPU)


def test_suite_overrides_replace_axes():
    sweeps, _ = load_suite("quick", seq="128", kv_groups=[2])
    assert all(sw.seq == (128,) and sw.kv_groups == (2,) and sw.kv_heads == (0,) for sw in sweeps)


def _write(tmp_path, text: str):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return str(path)


def test_suite_file_by_path(tmp_path):
    sweeps, meta = load_suite(_write(tmp_path, 'time_budget = 5\n[[sweep]]\nvariants = ["mha"]\nseq = "128"\n'))
    assert meta == {"time_budget": 5} and sweeps[0].seq == (128,)


@pytest.mark.parametrize("text,match", [
    ('[[sweep]]\nvariants = ["mha"\n', "not valid TOML"),
    ('colour = 1\n[[sweep]]\nvariants = ["mha"]\n', "unknown key 'colour'"),
    ('description = "x"\n', "no \\[\\[sweep\\]\\] tables"),
    ('[[sweep]]\nvariants = ["mha"]\nseqs = "1k"\n', "unknown sweep key 'seqs'.*did you mean"),
    ('[[sweep]]\nvariants = ["mha"]\nheads = 0\n', "--heads"),
])
def test_bad_suite_files(tmp_path, text, match):
    with pytest.raises(UsageError, match=match):
        load_suite(_write(tmp_path, text))


def test_missing_suite_file_and_unknown_name(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_suite(str(tmp_path / "missing.toml"))
    with pytest.raises(UsageError, match="unknown suite 'quik'.*did you mean \"quick\""):
        load_suite("quik")


def test_case_is_hashable_and_frozen():
    (c,) = expand([make_sweep(variants="mha", backends="sdpa", seq="64")], CPU)
    assert hash(c) == hash(replace(c))
    with pytest.raises(AttributeError):
        c.backend = "eager"
