"""Rounds: every case measured several times, interleaved with the others (asv's `rounds`).

A shared machine drifts: a slow minute lands on whichever cases run in it, and a ratio of two
cases measured a minute apart inherits that drift. With N rounds the whole case list runs N
times, forward in odd rounds and backward in even ones (so a linear drift weighs each case
alike), and each case's record pools the samples of its rounds:

    samples_ms   every round's samples, in round order
    latency_ms   statistics of the pooled samples (the median is the headline, as always)
    timing       first round's calls_per_sample and stopped_by, plus rounds = N and
                 round_medians_ms (one median per round: the drift the pooling averaged over)
    tflops, gbps, roofline_frac   recomputed for the pooled median
    peak_mem_bytes   the largest of the rounds (memory is measured in every round)
    wall_s       the sum over rounds

A case that is not `ok` in some round (unsupported, skipped, oom, timeout, error) is recorded
as that round's record, its reason prefixed with the round, and is not run again.

Durability (RoundJournal): each finished round of a case that still has rounds to go is
appended (one fsynced line) to the journal `.NAME.rounds` beside the results file NAME; `kill -9`
then loses at most the round in flight, and `--resume` continues every case from the rounds it
has. The journal is removed when a run ends with every case recorded; an interrupted run keeps
it for its resume; a run that is not a resume starts a new one.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from attnbench.measure.timing import Stats


def round_order(cases: list, round_index: int) -> list:
    """Round 0, 2, 4, ... run the cases forward; round 1, 3, ... backward."""
    return list(cases) if round_index % 2 == 0 else list(reversed(cases))


def merge_rounds(rounds: list[dict], total: int) -> dict:
    """One record from the records of one case's rounds (in round order) out of `total`."""
    if total == 1:
        return rounds[0]
    for i, rec in enumerate(rounds):
        if rec["status"] != "ok":
            return {**rec, "reason": f"round {i + 1} of {total}: {rec.get('reason') or rec['status']}"}
    first, n = rounds[0], len(rounds)
    samples = [s for rec in rounds for s in rec["samples_ms"]]
    stats = Stats.of([s for rec in rounds for s in _kept(rec)])
    scale = first["latency_ms"]["median"] / stats.median  # rates go as 1 / median
    peaks = [rec["peak_mem_bytes"] for rec in rounds if rec.get("peak_mem_bytes") is not None]
    return {
        **first,
        "samples_ms": samples,
        "latency_ms": stats.__dict__,
        "timing": {**(first.get("timing") or {}), "rounds": n,
                   "round_medians_ms": [rec["latency_ms"]["median"] for rec in rounds], **_contention(rounds)},
        **{k: first[k] * scale for k in ("tflops", "gbps", "roofline_frac") if first.get(k) is not None},
        "peak_mem_bytes": max(peaks) if peaks else first.get("peak_mem_bytes"),
        "wall_s": sum(rec.get("wall_s") or 0.0 for rec in rounds),
        "flags": _merged_flags(first, stats, scale)
        + (["contended"] if any("contended" in (rec.get("flags") or []) for rec in rounds[1:])
           and "contended" not in (first.get("flags") or []) else []),
        **({"clocks": _merged_clocks(rounds)} if (first.get("clocks") or {}).get("available") else {}),
    }


def _kept(rec: dict) -> list[float]:
    """A round's samples its statistics used: without those left out as throttled (measure/clocks.py)."""
    clk = rec.get("clocks") or {}
    if not clk.get("excluded"):
        return list(rec["samples_ms"])
    drop = set(clk.get("throttled_samples") or [])
    return [s for i, s in enumerate(rec["samples_ms"]) if i not in drop]


def _merged_clocks(rounds: list[dict]) -> dict:
    """The first round's clocks with the throttled samples' indices into the pooled samples and the
    exclusions summed over the rounds."""
    offset, idx, excluded = 0, [], 0
    for rec in rounds:
        clk = rec.get("clocks") or {}
        idx += [offset + i for i in clk.get("throttled_samples") or []]
        excluded += clk.get("excluded") or 0
        offset += len(rec["samples_ms"])
    return {**rounds[0]["clocks"], "throttled_samples": idx, "excluded": excluded,
            "excluded_frac": excluded / offset if offset else 0.0, "readings": None, "note": "pooled over rounds"}


def _contention(rounds: list[dict]) -> dict:
    """timing.contention of the pooled record: every round's reason, once each (none: as the first's)."""
    why = list(dict.fromkeys(w for rec in rounds if (w := (rec.get("timing") or {}).get("contention"))))
    return {"contention": "; ".join(why)} if why else {}


def _merged_flags(first: dict, stats: Stats, scale: float) -> list[str]:
    """The first round's flags with the timing flags of the pooled samples (and above_roof of the
    rescaled roofline fraction); merge_rounds adds `contended` when any later round was."""
    from attnbench.core.results import ROOF_SLACK, timing_flags

    keep = [f for f in first.get("flags") or [] if f not in ("low_samples", "high_variance", "above_roof")]
    frac = first.get("roofline_frac")
    above = ["above_roof"] if frac is not None and frac * scale > ROOF_SLACK else []
    return timing_flags(stats.__dict__) + keep + above


class RoundJournal:
    """The finished rounds of cases not yet recorded, one JSON line each (see the module doc)."""

    def __init__(self, out: Path, rounds: int, resume: bool):
        self.path = Path(out).with_name(f".{Path(out).name}.rounds")
        self.rounds = rounds
        self.done: dict[str, list[dict]] = {}
        self._fd = -1
        if resume and rounds > 1 and self.path.exists():
            self._load()
        elif not resume and self.path.exists():  # the journal of an earlier run of this file
            self.path.unlink()

    def _load(self) -> None:
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
                cid, n, r, rec = row["case_id"], row["rounds"], row["round"], row["record"]
            except (ValueError, KeyError, TypeError):  # a line cut by kill -9
                continue
            have = self.done.get(cid, [])
            if n == self.rounds and r == len(have) and isinstance(rec, dict) and rec.get("status") == "ok":
                self.done[cid] = have + [rec]

    def add(self, case_id: str, record: dict) -> None:
        from attnbench.core.results import json_line
        from attnbench.core.safe_io import OutputError, signals_deferred, why

        have = self.done.setdefault(case_id, [])
        row = {"case_id": case_id, "rounds": self.rounds, "round": len(have), "record": record}
        data = json_line(row)
        with signals_deferred():  # the line on disk and `done` agree when a signal stops the run
            try:
                if self._fd < 0:
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                size = os.fstat(self._fd).st_size
                if os.write(self._fd, data) != len(data):
                    os.ftruncate(self._fd, size)
                    raise OSError(28, "short write")
                os.fsync(self._fd)
            except OSError as e:
                raise OutputError(f"cannot write the rounds journal '{self.path}': {why(e)}; the records "
                                  f"written so far are kept; free space and rerun with --resume", why(e)) from None
            have.append(record)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def finish(self) -> None:
        """Every case is recorded: the journal is no longer needed."""
        self.close()
        if self.rounds == 1 and not self.done:
            return  # a --rounds 1 resume leaves another run's journal alone
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
