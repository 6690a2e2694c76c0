"""The run table's KV/token column: shown only when a record is a decode one, filled only for those."""

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
