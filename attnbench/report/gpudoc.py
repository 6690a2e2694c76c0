"""Splice a reference run's report into docs/gpu.md: the text between the markers
`<!-- reference-run:begin -->` and `<!-- reference-run:end -->` becomes the run's provenance
(GPU, driver, torch, date, the results file) and its `attnbench report` (report.md, with the
chart links made relative to docs/). Everything outside the markers is kept as written.

    python -m attnbench.report.gpudoc results/reference/<gpu>-<date>.jsonl docs/gpu-reference docs/gpu.md

Exit code 2 with one line when the markers are missing or a file cannot be read.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

BEGIN, END = "<!-- reference-run:begin -->", "<!-- reference-run:end -->"


def section(results: Path, report_dir: Path, doc: Path) -> str:
    from attnbench.core.results import read

    header, records = read(results)
    env = header.get("env") or {}
    rel = Path(os.path.relpath(report_dir, doc.parent)).as_posix()
    body = (report_dir / "report.md").read_text()
    body = re.sub(r"\]\((?!https?:|/|#)([^)]+)\)", lambda m: f"]({rel}/{m.group(1)})", body)
    body = re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M)  # one level below the doc's own headings
    ok = sum(r.get("status") == "ok" for r in records)
    lines = [
        f"Reference run `{results.as_posix()}`: {env.get('device_name')}, driver {env.get('driver')}, "
        f"torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, "
        f"created {header.get('created')}; "
        f"{ok} of {len(records)} cases measured. Every GPU figure below comes from that file; commit it "
        "with this page.",
        "",
        body.strip(),
    ]
    return "\n".join(lines)


def splice(doc_text: str, new: str) -> str:
    if BEGIN not in doc_text or END not in doc_text:
        raise ValueError(f"the markers {BEGIN} and {END} are missing")
    head, rest = doc_text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{new}\n{END}{tail}"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m attnbench.report.gpudoc RESULTS.jsonl REPORT_DIR DOC.md", file=sys.stderr)
        return 2
    results, report_dir, doc = Path(argv[0]), Path(argv[1]), Path(argv[2])
    try:
        doc.write_text(splice(doc.read_text(), section(results, report_dir, doc)))
    except (OSError, ValueError) as e:
        print(f"error: {doc}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
