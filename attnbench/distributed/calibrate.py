"""Calibrate the scaling model (cpmodel.py) from measured context-parallel records and check
its predictions against them. No torch here.

    α, β     least squares over every rank's Ulysses all-to-all time of every record:
             seconds = messages·α + bytes/β, messages = 4·(U−1) per call (blocking, so the time
             is all communication); one link for every group (one host: loopback).
    rate     per length, from the record's one-rank baseline (same threads per rank): the model's
             T1 is the measured single-device time.
    overlap  the share of a ring step's compute that hides its send, chosen on a grid (0, 0.1, …, 1)
             to minimise the mean |log(predicted / measured)| over the records that use a ring.
    contention  ranks × threads / cores (at least 1): ranks sharing a CPU's cores.

The check is honest only on a quiet machine: on a loaded one the measured times carry the other
processes' load, which the model does not know. Fitting α, β and overlap on the same records
the prediction is checked on makes the check optimistic for the communication part; the
compute part is not fitted to the distributed runs (it is the one-rank baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from attnbench.core.cp import Degrees
from attnbench.core.problem import ITEMSIZE
from attnbench.distributed.cpmodel import Link, Setting, Shape, predict, single_device_seconds


@dataclass(frozen=True)
class Check:
    strategy: str
    degrees: Degrees
    seq: int
    measured_s: float
    predicted_s: float

    @property
    def rel_error(self) -> float:
        return self.predicted_s / self.measured_s - 1.0


def _usable(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "ok" and (r.get("distributed") or {}).get("baseline_ms")
            and (r["distributed"].get("strategy") in ("ring", "ulysses", "hybrid"))]


def fit_alpha_beta(records: list[dict]) -> Link:
    """α (s per message) and β (bytes/s) from the all-to-all times of Ulysses and hybrid ranks."""
    rows, ys = [], []
    for r in _usable(records):
        d = r["distributed"]
        u = d["ulysses_degree"]
        if u < 2:
            continue
        for ms, nbytes in zip(d["per_rank"]["a2a_ms"], d["per_rank"]["a2a_bytes"]):
            rows.append([4 * (u - 1), nbytes])
            ys.append(ms / 1e3)
    if len(rows) < 2:
        raise ValueError("calibration needs all-to-all times from at least two ranks of ulysses or hybrid runs")
    (alpha, inv_beta), *_ = np.linalg.lstsq(np.array(rows, dtype=float), np.array(ys), rcond=None)
    alpha, inv_beta = max(float(alpha), 0.0), max(float(inv_beta), 1e-15)
    return Link("fitted (gloo, loopback)", 1.0 / inv_beta, alpha, "least squares over measured all-to-alls")


def shape_of(r: dict) -> Shape:
    return Shape(r["batch"], r["heads"], r["kv_heads"], r["head_dim"], ITEMSIZE[r["dtype"]], r["causal"])


def predict_record(r: dict, link: Link, overlap: float, cores: int) -> Check:
    d = r["distributed"]
    deg = Degrees(d["ulysses_degree"], d["ring_degree"])
    s = shape_of(r)
    rate = single_device_seconds(s, r["seq_q"], 1.0) / (d["baseline_ms"] / 1e3)
    threads = d.get("threads_per_rank") or 1
    st = Setting(rate=rate, intra=link, inter=link, gpus_per_node=10**9, overlap=overlap,
                 memory=math.inf, contention=max(1.0, deg.world * threads / cores))
    p = predict(s, r["seq_q"], d["strategy"], deg, st)
    return Check(d["strategy"], deg, r["seq_q"], r["latency_ms"]["median"] / 1e3, p.latency)


def calibrate(records: list[dict], cores: int) -> tuple[Link, float, list[Check]]:
    """The fitted link, the chosen overlap and the check of every usable record."""
    usable = _usable(records)
    link = fit_alpha_beta(usable)
    ringy = [r for r in usable if r["distributed"]["ring_degree"] > 1]

    def loss(ov: float) -> float:
        if not ringy:
            return 0.0
        return sum(abs(math.log(predict_record(r, link, ov, cores).predicted_s / (r["latency_ms"]["median"] / 1e3)))
                   for r in ringy) / len(ringy)

    overlap = min((i / 10 for i in range(11)), key=loss)
    return link, overlap, [predict_record(r, link, overlap, cores) for r in usable]


def with_link(st: Setting, link: Link) -> Setting:
    return replace(st, intra=link, inter=link)
