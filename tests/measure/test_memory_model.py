"""The memory model (measure/cost.py) against the peak `run` measures, on a few tiny real cases of
each backend kind: within 2× either way. Memory is nearly deterministic on the CPU (the memory
pass maps every block of 128 KiB or more afresh), so the bound is not loosened for a busy machine;
the cases are chosen with peaks of 2 MiB and more, well above the pass's granularity."""

from __future__ import annotations

import pytest
import torch

from attnbench.core.problem import Problem
from attnbench.measure import memory
from attnbench.measure.cost import predict_call_peak_bytes
from attnbench.measure.inputs import make_inputs
from attnbench.run.case import mode_call
from attnbench.run.plan import decide_case
from attnbench.run.worker import call_peak_model
from attnbench.variants import registry

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(memory.cpu_peak_supported() is not None, reason=f"{memory.cpu_peak_supported()}")

CASES = [  # (variant, backend, mode, L): one or two of each kind
    ("mha", "eager", "fwd", 512),  # materialised scores
    ("mha", "sdpa-math", "fwd", 512),  # torch's math path: materialised scores
    ("gqa", "eager", "fwd", 512),  # + K and V repeated to the query heads
    ("causal", "eager", "fwd", 512),  # + a masked copy
    ("mha", "eager", "bwd", 512),  # gradients and the backward's score gradients
    ("mha", "sdpa", "fwd", 1024),  # fused: the output and row statistics
    ("mha", "sdpa", "fwd+bwd", 512),  # fused with gradients
    ("sliding_window", "sdpa", "fwd", 512),  # fused, with a bool mask made additive per call
    ("flash", "eager", "fwd", 512),  # declared workspace: 256-key tiles
    ("performer", "eager", "fwd", 512),  # declared workspace: whole-sequence random features
    ("performer", "chunked", "fwd", 512),
    ("sliding_window", "chunked", "fwd", 512),  # declared workspace: each chunk's window of scores
    ("linformer", "eager", "fwd", 512),  # declared workspace: scores over the k projected keys
    ("gat", "edge", "fwd", 256),  # declared workspace: per-edge rows
    ("reformer", "eager", "fwd", 512),  # declared workspace: every hash round's output at the merge
    ("sliding_window", "peer:local-attention", "fwd", 510),  # a peer package's declared workspace (510 = 2·(256−1))
    ("swin", "eager", "fwd", 1024),  # declared workspace: windowed copies and window scores
    ("axial", "sdpa", "fwd", 1024),  # declared workspace: the row step's output
    ("transformer_xl", "chunked", "fwd", 512),  # declared workspace: one chunk's position bias
    ("rope", "sdpa", "fwd", 1024),  # declared workspace: the rotated q and k
    ("linear", "chunked", "fwd", 1024),  # declared workspace: elu features
    ("paged", "sdpa", "fwd", 1024),  # fused over a padded batch: its mask, gathered pages
    ("moba", "gather", "fwd", 1024),  # declared workspace: repeated K/V and one block of gathered rows
]


def _measured_peak(case) -> int:
    v, p = registry.get(case.variant), case.problem
    torch.manual_seed(0)
    q, k, val = make_inputs(v, p, CPU)
    if p.needs_grad:
        q, k, val = (t.requires_grad_(True) for t in (q, k, val))
    call = mode_call(v.backend(case.backend).build(p, CPU), q, k, val, p)
    memory.timing_allocator()  # the worker's state; a few calls first, as the timing loop makes
    for _ in range(3):
        call()
    return memory.peak_cpu(call).bytes


@pytest.mark.parametrize("variant,backend,mode,length", CASES, ids=lambda x: str(x))
def test_the_plan_predicts_the_measured_peak_within_2x(variant, backend, mode, length):
    v = registry.get(variant)
    raw = Problem(batch=1, heads=8, kv_heads=0, seq_q=length, seq_k=length, head_dim=64, dtype="float32",
                  mode=mode, params=tuple(sorted(v.defaults.items())))
    case = decide_case(v, backend, raw, CPU)
    if case.status == "unavailable":
        pytest.skip(case.reason)
    assert case.status is None, case.reason
    predicted, measured = call_peak_model(case), _measured_peak(case)
    assert measured >= 1 << 20, f"{measured} B: too small a case to hold the model to"
    assert 0.5 <= measured / predicted <= 2.0, (
        f"{variant}/{backend} {mode} L={length}: measured {measured / 2**20:.1f} MiB, "
        f"predicted {predicted / 2**20:.1f} MiB")


def test_the_model_tells_the_kinds_apart():
    """Not a floor: materialised scores grow with Lq·Lk, a fused call with Lq only."""
    p = Problem(batch=1, heads=8, kv_heads=8, seq_q=4096, seq_k=4096, head_dim=64)
    fused, scores = predict_call_peak_bytes(p, False), predict_call_peak_bytes(p, True)
    assert fused == pytest.approx(8 * 4096 * 64 * 4 + 8 * 4096 * 8)  # output + max and sum per row
    assert scores == pytest.approx(8 * 4096 * 64 * 4 + 2.5 * 8 * 4096 * 4096 * 4)
    half = Problem(batch=1, heads=8, kv_heads=8, seq_q=2048, seq_k=2048, head_dim=64)
    assert predict_call_peak_bytes(p, True) / predict_call_peak_bytes(half, True) > 3.9
    assert predict_call_peak_bytes(p, False) / predict_call_peak_bytes(half, False) == pytest.approx(2.0)
