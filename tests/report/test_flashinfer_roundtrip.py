"""Round trip: a definition and its workloads (small files in the published format, written here,
the reference our own few lines) imported by `run --definition`, measured with the reference
trusted and timed, then exported: every trace validates and every workload uuid is named.

It needs the import (`run --definition`); where this checkout's `run` has no such option the test
is skipped, saying so."""

from __future__ import annotations

import json

import pytest

from attnbench.cli import main
from attnbench.cli.vocabulary import uses
from attnbench.report import flashinfer_trace as ft

pytestmark = pytest.mark.slow

NAME = "gqa_paged_decode_h4_kv2_d64_ps1"
UUIDS = ("0a7e3c10-0000-4000-8000-0000000000a1", "0a7e3c10-0000-4000-8000-0000000000a2")
REFERENCE = '''import math
import torch


@torch.no_grad()
def run(q, k_cache, v_cache, kv_indptr, kv_indices, sm_scale):
    batch_size, num_qo_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_qo_heads // num_kv_heads
    k_all = k_cache.squeeze(1).float()  # page_size 1: (num_pages, Hkv, D)
    v_all = v_cache.squeeze(1).float()
    output = torch.zeros_like(q)
    lse = torch.full((batch_size, num_qo_heads), -math.inf, dtype=torch.float32, device=q.device)
    for b in range(batch_size):
        pages = kv_indices[int(kv_indptr[b]):int(kv_indptr[b + 1])].long()
        if pages.numel() == 0:
            continue
        k = k_all[pages].repeat_interleave(group, dim=1)  # (T, Hq, D)
        v = v_all[pages].repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,thd->ht", q[b].float(), k) * sm_scale
        lse[b] = torch.logsumexp(scores, dim=-1) / math.log(2.0)
        output[b] = torch.einsum("ht,thd->hd", torch.softmax(scores, dim=-1), v).to(q.dtype)
    return output, lse
'''


def _definition() -> dict:
    t = lambda shape, dtype: {"shape": shape, "dtype": dtype}  # noqa: E731
    return {
        "name": NAME, "op_type": "gqa_paged", "description": "round-trip test", "tags": ["stage:decode"],
        "axes": {"batch_size": {"type": "var"}, "num_qo_heads": {"type": "const", "value": 4},
                 "num_kv_heads": {"type": "const", "value": 2}, "head_dim": {"type": "const", "value": 64},
                 "num_pages": {"type": "var"}, "page_size": {"type": "const", "value": 1},
                 "len_indptr": {"type": "var"}, "num_kv_indices": {"type": "var"}},
        "constraints": ["len_indptr == batch_size + 1", "num_kv_indices == kv_indptr[-1].item()"],
        "inputs": {"q": t(["batch_size", "num_qo_heads", "head_dim"], "bfloat16"),
                   "k_cache": t(["num_pages", "page_size", "num_kv_heads", "head_dim"], "bfloat16"),
                   "v_cache": t(["num_pages", "page_size", "num_kv_heads", "head_dim"], "bfloat16"),
                   "kv_indptr": t(["len_indptr"], "int32"), "kv_indices": t(["num_kv_indices"], "int32"),
                   "sm_scale": t(None, "float32")},
        "outputs": {"output": t(["batch_size", "num_qo_heads", "head_dim"], "bfloat16"),
                    "lse": t(["batch_size", "num_qo_heads"], "float32")},
        "reference": REFERENCE,
    }


def _workload(uuid: str, batch: int, pages: int) -> dict:
    blob = {"type": "safetensors", "path": f"./blob/{uuid}.safetensors"}  # not shipped: synthesized, named
    return {"definition": NAME, "solution": None, "evaluation": None,
            "workload": {"uuid": uuid, "axes": {"batch_size": batch, "num_pages": pages, "len_indptr": batch + 1,
                                                "num_kv_indices": pages},
                         "inputs": {"q": {"type": "random"}, "k_cache": {"type": "random"},
                                    "v_cache": {"type": "random"},
                                    "kv_indptr": blob | {"tensor_key": "kv_indptr"},
                                    "kv_indices": blob | {"tensor_key": "kv_indices"},
                                    "sm_scale": {"type": "scalar", "value": 0.125}}}}


def test_import_run_export_names_every_workload(tmp_path, capsys):
    if not any(u.command == "run" and u.name == "--definition" for u in uses()):
        pytest.skip("this checkout's run has no --definition (the FlashInfer Trace import)")
    d, w = tmp_path / f"{NAME}.json", tmp_path / f"{NAME}.jsonl"
    d.write_text(json.dumps(_definition(), indent=1))
    w.write_text("".join(json.dumps(_workload(u, b, p)) + "\n" for u, b, p in zip(UUIDS, (1, 2), (16, 24))))
    res, out = tmp_path / "r.jsonl", tmp_path / "set"
    rc = main(["run", "--definition", str(d), "--workloads", str(w), "--trust-reference", "--backends",
               "eager,sdpa,reference", "--device", "cpu", "--threads", "1", "--time-budget", "1", "--out", str(res),
               "-q"])
    assert rc == 0, capsys.readouterr().err
    assert main(["export", str(res), "--format", "flashinfer-trace", "--out", str(out)]) == 0, capsys.readouterr().err
    traces = [ft.Trace.model_validate_json(x)
              for x in (out / "traces/attnbench/gqa_paged" / f"{NAME}.jsonl").read_text().splitlines()]
    assert {t.workload.uuid for t in traces} == set(UUIDS)
    backends = {(t.workload.uuid, t.solution.rsplit("_", 1)[-1]) for t in traces}  # attnbench_<variant>_<backend>
    assert backends == {(u, b) for u in UUIDS for b in ("eager", "sdpa")}
    assert all(t.evaluation.status == "PASSED" and t.evaluation.performance.speedup_factor > 0 for t in traces)
    workloads = (out / "workloads/gqa_paged" / f"{NAME}.jsonl").read_text().splitlines()
    assert sorted(ft.Trace.model_validate_json(x).workload.uuid for x in workloads) == sorted(UUIDS)
    ft.Definition.model_validate_json((out / "definitions/gqa_paged" / f"{NAME}.json").read_text())
