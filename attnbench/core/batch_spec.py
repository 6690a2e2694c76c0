"""Mixed batches written in vLLM's batch-spec notation (its attention benchmarks' `--batch-specs`):
prefill chunks and decodes in one attention call, as a serving engine schedules them.

Grammar: segments joined by "_", each `[COUNT]q<Q>[k][s<S>[k]]`:

    COUNT  identical requests (default 1)
    Q      the request's new query tokens this step      S  its KV length, the tokens it attends
           (S defaults to Q: a whole prefill)               (context + the Q new ones), S >= Q
    k      multiplies the number before it by 1024

    q2k            one 2048-token prefill (q = s = 2048)
    8q1s1k         8 decodes: 1 query over a 1024-token KV
    q4s1k          a 4-token extend (speculative decode, a chunk of a longer prefill)
    2q2k_32q1s1k   2 prefills of 2048 + 32 decodes over 1024: one mixed batch

Each request attends causally its own KV only, aligned bottom-right: query i of a request with Q
queries over S keys sits at position S − Q + i and sees keys 0 .. S − Q + i (vLLM's and
FlashAttention's varlen convention). So one request contributes Q·(S − Q) + Q(Q + 1)/2 attended
(query, key) pairs: the real work, what FLOPs and bytes count. A padded backend computes the
B × max Q × max S rectangle; `padding_frac` is the part of it outside every request's own Q × S
block (its waste, before the causal mask's share).

Honest limits: requests appear in the order written (vLLM's FlashInfer path reorders decodes
first; that is a layout choice of a backend, not of the batch). No `spec`/`chunk` prefixes (older
forms of vLLM's grammar): `q4s1k` says the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from attnbench.core.errors import UsageError

GRAMMAR = "SEGMENT[_SEGMENT...], SEGMENT = [COUNT]q<Q>[k][s<S>[k]] (k: ×1024; S, the KV length, >= Q, default Q)"
EXAMPLE = "e.g. 2q2k_32q1s1k: 2 prefills of 2048 tokens + 32 decodes of 1 query over a 1024-token KV"
_SEGMENT = re.compile(r"^(\d*)q(\d+)(k?)(?:s(\d+)(k?))?$")


@dataclass(frozen=True)
class Group:
    """`count` identical requests of `q_len` new queries over a KV of `kv_len` tokens."""

    count: int
    q_len: int
    kv_len: int

    @property
    def pairs(self) -> int:
        """(query, key) pairs one request attends, bottom-right causal: Q·(S − Q) + Q(Q + 1)/2."""
        q, s = self.q_len, self.kv_len
        return q * (s - q) + q * (q + 1) // 2

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "q_len": self.q_len, "kv_len": self.kv_len}


@dataclass(frozen=True)
class BatchSpec:
    """A parsed spec: its text as given and its groups in order."""

    text: str
    groups: tuple[Group, ...]

    @property
    def requests(self) -> list[tuple[int, int]]:
        """(q_len, kv_len) of every request, in order."""
        return [(g.q_len, g.kv_len) for g in self.groups for _ in range(g.count)]

    @property
    def batch(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def q_lens(self) -> list[int]:
        return [q for q, _ in self.requests]

    @property
    def kv_lens(self) -> list[int]:
        return [s for _, s in self.requests]

    @property
    def decode_only(self) -> bool:
        return all(g.q_len == 1 for g in self.groups)

    def pairs(self) -> int:
        """The real attended (query, key) pairs of the whole batch, per head."""
        return sum(g.count * g.pairs for g in self.groups)

    def padded_slots(self) -> int:
        """B · max Q · max S: the score rectangle a padded backend computes, per head."""
        return self.batch * max(self.q_lens) * max(self.kv_lens)

    def padding_frac(self) -> float:
        """The part of the padded rectangle outside every request's own Q × S block."""
        real = sum(g.count * g.q_len * g.kv_len for g in self.groups)
        return 1.0 - real / self.padded_slots()

    def composition(self) -> list[dict[str, int]]:
        return [g.as_dict() for g in self.groups]


def _number(digits: str, k: str) -> int:
    return int(digits) * (1024 if k else 1)


def _bad(text: str, why: str) -> UsageError:
    return UsageError(f"bad batch spec '{text}': {why}; accepted: {GRAMMAR}, {EXAMPLE}")


def parse(text: str) -> BatchSpec:
    """One spec (UsageError naming what was wrong, the grammar and an example)."""
    t = str(text).strip()
    if not t:
        raise _bad(t, "empty")
    groups = []
    for seg in t.split("_"):
        m = _SEGMENT.match(seg)
        if not m:
            raise _bad(t, f"segment '{seg}' is not [COUNT]q<Q>[k][s<S>[k]]")
        count = int(m.group(1)) if m.group(1) else 1
        q = _number(m.group(2), m.group(3))
        s = _number(m.group(4), m.group(5)) if m.group(4) else q
        if count < 1 or q < 1:
            raise _bad(t, f"segment '{seg}': counts and query lengths are at least 1")
        if s < q:
            raise _bad(t, f"segment '{seg}': the KV length {s} is below the query length {q} (S counts the new "
                          "tokens too)")
        groups.append(Group(count, q, s))
    return BatchSpec(t, tuple(groups))


def parse_list(text: str) -> tuple[str, ...]:
    """`--batch-spec A,B`: the specs, each checked; one case each."""
    items = [s.strip() for s in str(text).split(",")]
    if not any(items):
        raise _bad(str(text), "empty")
    return tuple(dict.fromkeys(parse(s).text for s in items))


def of_problem(p) -> BatchSpec | None:
    """The spec of a problem (its `batch_spec` parameter), None for any other problem."""
    text = p.param("batch_spec")
    return None if text is None else parse(text)


def reference_scores(p) -> int:
    """The scores an fp64 reference materialises: B·Hq·Lq·Lk, or for a mixed batch
    Hq·Σ Q·S (one request at a time, never the padded rectangle)."""
    spec = of_problem(p)
    if spec is None:
        return p.batch * p.heads * p.seq_q * p.seq_k
    return p.heads * sum(g.count * g.q_len * g.kv_len for g in spec.groups)


def peak_scores(p) -> int:
    """The scores a materialising call holds at once: B·Hq·Lq·Lk, or for a mixed batch (eager and the
    reference attend one request at a time) Hq·max Q·S."""
    spec = of_problem(p)
    if spec is None:
        return p.batch * p.heads * p.seq_q * p.seq_k
    return p.heads * max(g.q_len * g.kv_len for g in spec.groups)


def query_rows(p) -> int:
    """The query rows of the call: B·Lq, or a mixed batch's packed ΣQ."""
    spec = of_problem(p)
    return p.batch * p.seq_q if spec is None else sum(spec.q_lens)


def composition_fields(p) -> dict:
    """The record's fields of a mixed batch, {} for any other problem: batch_spec (the text),
    composition [{count, q_len, kv_len}], seq_lengths of the KV {min, mean, max, total}, q_tokens
    (Σ Q, the packed query rows) and padding_frac (the padded backends' waste)."""
    spec = of_problem(p)
    if spec is None:
        return {}
    kv = spec.kv_lens
    return {"batch_spec": spec.text, "composition": spec.composition(), "q_tokens": sum(spec.q_lens),
            "seq_lengths": {"min": min(kv), "mean": sum(kv) / len(kv), "max": max(kv), "total": sum(kv)},
            "padding_frac": spec.padding_frac()}
