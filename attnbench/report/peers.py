""" "Against the peers": the performance targets of suites/peers.toml, read off one run.

Each target is a ratio measured in the same run (same machine, same moment), never an
absolute time:

1. GQA/MQA decode: `grouped` ≥ 3× faster than SDPA enable_gqa at Hkv ≤ 8; MHA/MQA latency
   ratio ≥ 8 (`grouped`); each `grouped` case within 3× of KV bytes ÷ the in-run copy bandwidth.
   Context row (not a target): latency ÷ the roofline bound max(KV bytes ÷ bandwidth, FLOPs ÷
   in-run GEMM rate); where the FLOP term alone exceeds 3× the bytes bound, the bytes target
   cannot be met on the machine and the row says so.
2. causal Performer `chunked` ≥ 10× faster than performer-pytorch at 16k; fitted latency
   exponent ≤ 1.15 and peak-memory exponent ≤ 1.1 over 4k..64k.
3. non-causal Performer (256 features): ours no slower than performer-pytorch at each length,
   with a relative error against exact attention no worse (same inputs, same parameters: the
   package's eps = 1e-4 is a parameter of ours too; records with other parameters are shown as
   context, never compared with the peer).
4. causal sliding window (w=256): our best ≥ 3× faster than local-attention at every L in 4k..64k.
5. exact attention, L ≥ 2k non-causal: the best backend reaches ≥ 80 % of the in-run GEMM rate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from attnbench.report.analysis import fit_exponent, fmt_len


@dataclass(frozen=True)
class Target:
    number: int
    what: str
    goal: str
    measured: str
    passed: bool | None  # None: not measured in this run, or a context row (info)
    note: str = ""
    info: bool = False  # context for the targets, not a target itself
    not_run: bool = False  # the peers suite's cases for it are not in the run: never judged

    @property
    def mark(self) -> str:
        if self.not_run:
            return "not run"
        return "info" if self.info else {True: "pass", False: "miss", None: "–"}[self.passed]


RUN_IT = "run the peers suite: attnbench run --suite peers"


def _ok(records, **match) -> list[dict]:
    return [r for r in records if r["status"] == "ok" and all(r.get(k) == v for k, v in match.items())]


def _median(r: dict | None) -> float | None:
    return (r.get("latency_ms") or {}).get("median") if r else None


def _one(records, **match) -> dict | None:
    found = _ok(records, **match)
    return found[0] if found else None


def _missing(n: int, what: str, goal: str) -> Target:
    return Target(n, what, goal, "–", None, RUN_IT, not_run=True)


def peers_suite_named(headers: list[dict]) -> bool:
    """Whether a header's command names the peers suite (`--suite peers`, a peers.toml): the
    project's own benchmark, whose targets belong in its report and in no user's."""
    for h in headers:
        cmd = [str(c) for c in h.get("command") or []]
        if any(c in ("peers", "--suite=peers") or c.endswith("peers.toml") for c in cmd):
            return True
    return False


def peers_suite_ran(headers: list[dict], records: list[dict]) -> bool:
    """Whether the run holds the peers suite: a header's command names it or a peer package's
    backend ran (only that suite runs them by default)."""
    return peers_suite_named(headers) or any(str(r.get("backend", "")).startswith("peer:") for r in records)


def decode_targets(records: list[dict], refs: dict | None) -> list[Target]:
    dec = [r for r in _ok(records, mode="decode") if r["variant"] in ("mha", "gqa", "mqa")]
    if not dec:
        return [_missing(1, "GQA/MQA decode", "≥ 3× SDPA at Hkv ≤ 8; MHA/MQA ≥ 8×; ≤ 3× KV-bytes bound")]
    out = []
    ratios = []
    for g in sorted({r["kv_heads"] for r in dec if r["kv_heads"] <= 8}, reverse=True):
        sd = _one(dec, kv_heads=g, backend="sdpa")
        gr = _one(dec, kv_heads=g, backend="grouped")
        if sd and gr:
            ratios.append((g, _median(sd) / _median(gr)))
    if ratios:
        worst = min(x for _, x in ratios)
        out.append(
            Target(
                1,
                "decode: grouped vs SDPA enable_gqa (Hkv ≤ 8)",
                "≥ 3×",
                ", ".join(f"Hkv={g}: {x:.1f}×" for g, x in ratios),
                worst >= 3,
            )
        )
    heads = max(r["heads"] for r in dec)
    mha = _one(dec, kv_heads=heads, backend="grouped")
    mqa = _one(dec, kv_heads=1, backend="grouped")
    bw = ((refs or {}).get("copy") or {}).get("bytes_per_s")

    def bytes_ms(r):
        return r["kv_cache_bytes"] / bw * 1e3

    def flops_ms(r):
        gemm = (((refs or {}).get("gemm") or {}).get(r["dtype"]) or {}).get("flops_per_s")
        return r["flops"] / gemm * 1e3 if gemm and r.get("flops") else 0.0

    if mha and mqa:
        x = _median(mha) / _median(mqa)
        note = ""
        if bw:  # the ratio a roofline-speed implementation would reach on this machine
            ideal = max(bytes_ms(mha), flops_ms(mha)) / max(bytes_ms(mqa), flops_ms(mqa))
            note = f"the roofline bounds of the two cases give {ideal:.1f}× here"
        out.append(Target(1, "decode: MHA/MQA latency (grouped)", "≥ 8× (KV bytes 32×)", f"{x:.1f}×", x >= 8, note))
    grouped = [r for r in dec if r["backend"] == "grouped"]
    if bw and grouped:
        worst = max(grouped, key=lambda r: _median(r) / bytes_ms(r))
        x = _median(worst) / bytes_ms(worst)
        note = "; ".join(
            _compute_bound(r["kv_heads"], flops_ms(r) / bytes_ms(r))
            for r in grouped
            if _median(r) > 3 * bytes_ms(r) and flops_ms(r) > bytes_ms(r)
        )
        out.append(
            Target(
                1,
                "decode: grouped latency ÷ (KV bytes ÷ in-run bandwidth)",
                "≤ 3×",
                f"worst {x:.1f}× (Hkv={worst['kv_heads']})",
                x <= 3,
                note,
            )
        )
        rows = [
            (
                r["kv_heads"],
                _median(r) / max(bytes_ms(r), flops_ms(r)),
                "FLOPs" if flops_ms(r) > bytes_ms(r) else "bytes",
            )
            for r in grouped
        ]
        out.append(
            Target(
                1,
                "decode: grouped latency ÷ max(KV bytes ÷ bandwidth, FLOPs ÷ GEMM rate)",
                "context",
                ", ".join(f"Hkv={g}: {x:.1f}× ({bound})" for g, x, bound in sorted(rows, reverse=True)),
                None,
                "the bound that binds in parentheses",
                info=True,
            )
        )
    return out


def _compute_bound(kv_heads: int, floor: float) -> str:
    """Why a compute-bound decode case misses the bytes target: its FLOPs at the in-run GEMM
    rate alone take `floor` × the bytes bound."""
    if floor > 3:
        return (f"Hkv={kv_heads}: unreachable here, its FLOPs at the in-run GEMM rate alone take "
                f"{floor:.1f}× the bytes bound")
    return (
        f"Hkv={kv_heads}: compute-bound here, its FLOPs at the in-run GEMM rate take {floor:.1f}× the bytes "
        f"bound (≤ 3× needs ≥ {100 * floor / 3:.0f} % of that rate)"
    )


def causal_linear_targets(records: list[dict]) -> list[Target]:
    perf = _ok(records, variant="performer", causal=True)
    out = []
    ours = _one(perf, backend="chunked", seq_q=16384)
    peer = _one(perf, backend="peer:performer-pytorch", seq_q=16384)
    if ours and peer:
        x = _median(peer) / _median(ours)
        out.append(Target(2, "causal Performer at 16k: performer-pytorch ÷ chunked", "≥ 10×", f"{x:.1f}×", x >= 10))
    for variant in ("performer", "linear"):
        pts = [r for r in _ok(records, variant=variant, causal=True, backend="chunked") if r["seq_q"] >= 4096]
        if len(pts) >= 3:
            lt = fit_exponent([r["seq_q"] for r in pts], [_median(r) for r in pts])
            mem = fit_exponent([r["seq_q"] for r in pts], [r["peak_mem_bytes"] for r in pts])
            out.append(
                Target(
                    2,
                    f"causal {variant} chunked: latency exponent {fmt_len(lt.l_min)}..{fmt_len(lt.l_max)}",
                    "≤ 1.15",
                    lt.text(),
                    lt.exponent <= 1.15,
                )
            )
            if mem is not None:
                out.append(
                    Target(
                        2, f"causal {variant} chunked: peak-memory exponent", "≤ 1.1", mem.text(), mem.exponent <= 1.1
                    )
                )
    return out or [_missing(2, "causal Performer / linear", "≥ 10× peer at 16k; exponents ≤ 1.15 / 1.1")]


def _rel_err(r: dict) -> float | None:
    e = r.get("error") or {}
    return e.get("full_rel_l2", e.get("rel_l2"))


def variant_params(r: dict) -> tuple:
    """The record's parameters of its variant (what is computed), without its backend's own
    (how: a flex tile size, a product's orientation), which cases may differ in and still compare."""
    declared = r.get("_params")  # the variant's own parameter names (report/catalogue.py)
    if declared is None:
        return tuple(sorted(r.get("params", {}).items()))
    return tuple(sorted((k, v) for k, v in r.get("params", {}).items() if k in declared))


def best_vs_peer(records: list[dict], peer_backend: str) -> list[tuple[int, float, dict, dict]]:
    """Per length: (L, peer latency ÷ our fastest backend's, our best record, the peer's), ours
    taken among records with the peer's own variant parameters."""
    out = []
    for L in sorted({r["seq_q"] for r in records}):
        peer = _one(records, backend=peer_backend, seq_q=L)
        ours = [
            r
            for r in records
            if r["seq_q"] == L
            and not r["backend"].startswith("peer:")
            and peer
            and variant_params(r) == variant_params(peer)
        ]
        if peer and ours:
            best = min(ours, key=_median)
            out.append((L, _median(peer) / _median(best), best, peer))
    return out


def noncausal_performer_targets(records: list[dict]) -> list[Target]:
    found = best_vs_peer(_ok(records, variant="performer", causal=False), "peer:performer-pytorch")
    rows = [(L, x, best["backend"]) for L, x, best, _ in found]
    errs = [
        (L, _rel_err(best), _rel_err(peer))
        for L, _, best, peer in found
        if _rel_err(best) is not None and _rel_err(peer) is not None
    ]
    if not rows:
        return [_missing(3, "non-causal Performer", "no slower than performer-pytorch; error no worse")]
    out = [
        Target(
            3,
            "non-causal Performer: performer-pytorch ÷ our best",
            "≥ 1.0× at every L",
            ", ".join(f"{fmt_len(L)}: {x:.2f}× ({b})" for L, x, b in rows),
            all(x >= 1.0 for _, x, _ in rows),
        )
    ]
    if errs:
        eps = found[0][3].get("params", {}).get("eps")
        out.append(
            Target(
                3,
                "non-causal Performer: relative error ours vs peer",
                "ours ≤ peer",
                ", ".join(f"{fmt_len(L)}: {a:.3f} vs {b:.3f}" for L, a, b in errs),
                all(a <= b * 1.05 for _, a, b in errs),
                f"same W and eps = {eps:g}: the same estimator (5 % allowance)",
            )
        )
    peer_params = {variant_params(peer) for _, _, _, peer in found}
    other = [
        r
        for r in _ok(records, variant="performer", causal=False)
        if not r["backend"].startswith("peer:") and variant_params(r) not in peer_params and _rel_err(r) is not None
    ]
    if other:
        out.append(
            Target(
                3,
                "non-causal Performer, other parameters (not compared with the peer)",
                "context",
                ", ".join(
                    f"{r['backend']} eps={r.get('params', {}).get('eps', 0):g} {fmt_len(r['seq_q'])}: {_rel_err(r):.3f}"
                    for r in other
                ),
                None,
                "relative error against exact attention",
                info=True,
            )
        )
    return out


def sliding_window_targets(records: list[dict]) -> list[Target]:
    sw = [r for r in _ok(records, variant="sliding_window", causal=True) if r["seq_q"] >= 4096]
    rows = [(L, x, best["backend"]) for L, x, best, _ in best_vs_peer(sw, "peer:local-attention")]
    if not rows:
        return [_missing(4, "sliding window w=256 causal", "≥ 3× local-attention at 4k..64k")]
    return [
        Target(
            4,
            "sliding window (w=256, causal): local-attention ÷ our best",
            "≥ 3× at every L",
            ", ".join(f"{fmt_len(L)}: {x:.1f}× ({b})" for L, x, b in rows),
            all(x >= 3 for _, x, _ in rows),
        )
    ]


def exact_roofline_targets(records: list[dict], refs: dict | None) -> list[Target]:
    ex = [
        r
        for r in _ok(records, mode="fwd", causal=False)
        if r["variant"] in ("mha", "flash") and r["seq_q"] >= 2048 and r.get("flops")
    ]
    gemm = (refs or {}).get("gemm") or {}
    if not ex or not gemm:
        return [_missing(5, "exact attention vs in-run GEMM", "≥ 80 % at L ≥ 2k")]
    fracs = []
    for L in sorted({r["seq_q"] for r in ex}):
        cands = [r for r in ex if r["seq_q"] == L and r["dtype"] in gemm]
        best = max(cands, key=lambda r: r["flops"] / _median(r))
        rate = best["flops"] / (_median(best) * 1e-3)
        fracs.append((L, rate / gemm[best["dtype"]]["flops_per_s"], best["backend"]))
    return [
        Target(
            5,
            "best exact backend ÷ in-run GEMM FLOP/s (non-causal)",
            "≥ 80 % at every L ≥ 2k",
            ", ".join(f"{fmt_len(L)}: {100 * f:.0f} % ({b})" for L, f, b in fracs),
            all(f >= 0.8 for _, f, _ in fracs),
        )
    ]


def peer_targets(records: list[dict], refs: dict | None, suite_ran: bool = True) -> list[Target]:
    """Every target; suite_ran=False (peers_suite_ran): the values come from other cases than
    the suite's, so no target is judged (`not run`, the value kept as context)."""
    targets = [
        *decode_targets(records, refs),
        *causal_linear_targets(records),
        *noncausal_performer_targets(records),
        *sliding_window_targets(records),
        *exact_roofline_targets(records, refs),
    ]
    if suite_ran:
        return targets
    return [t if t.not_run or t.info else replace(t, passed=None, not_run=True, note=RUN_IT,
                                                   measured=f"{t.measured} (other cases than the suite's)")
            for t in targets]


def markdown(targets: list[Target]) -> str:
    rows = ["| # | target | goal | measured | result |", "|---|---|---|---|---|"]
    for t in targets:
        mark = "**miss**" if t.mark == "miss" else t.mark
        rows.append(f"| {t.number} | {t.what} | {t.goal} | {t.measured} | {mark}{' — ' + t.note if t.note else ''} |")
    return "\n".join(rows)
