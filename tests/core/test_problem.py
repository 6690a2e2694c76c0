"""Problem: bottom-right causal pair counts against brute force, groups, dict round trip, dtypes."""

import pytest
import torch

from attnbench.core.errors import UsageError
from attnbench.core.problem import DTYPES, Problem, parse_dtype


def brute_pairs(lq: int, lk: int, causal: bool) -> int:
    """Count (i, j) with j <= i + (Lk - Lq) by enumeration (bottom-right alignment)."""
    if not causal:
        return lq * lk
    return sum(1 for i in range(lq) for j in range(lk) if j <= i + (lk - lq))


@pytest.mark.parametrize("lq,lk", [(2, 5), (3, 17), (1, 9), (7, 7), (1, 1), (64, 64),
                                   (5, 2), (9, 3), (17, 1), (4, 4)])
@pytest.mark.parametrize("causal", [False, True])
def test_attended_pairs_matches_brute_force(lq, lk, causal):
    p = Problem(seq_q=lq, seq_k=lk, causal=causal)
    assert p.attended_pairs() == brute_pairs(lq, lk, causal)


def test_attended_pairs_exhaustive_small_grid():
    for lq in range(1, 13):
        for lk in range(1, 13):
            p = Problem(seq_q=lq, seq_k=lk, causal=True)
            assert p.attended_pairs() == brute_pairs(lq, lk, True), (lq, lk)


def test_attended_pairs_known_values():
    # square causal: L(L+1)/2; Lq=2, Lk=5: rows see 4 and 5 keys; Lq=5, Lk=2: rows see 0,0,0,1,2
    assert Problem(seq_q=128, seq_k=128, causal=True).attended_pairs() == 128 * 129 // 2
    assert Problem(seq_q=2, seq_k=5, causal=True).attended_pairs() == 9
    assert Problem(seq_q=5, seq_k=2, causal=True).attended_pairs() == 3
    # decode: one query sees the whole cache
    assert Problem(seq_q=1, seq_k=4096, causal=True).attended_pairs() == 4096


@pytest.mark.parametrize("heads,kv_heads,groups", [(8, 8, 1), (8, 2, 4), (8, 1, 8), (32, 8, 4)])
def test_groups(heads, kv_heads, groups):
    assert Problem(heads=heads, kv_heads=kv_heads).groups == groups


def test_needs_grad_by_mode():
    assert [Problem(mode=m).needs_grad for m in ("fwd", "bwd", "fwd+bwd", "decode")] == [False, True, True, False]


def test_dict_round_trip_and_params():
    p = Problem(batch=2, heads=8, kv_heads=2, seq_q=3, seq_k=7, head_dim=32, dtype="bfloat16",
                causal=True, mode="fwd+bwd").with_params(window=256, alpha=0.5)
    d = p.as_dict()
    assert d["params"] == {"alpha": 0.5, "window": 256}
    assert Problem.from_dict(d) == p
    assert p.params == (("alpha", 0.5), ("window", 256))  # sorted: equal problems hash equal
    assert p.param("window") == 256 and p.param("missing", 3) == 3
    assert hash(Problem.from_dict(d)) == hash(p)
    # with_params merges and keeps the order canonical
    assert p.with_params(window=128).param("window") == 128
    assert p.with_params(window=128).param("alpha") == 0.5


def test_from_dict_without_params():
    d = Problem().as_dict()
    del d["params"]
    assert Problem.from_dict(d) == Problem()


def test_dtype_properties():
    assert Problem(dtype="float16").torch_dtype is torch.float16
    assert [Problem(dtype=d).itemsize for d in DTYPES] == [4, 2, 2]


@pytest.mark.parametrize("text,name", [("fp32", "float32"), ("FP16", "float16"), ("bf16", "bfloat16"),
                                       ("half", "float16"), (" float32 ", "float32"),
                                       ("bfloat16", "bfloat16"), ("Float16", "float16")])
def test_parse_dtype_aliases(text, name):
    assert parse_dtype(text) == name


@pytest.mark.parametrize("text", ["fp8", "float64", "", "int8", "f32"])
def test_parse_dtype_errors(text):
    with pytest.raises(UsageError, match="accepted: float32, float16, bfloat16"):
        parse_dtype(text)


def test_itemsize_and_torch_dtype_agree_with_torch():
    """core/problem.py names dtypes without importing torch; each must be torch's own."""
    import torch

    for d in DTYPES:
        p = Problem(dtype=d)
        assert p.torch_dtype == getattr(torch, d) and p.itemsize == torch.empty((), dtype=p.torch_dtype).element_size()
