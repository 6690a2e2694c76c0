"""The problem: one attention call's shape, dtype and mode.

Shape legend, used everywhere in attnbench (the layout of ``F.scaled_dot_product_attention``):

    B  - batch            Hq  - query heads      Hkv - key/value heads (Hq % Hkv == 0)
    Lq - query positions  Lk  - key positions    D   - head dimension

    q: (B, Hq, Lq, D)   k, v: (B, Hkv, Lk, D)   out: (B, Hq, Lq, D)

Causal masking with Lq != Lk is aligned bottom-right: query i sees key j iff
j <= i + (Lk - Lq), so the last query sees every key (FlashAttention 2.1+, decoding).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}  # bytes per element of each accepted dtype
DTYPES = tuple(ITEMSIZE)  # accepted dtype names (torch's dtypes: Problem.torch_dtype, imported lazily)
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}
MODES = ("fwd", "bwd", "fwd+bwd", "decode")


@dataclass(frozen=True)
class Problem:
    """One attention call. ``params`` holds variant parameters as sorted (name, value) pairs."""

    batch: int = 1
    heads: int = 8
    kv_heads: int = 8
    seq_q: int = 1024
    seq_k: int = 1024
    head_dim: int = 64
    dtype: str = "float32"
    causal: bool = False
    mode: str = "fwd"
    params: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def groups(self) -> int:
        """Query heads per KV head (1 = MHA, Hq = MQA)."""
        return self.heads // self.kv_heads

    @property
    def torch_dtype(self) -> "torch.dtype":  # noqa: F821  (core imports no torch at module level)
        import torch

        return getattr(torch, self.dtype)

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[self.dtype]

    @property
    def needs_grad(self) -> bool:
        return self.mode in ("bwd", "fwd+bwd")

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def with_params(self, **updates: Any) -> "Problem":
        merged = dict(self.params) | updates
        return replace(self, params=tuple(sorted(merged.items())))

    def attended_pairs(self) -> int:
        """(query, key) pairs one head attends: Lq*Lk, or the bottom-right causal triangle."""
        if not self.causal:
            return self.seq_q * self.seq_k
        return _causal_pairs_closed_form(self.seq_q, self.seq_k)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch, "heads": self.heads, "kv_heads": self.kv_heads,
            "seq_q": self.seq_q, "seq_k": self.seq_k, "head_dim": self.head_dim,
            "dtype": self.dtype, "causal": self.causal, "mode": self.mode,
            "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Problem":
        fields = {k: d[k] for k in ("batch", "heads", "kv_heads", "seq_q", "seq_k", "head_dim",
                                    "dtype", "causal", "mode")}
        return cls(**fields, params=tuple(sorted((d.get("params") or {}).items())))

    def short(self) -> str:
        s = f"B{self.batch} H{self.heads}/{self.kv_heads} L{self.seq_q}x{self.seq_k} D{self.head_dim}"
        return s + (" causal" if self.causal else "")


def _causal_pairs_closed_form(lq: int, lk: int) -> int:
    """Sum over i in [0, Lq) of clamp(i + Lk - Lq + 1, 0, Lk)."""
    offset = lk - lq
    total = 0
    # queries with i + offset + 1 <= 0 see nothing; those with i + offset + 1 >= Lk see all.
    first = max(0, -offset)  # first query that sees at least one key
    for_full = max(first, lk - offset - 1)  # first query that sees all keys
    last = lq  # exclusive
    upto = min(for_full, last)
    if upto > first:  # arithmetic series of (i + offset + 1) for i in [first, upto)
        a, b = first + offset + 1, upto - 1 + offset + 1
        total += (a + b) * (upto - first) // 2
    if last > for_full:
        total += (last - for_full) * lk
    return total


def parse_dtype(text: str) -> str:
    from attnbench.core.errors import UsageError

    name = DTYPE_ALIASES.get(text.strip().lower(), text.strip().lower())
    if name not in DTYPES:
        raise UsageError(f"unknown dtype '{text}'; accepted: {', '.join(DTYPES)} (or fp32, fp16, bf16)")
    return name
