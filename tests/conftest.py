"""Test configuration.

TRITON_INTERPRET must be set before triton is first imported (torch.compile imports it too),
so the Triton kernels run on CPU tensors under the interpreter in every test. Compile checks
that need a real (non-interpreted) triton run in a subprocess with it removed.
"""

import json
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault(
    "ATTNBENCH_TEST_BACKENDS", "1"
)  # mha lists the fault-injection backend (variants/backends/fault.py)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from attnbench.core.results import RECORD_FIELDS, make_header  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def refs_cache_dir(tmp_path_factory, monkeypatch):
    """Each test its own in-run references cache (measure/refs_cache.py): none reads references
    another test left (fake ones included), and none writes to the user's ~/.cache."""
    path = tmp_path_factory.mktemp("refs-cache")
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(path))
    return path


@pytest.fixture
def cpu():
    return torch.device("cpu")


# ---------------------------------------------------------------- shared fixtures
# Inputs and an fp64 oracle, written here from scratch so tests do not copy them and do not check
# the project's attention against the project's own reference functions.


def seeded_qkv(problem, seed: int = 0, dtype: torch.dtype | None = None, device: str = "cpu"):
    """Standard-normal q (B, Hq, Lq, D) and k, v (B, Hkv, Lk, D) from a CPU generator seeded with
    `seed`, in `dtype` (default: the problem's). Same seed, same numbers on every run."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    b, d = problem.batch, problem.head_dim
    shapes = (
        (b, problem.heads, problem.seq_q, d),
        (b, problem.kv_heads, problem.seq_k, d),
        (b, problem.kv_heads, problem.seq_k, d),
    )
    dt = dtype or problem.torch_dtype
    return tuple(torch.randn(s, generator=g, dtype=torch.float64).to(device=device, dtype=dt) for s in shapes)


def fp64_oracle(
    q,
    k,
    v,
    *,
    causal: bool = False,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(Q Kᵀ · scale + bias + mask) V materialised in float64, returned in float64.

    q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D) with Hkv dividing Hq (query head h reads KV head
    h // (Hq/Hkv)). causal: bottom-right aligned, query i sees key j iff j <= i + Lk - Lq.
    mask: boolean, True = attend, broadcastable to (B, Hq, Lq, Lk). bias: added to the scores.
    A query row that attends no key returns zeros (what SDPA's flash path and flex return).
    scale defaults to 1/sqrt(D). Honest limit: materialises B·Hq·Lq·Lk float64 scores, so keep
    test shapes small.
    """
    q, k, v = (t.detach().to(torch.float64) for t in (q, k, v))
    hq, hkv = q.shape[1], k.shape[1]
    if hq % hkv:
        raise ValueError(f"kv heads {hkv} do not divide query heads {hq}")
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    lq, lk = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if bias is not None:
        scores = scores + bias.to(torch.float64)
    allowed = torch.ones(lq, lk, dtype=torch.bool)
    if causal:
        i = torch.arange(lq).unsqueeze(1)
        j = torch.arange(lk).unsqueeze(0)
        allowed = j <= i + (lk - lq)
    if mask is not None:
        allowed = allowed & mask.to(torch.bool).cpu()
    allowed = allowed.expand_as(scores).to(scores.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True).nan_to_num(0.0, neginf=0.0)
    weights = torch.exp(scores - row_max)  # exp(-inf) = 0 for masked pairs
    denom = weights.sum(dim=-1, keepdim=True)
    probs = torch.where(denom > 0, weights / denom.clamp_min(1e-300), torch.zeros_like(weights))
    return probs @ v


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖₂ / ‖ref‖₂ in float64 (0 when both are zero)."""
    out, ref = out.detach().to(torch.float64).cpu(), ref.detach().to(torch.float64).cpu()
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


@pytest.fixture
def make_qkv():
    """Factory: make_qkv(problem, seed=0, dtype=None) -> (q, k, v), seeded standard normal."""
    return seeded_qkv


@pytest.fixture
def oracle():
    """The fp64 oracle: oracle(q, k, v, causal=..., mask=..., bias=...) -> float64 output."""
    return fp64_oracle


def with_catalogue(records: list[dict]) -> list[dict]:
    """Records as the report reads them from a file: annotated from a header catalogue of the
    installed variants (report/catalogue.py), for tests that build records by hand."""
    from attnbench.report.catalogue import annotate
    from attnbench.variants.registry import describe

    return annotate({"catalogue": describe(r["variant"] for r in records)}, records)


# ---------------------------------------------------------------- a valid results file, for bad-input tests
ENV = {  # a header's environment: enough for the reader, not a measurement
    "attnbench": "0.1.0",
    "device": "cpu",
    "device_name": "x",
    "torch": "2",
    "triton": None,
    "cuda": None,
    "threads": 2,
}


def valid_record(**changes) -> dict:
    """A complete, valid `unsupported` record (no measurement needed), with `changes` applied."""
    rec = {f: None for f in RECORD_FIELDS} | {
        "case_id": "0123456789abcdef",
        "variant": "mha",
        "backend": "sdpa",
        "device": "cpu",
        "dtype": "float32",
        "mode": "fwd",
        "batch": 1,
        "heads": 2,
        "kv_heads": 2,
        "seq_q": 64,
        "seq_k": 64,
        "head_dim": 16,
        "causal": False,
        "params": {},
        "status": "unsupported",
        "reason": "test",
        "threads": 1,
    }
    return {"type": "record", **rec, **changes}


def results_file(path: Path, *records: dict, raw: str | None = None, header: dict | None = None) -> None:
    lines = [json.dumps(header or make_header(["test"], ENV, None))]
    lines += [json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n" + (raw or ""))
