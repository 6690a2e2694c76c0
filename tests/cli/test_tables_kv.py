"""The run table's KV/token and KV/seq columns: shown only when a record is a decode one, filled only for
those; the cost-parts note."""

from __future__ import annotations

from rich.console import Console

from attnbench.cli.tables import kv_per_token, results_table


def _record(mode: str, kv: float | None) -> dict:
    return dict(variant="mla", backend="eager", mode=mode, seq_q=1, seq_k=4096, batch=2, heads=8, kv_heads=1,
                status="ok", latency_ms={"median": 1.0}, kv_cache_bytes=kv, kernel="aten::bmm")


def test_kv_per_token_is_the_decode_cache_per_cached_token():
    assert kv_per_token(_record("decode", 2 * 4096 * 576 * 2)) == "1.1 KiB"  # 576 bf16 elements a token
    assert kv_per_token(_record("fwd", 2 * 4096 * 576 * 2)) == "-"
    assert kv_per_token(_record("decode", None)) == "-"


def test_column_only_with_decode_records():
    def header(records):
        console = Console(width=200, record=True)
        console.print(results_table(records))
        return console.export_text()

    assert "KV/token/layer" in header([_record("decode", 4096.0 * 2 * 1152), _record("fwd", None)])
    assert "KV/token" not in header([_record("fwd", None)])
    assert "KV/seq" in header([_record("decode", 4096.0)]) and "KV/seq" not in header([_record("fwd", None)])


def test_kv_per_seq_is_the_decode_cache_of_one_sequence():
    from attnbench.cli.tables import kv_per_seq

    assert kv_per_seq(_record("decode", 2 * 512 * 1024)) == "512.0 KiB"  # batch 2
    assert kv_per_seq(_record("fwd", 1024.0)) == "-"


def test_cost_parts_share_in_the_kernel_column():
    """A record with cost parts (dsa) shows each part's share of FLOPs and bytes but the last's."""
    from attnbench.cli.tables import parts_note

    rec = _record("decode", 1.0) | {"variant": "dsa", "cost_parts": {"indexer": {"flops": 30.0, "bytes": 90.0},
                                                                      "attention": {"flops": 70.0, "bytes": 10.0}}}
    assert parts_note(rec) == " · indexer 30/90 % of FLOPs/bytes"
    assert parts_note(_record("decode", 1.0)) == ""
    console = Console(width=220, record=True)
    console.print(results_table([rec]))
    assert "indexer 30/90 % of FLOPs/bytes" in console.export_text()


def test_case_scales_cost_parts_by_mode_and_they_sum_to_the_variants_cost():
    from attnbench.core.problem import Problem
    from attnbench.run.case import cost_parts
    from attnbench.variants import registry

    dsa = registry.get("dsa")
    p = dsa.resolve(Problem(batch=1, heads=4, kv_heads=0, seq_q=1, seq_k=3000, head_dim=64, mode="decode"))
    parts = cost_parts(dsa, p)["cost_parts"]
    assert sum(c["flops"] for c in parts.values()) == dsa.flops(p)
    assert sum(c["bytes"] for c in parts.values()) == dsa.bytes(p)
    assert cost_parts(registry.get("mla"), p) == {}


def test_the_kv_layout_tells_two_otherwise_identical_rows_apart():
    from conftest import valid_record

    recs = [valid_record(variant="paged", backend="sdpa", mode="decode", params={"kv_layout": layout})
            for layout in ("paged", "dense")]
    console = Console(width=200, record=True)
    console.print(results_table(recs, columns=["variant", "backend", "status"]))
    text = console.export_text()
    assert "paged (paged)" in text and "paged (dense)" in text
