"""A workload's inputs: scalars as given, safetensors blobs loaded from --blobs, and the index
tensors of a missing blob synthesized consistently with the axes (and named in a note)."""

from __future__ import annotations

import pytest
import torch
from fitrace_fixtures import gqa_paged, gqa_ragged
from safetensors.torch import save_file

from attnbench.core.fitrace import Definition, Workload
from attnbench.variants.fitrace.inputs import build_inputs
from attnbench.variants.fitrace.layout import layout_of

CPU = torch.device("cpu")


def _workload(d: Definition, axes: dict, blob: str | None = None, scale: float = 0.2) -> Workload:
    inputs = {n: {"type": "random"} for n in d.inputs if n not in ("sm_scale",)}
    if blob:
        for n in [n for n in ("kv_indptr", "kv_indices", "kv_last_page_len") if n in d.inputs]:
            inputs[n] = {"type": "safetensors", "path": blob, "tensor_key": n}
    return Workload(uuid="u", axes=axes, inputs=inputs | {"sm_scale": {"type": "scalar", "value": scale}})


def test_a_blob_under_blobs_is_loaded_as_it_is(tmp_path):
    d = Definition.model_validate(gqa_paged("decode", 4, 2, 64, 64))
    indptr, indices = torch.tensor([0, 2, 3], dtype=torch.int32), torch.tensor([7, 1, 4], dtype=torch.int32)
    last = torch.tensor([5, 64], dtype=torch.int32)
    (tmp_path / "blob").mkdir()
    save_file({"kv_indptr": indptr, "kv_indices": indices, "kv_last_page_len": last},
              str(tmp_path / "blob/w.safetensors"))
    axes = {"batch_size": 2, "num_pages": 8, "len_indptr": 3, "num_kv_indices": 3}
    inputs, notes = build_inputs(d, _workload(d, axes, "./blob/w.safetensors"), tmp_path, CPU)
    assert notes == [] and inputs["sm_scale"] == 0.2
    assert torch.equal(inputs["kv_indptr"], indptr) and torch.equal(inputs["kv_indices"], indices)
    assert layout_of("gqa_paged", "decode", inputs).kv_len == (64 + 5, 64)
    assert inputs["k_cache"].shape == (8, 64, 2, 64) and inputs["q"].dtype == torch.bfloat16


@pytest.mark.parametrize("ps", [1, 64])
def test_a_missing_blob_is_synthesized_from_the_axes_and_named(tmp_path, ps):
    d = Definition.model_validate(gqa_paged("prefill", 4, 2, 64, ps))
    axes = {"batch_size": 3, "num_pages": 50, "len_indptr": 4, "num_kv_indices": 12, "total_q": 10}
    inputs, notes = build_inputs(d, _workload(d, axes, "./blob/gone.safetensors"), tmp_path, CPU)
    assert len(notes) == 2 + (ps > 1) and all("./blob/gone.safetensors not found under --blobs" in n for n in notes)
    indptr = inputs["kv_indptr"].tolist()
    assert indptr[0] == 0 and indptr[-1] == 12 and all(a <= b for a, b in zip(indptr, indptr[1:]))
    ids = inputs["kv_indices"].tolist()
    assert len(ids) == 12 and len(set(ids)) == 12 and max(ids) < 50
    lay = layout_of("gqa_paged", "prefill", inputs)
    assert sum(lay.q_len) == 10 and all(nq <= nk for nq, nk in zip(lay.q_len, lay.kv_len))
    if ps > 1:
        pages = [b - a for a, b in zip(indptr, indptr[1:])]
        last = inputs["kv_last_page_len"].tolist()
        assert all(1 <= last[b] <= ps for b in range(3) if pages[b])
    again, _ = build_inputs(d, _workload(d, axes, "./blob/gone.safetensors"), tmp_path, CPU)
    assert torch.equal(again["kv_indices"], inputs["kv_indices"])  # seeded: the same in every process


def test_ragged_lengths_sum_to_the_axes():
    d = Definition.model_validate(gqa_ragged(4, 1, 64))
    inputs, notes = build_inputs(d, _workload(d, {"len_indptr": 5, "total_q": 9, "total_kv": 40}), None, CPU)
    assert notes == [] and inputs["qo_indptr"][-1] == 9 and inputs["kv_indptr"][-1] == 40
    assert inputs["k"].shape == (40, 1, 64)
