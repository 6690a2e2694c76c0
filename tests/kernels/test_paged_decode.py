"""attnbench.kernels.paged_decode (paged split-KV decode) under the Triton interpreter, against an
fp64 per-sequence reference written here; and its ahead-of-time compile for sm_80 / sm_90.

The pools are filled with noise everywhere (slack slots of a sequence's last page, unused pages),
and the block tables are shuffled, so reading a wrong page or a slot past a sequence's length
changes the answer. fp32 under the interpreter: errors ~1e-6; fp16: ~1e-3.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.interpreter
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it)", allow_module_level=True)
pytest.importorskip("triton")

from attnbench.kernels import aot  # noqa: E402
from attnbench.kernels.paged_decode import dense_as_pages, paged_decode  # noqa: E402


def make_paged(lengths, page_size, hq, hkv, d, dtype, seed=0, spare_pages=2):
    """q (B, Hq, 1, D), pools (P, page, Hkv, D) of noise with `spare_pages` never used, and a shuffled
    int32 block table whose entries past a sequence's pages name a spare page (never to be read)."""
    g = torch.Generator().manual_seed(seed)
    pages = [math.ceil(n / page_size) for n in lengths]
    total = sum(pages) + spare_pages
    order = list(range(total))
    random.Random(seed).shuffle(order)
    table = torch.full((len(lengths), max(pages) + 1), order[-1], dtype=torch.int32)  # a spare page
    at = 0
    for b, n in enumerate(pages):
        table[b, :n] = torch.tensor(order[at:at + n], dtype=torch.int32)
        at += n
    q = torch.randn(len(lengths), hq, 1, d, generator=g).to(dtype)
    k, v = (torch.randn(total, page_size, hkv, d, generator=g).to(dtype) for _ in range(2))
    return q, k, v, table, torch.tensor(lengths, dtype=torch.int32)


def reference(q, k_pool, v_pool, table, lengths):
    """fp64: for each sequence, its tokens gathered page by page, then softmax(q kᵀ/√D) v."""
    b, hq, _, d = q.shape
    page_size, hkv = k_pool.shape[1], k_pool.shape[2]
    out = torch.zeros(b, hq, 1, d, dtype=torch.float64)
    for i, n in enumerate(lengths.tolist()):
        rows_k, rows_v = [], []
        for t in range(n):
            page, slot = int(table[i, t // page_size]), t % page_size
            rows_k.append(k_pool[page, slot].double())
            rows_v.append(v_pool[page, slot].double())
        kk, vv = torch.stack(rows_k, 1), torch.stack(rows_v, 1)  # (Hkv, n, D)
        for h in range(hq):
            s = kk[h // (hq // hkv)] @ q[i, h, 0].double() / math.sqrt(d)
            out[i, h, 0] = torch.softmax(s, 0) @ vv[h // (hq // hkv)]
    return out


def rel(a, b):
    return float((a.double() - b).norm() / b.norm())


# (lengths, page_size, Hq, Hkv, D, num_splits)
CASES = {
    "ragged-odd-lengths": ([37, 1, 100, 16], 16, 8, 2, 64, None),
    "shorter-than-a-page": ([5, 3], 16, 4, 4, 32, 2),
    "page-not-power-of-two": ([50, 23], 12, 4, 1, 32, 3),  # tiles span pages
    "big-pages-many-splits": ([300, 129], 64, 8, 1, 40, 8),  # D=40: padded head dim
    "mqa-wide-group": ([70, 33], 16, 32, 1, 16, 2),  # G = 32 query heads in one tile
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_paged_decode_matches_fp64_reference(name, dtype):
    lengths, ps, hq, hkv, d, splits = CASES[name]
    q, k, v, table, lens = make_paged(lengths, ps, hq, hkv, d, dtype)
    out = paged_decode(q, k, v, table, lens, num_splits=splits)
    assert out.shape == q.shape and out.dtype == dtype
    assert rel(out, reference(q, k, v, table, lens)) < (1e-5 if dtype == torch.float32 else 5e-3)


def test_every_split_count_agrees():
    q, k, v, table, lens = make_paged([90, 17, 1], 16, 4, 2, 32, torch.float32, seed=3)
    want = reference(q, k, v, table, lens)
    for splits in (1, 2, 7, 16):  # more splits than chunks: empty ones merge with weight 0
        assert rel(paged_decode(q, k, v, table, lens, num_splits=splits), want) < 1e-5, splits


def test_slack_slots_are_never_read():
    """Poisoning every slot past each sequence's end (NaN) leaves the output unchanged."""
    q, k, v, table, lens = make_paged([20, 9], 8, 2, 1, 16, torch.float32)
    before = paged_decode(q, k, v, table, lens)
    used = set()
    for i, n in enumerate(lens.tolist()):
        used |= {(int(table[i, t // 8]), t % 8) for t in range(n)}
    for page in range(k.shape[0]):
        for slot in range(8):
            if (page, slot) not in used:
                k[page, slot] = float("nan")
                v[page, slot] = float("nan")
    after = paged_decode(q, k, v, table, lens)
    assert torch.isfinite(after).all() and torch.equal(before, after)


def test_dense_cache_as_pages_matches_the_padded_reference():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, 4, 1, 32, generator=g), *(torch.randn(3, 2, 40, 32, generator=g) for _ in range(2))
    lens = torch.tensor([40, 7, 1], dtype=torch.int32)
    pool_k, table = dense_as_pages(k)
    out = paged_decode(q, pool_k, dense_as_pages(v)[0], table, lens)
    assert rel(out, reference(q, pool_k, v.transpose(1, 2), table, lens)) < 1e-5


def test_bad_arguments():
    q, k, v, table, lens = make_paged([10], 16, 2, 1, 16, torch.float32)
    with pytest.raises(ValueError, match=r"q must be \(B, Hq, 1, D\)"):
        paged_decode(q.expand(-1, -1, 2, -1), k, v, table, lens)
    with pytest.raises(ValueError, match="block_table must be int32"):
        paged_decode(q, k, v, table.long(), lens)
    with pytest.raises(ValueError, match="num_splits"):
        paged_decode(q, k, v, table, lens, num_splits=65)
    with pytest.raises(ValueError, match="forward-only"):
        paged_decode(q.requires_grad_(True), k, v, table, lens)


# ---------------------------------------------------------------- ahead-of-time compile
_COMPILE = """
import json
from attnbench.kernels import aot
kernels = aot.kernel_module("paged_decode").AOT_KERNELS
rows = [aot.compile_one(kern, arch, dtype, kern.head_dims[-1], cfg) for kern in kernels
        for arch in ("sm_80", "sm_90") for dtype in ("float16", "bfloat16") for cfg in kern.configs[arch]]
print(json.dumps(rows))
"""


@pytest.mark.slow
def test_aot_compiles_for_sm80_and_sm90_without_spills():
    """Every config of the paged kernels compiles (triton.compile, GPUTarget cuda 80/90), fits the
    arch's shared memory and spills nothing (ptxas -v): in a process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    assert {(r["kernel"], r["arch"]) for r in rows} == {(k, a) for k in ("paged.split", "paged.merge")
                                                          for a in ("sm_80", "sm_90")}
    bad = [r for r in rows if not r["ok"]]
    assert not bad, "\n" + aot.format_rows(bad)
