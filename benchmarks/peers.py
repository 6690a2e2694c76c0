"""Run suites/peers.toml (or read a finished run) and print the "Against the peers" table.

    python benchmarks/peers.py                  # runs the suite: results/peers-<time>.jsonl
    python benchmarks/peers.py results/x.jsonl  # reads a finished run

Every figure is a ratio measured within one run; no absolute time is compared to a constant.
"""

import sys
import time
from pathlib import Path

from attnbench.cli import main
from attnbench.core import results
from attnbench.report.peers import markdown, peer_targets


def run_suite() -> Path:
    Path("results").mkdir(exist_ok=True)
    out = Path("results") / time.strftime("peers-%Y%m%d-%H%M%S.jsonl")
    rc = main(["run", "--suite", "peers", "--out", str(out)])
    if rc not in (0, 130):
        sys.exit(rc)
    return out


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else run_suite()
    header, records = results.read(path)
    print(markdown(peer_targets(records, header.get("refs"))))
