"""vLLM's batch-spec notation (core/batch_spec.py): the grammar, its one-line errors, and the
counts a record is built from, each checked against a count written here by brute force."""

from __future__ import annotations

import pytest

from attnbench.core import batch_spec as bs
from attnbench.core.errors import UsageError
from attnbench.core.problem import Problem


@pytest.mark.parametrize("text,requests", [
    ("q2k", [(2048, 2048)]),
    ("q1s1k", [(1, 1024)]),
    ("8q1s1k", [(1, 1024)] * 8),
    ("q4s1k", [(4, 1024)]),
    ("2q2k_32q1s1k", [(2048, 2048)] * 2 + [(1, 1024)] * 32),
    ("2q64s96_3q1s80", [(64, 96)] * 2 + [(1, 80)] * 3),
    ("q1ks2k_1q7", [(1024, 2048), (7, 7)]),
])
def test_the_grammar_gives_each_request_in_order(text, requests):
    spec = bs.parse(text)
    assert spec.requests == requests and spec.batch == len(requests) and spec.text == text
    assert spec.decode_only == all(q == 1 for q, _ in requests)


def test_the_composition_keeps_the_groups_as_written():
    assert bs.parse("2q2k_32q1s1k").composition() == [{"count": 2, "q_len": 2048, "kv_len": 2048},
                                                      {"count": 32, "q_len": 1, "kv_len": 1024}]


@pytest.mark.parametrize("text,why", [
    ("", "empty"), ("2q", "segment '2q'"), ("q0", "at least 1"), ("0q4", "at least 1"),
    ("q8s4", "KV length 4 is below the query length 8"), ("2q2K", "segment '2q2K'"), ("q2k__q1", "segment ''"),
    ("q1s1k_x", "segment 'x'"), ("s1k", "segment 's1k'"), ("q1 s1k", "segment 'q1 s1k'"), ("q-1", "segment"),
])
def test_a_bad_spec_is_one_line_with_the_grammar_and_an_example(text, why):
    with pytest.raises(UsageError) as e:
        bs.parse(text)
    msg = str(e.value)
    assert why in msg and "[COUNT]q<Q>[k][s<S>[k]]" in msg and "e.g. 2q2k_32q1s1k" in msg and "\n" not in msg


def test_a_list_of_specs_is_one_case_each_duplicates_merged():
    assert bs.parse_list("q2k, 8q1s1k,q2k") == ("q2k", "8q1s1k")
    with pytest.raises(UsageError, match="segment 'x'"):
        bs.parse_list("q2k,x")


def _brute_pairs(q: int, s: int) -> int:
    """Query i of q (position s - q + i) sees key j iff j <= s - q + i: counted one pair at a time."""
    return sum(1 for i in range(q) for j in range(s) if j <= s - q + i)


@pytest.mark.parametrize("text", ["q7", "q1s13", "q5s9_3q1s4", "2q64s96_3q1s80", "q33s100_q100"])
def test_pairs_count_the_real_causal_pairs(text):
    spec = bs.parse(text)
    assert spec.pairs() == sum(_brute_pairs(q, s) for q, s in spec.requests)


def test_padding_fraction_by_hand():
    spec = bs.parse("2q64s96_3q1s80")  # B=5, max Q 64, max S 96
    assert spec.padded_slots() == 5 * 64 * 96 == 30720
    assert spec.padding_frac() == pytest.approx(1 - (2 * 64 * 96 + 3 * 80) / 30720)  # 0.592
    assert bs.parse("q2k").padding_frac() == 0.0
    # one query per request: the ragged batch's 1 − total/(B·max)
    assert bs.parse("q1s10_q1s30").padding_frac() == pytest.approx(1 - 40 / 60)


def test_record_fields_and_scores_of_a_problem():
    p = Problem(batch=5, heads=4, seq_q=64, seq_k=96, params=(("batch_spec", "2q64s96_3q1s80"),))
    f = bs.composition_fields(p)
    assert f["batch_spec"] == "2q64s96_3q1s80" and f["q_tokens"] == 131
    assert f["seq_lengths"] == {"min": 80, "mean": 86.4, "max": 96, "total": 432}
    assert f["composition"][1] == {"count": 3, "q_len": 1, "kv_len": 80}
    assert bs.reference_scores(p) == 4 * (2 * 64 * 96 + 3 * 80)  # one request at a time, never padded
    assert bs.peak_scores(p) == 4 * 64 * 96 and bs.query_rows(p) == 131
    plain = Problem(batch=2, heads=4, seq_q=8, seq_k=16)
    assert bs.composition_fields(plain) == {} and bs.reference_scores(plain) == bs.peak_scores(plain) == 2 * 4 * 8 * 16
