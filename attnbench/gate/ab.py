"""Same-job A/B: a git revision against the working tree, on the same machine, interleaved.

The revision's files are exported with `git archive` (read-only for the repository: no
worktree is registered, nothing to clean up if the job is killed) into a temporary directory,
laid out as an importable package by the revision's own [tool.setuptools.package-dir]
(attnbench.kernels <- kernels/, ...). Each round runs `python -m attnbench run --suite S` once
for each side, in an order shuffled per round: the revision with PYTHONPATH (and the working
directory) at the export, so that revision's code is imported — the worker processes inherit
the path — and the working tree with the attnbench this command itself runs from (the editable
install of the checkout). Each side's samples are merged across rounds, then compared.

Why: on a shared runner the machine's speed drifts between jobs by more than the effects
sought; interleaving puts both sides under the same drift. Limits: drift within one run of
the suite is still noise; each round costs two suite runs (plus ~10 s of start-up each).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tomllib

from attnbench.core.errors import UsageError
from attnbench.gate.sides import Run, load_run


class RunFailed(RuntimeError):
    """A side's benchmark run failed (the message has its stderr tail)."""


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise UsageError(f"git {' '.join(args)} failed in '{repo}': {' '.join(out.stderr.split())[:300]}")
    return out.stdout.strip()


def repo_root(start: Path) -> Path:
    return Path(_git(start, "rev-parse", "--show-toplevel"))


def resolve_rev(repo: Path, rev: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise UsageError(
            f"--ref '{rev}' is not a commit of '{repo}' (in a shallow CI clone, fetch it first: "
            "git fetch --depth=1 origin REV)"
        )
    return out.stdout.strip()


def export_rev(repo: Path, sha: str, dest: Path) -> Path:
    """The revision's tree under dest/, with package-dir mappings linked into the package."""
    tar = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", sha], capture_output=True)
    if tar.returncode != 0:
        raise UsageError(f"git archive {sha[:12]} failed: {tar.stderr.decode(errors='replace')[:300]}")
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as tf:
        tf.extractall(dest, filter="data")
    if not (dest / "attnbench" / "__init__.py").exists():
        raise UsageError(f"revision {sha[:12]} has no attnbench/ package; choose a later --ref")
    mapping = {}
    pyproject = dest / "pyproject.toml"
    if pyproject.exists():
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        mapping = data.get("tool", {}).get("setuptools", {}).get("package-dir", {}) or {}
    for pkg, src in mapping.items():
        parts = pkg.split(".")
        if parts[0] != "attnbench" or len(parts) != 2:
            continue
        link = dest / "attnbench" / parts[1]
        if not link.exists() and (dest / src).is_dir():
            link.symlink_to(Path("..") / src, target_is_directory=True)
    return dest


# An editable install (setuptools' finder) resolves any attnbench.* module the export lacks from
# the checkout, silently mixing two revisions. This sitecustomize, first on the revision side's
# PYTHONPATH, runs at the start of every process there (the spawned workers too) and drops that
# finder, then runs any sitecustomize it shadows.
_SITECUSTOMIZE = """\
import importlib.machinery, os, sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not str(getattr(f, "__module__", "")).startswith("__editable___attnbench")]
_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if p and os.path.abspath(p) != _here])
if _spec is not None and _spec.loader is not None:
    _spec.loader.exec_module(type(sys)("_shadowed_sitecustomize"))
"""


def write_boot(boot: Path) -> Path:
    boot.mkdir(parents=True, exist_ok=True)
    (boot / "sitecustomize.py").write_text(_SITECUSTOMIZE, encoding="utf-8")
    return boot


def side_env(pythonpath: list[Path] | None) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    return env


_CHECK = (
    "import os, sys, attnbench.cli\n"
    "bad = [m.__file__ for n, m in list(sys.modules.items()) if n.split('.')[0] == 'attnbench'\n"
    "       and getattr(m, '__file__', None) and not os.path.realpath(m.__file__).startswith(sys.argv[1])]\n"
    "print('\\n'.join(bad))"
)


def check_import(export: Path, pythonpath: list[Path]) -> None:
    """Every attnbench module the revision's CLI imports must come from the export."""
    root = str(export.resolve())
    out = subprocess.run(
        [sys.executable, "-c", _CHECK, root], cwd=export, env=side_env(pythonpath), capture_output=True, text=True
    )
    if out.returncode != 0 or out.stdout.strip():
        why = out.stdout.strip().replace("\n", ", ") or " ".join(out.stderr.split())[-300:]
        raise UsageError(f"the exported revision does not import cleanly from {export}: {why}")


@dataclass(frozen=True)
class Side:
    name: str  # "ref" | "cur"
    label: str  # e.g. "HEAD (1a2b3c4d5e6f)" or "working tree"
    cwd: Path
    pythonpath: list[Path] | None
    extra_env: tuple[tuple[str, str], ...] = ()  # e.g. a benchmark's injected delay on one side
    backend_files: tuple[Path, ...] = ()  # user backend files this side's runs load (--backend-file)


@dataclass(frozen=True)
class Rounds:
    """How to run: suite runs per side, where, and the order's random generator."""

    device: str
    threads: int | None
    runs_dir: Path
    rng: random.Random
    log: Callable[[str], None]


def run_side(side: Side, suite: Path, out: Path, how: Rounds) -> Run:
    cmd = [
        sys.executable,
        "-m",
        "attnbench",
        "run",
        "--suite",
        str(suite),
        "--out",
        str(out),
        "--force",
        "--device",
        how.device,
        *(["--threads", str(how.threads)] if how.threads else []),
        *[arg for f in side.backend_files for arg in ("--backend-file", str(f))],
    ]
    t0 = time.perf_counter()
    env = side_env(side.pythonpath) | dict(side.extra_env)
    proc = subprocess.run(cmd, cwd=side.cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.split())[-400:]
        raise RunFailed(f"the {side.label} run failed (exit {proc.returncode}): {tail}")
    how.log(f"  {side.label}: {time.perf_counter() - t0:.0f} s → {out}")
    return load_run(out)


def interleave(sides: list[Side], suite: Path, rounds: int, how: Rounds, tag: str = "") -> dict[str, list[Run]]:
    """`rounds` rounds, each running every side once in a freshly shuffled order."""
    runs: dict[str, list[Run]] = {s.name: [] for s in sides}
    for rnd in range(1, rounds + 1):
        order = sides[:]
        how.rng.shuffle(order)
        how.log(f"{tag}round {rnd}/{rounds}: {' then '.join(s.label for s in order)}")
        for s in order:
            runs[s.name].append(run_side(s, suite, how.runs_dir / f"{tag}{s.name}-{rnd}.jsonl", how))
    return runs


@contextlib.contextmanager
def revision_sides(repo: Path, rev: str, backend_files: tuple[Path, ...] = ()):
    """[the revision's side, the working tree's side], the revision exported for the duration.
    `backend_files`: user backend files; one inside the repository is taken from each side's own
    tree (the revision's version of it against the working tree's: an A/B of the kernel), one
    outside it is the same file on both sides."""
    sha = resolve_rev(repo, rev)
    with tempfile.TemporaryDirectory(prefix="attnbench-ab-") as tmp:
        export = export_rev(repo, sha, Path(tmp) / "src")
        path = [export, write_boot(Path(tmp) / "boot")]
        check_import(export, path)
        cur = tuple(Path(f).resolve() for f in backend_files)
        ref = tuple(in_export(f, repo, export, rev) for f in cur)
        yield [Side("ref", f"{rev} ({sha[:12]})", export, path, backend_files=ref),
               Side("cur", "working tree", Path.cwd(), None, backend_files=cur)]


def in_export(file: Path, repo: Path, export: Path, rev: str) -> Path:
    """The revision's version of a file inside the repository (the file itself when outside)."""
    try:
        rel = file.relative_to(repo.resolve())
    except ValueError:
        return file
    if not (export / rel).is_file():
        raise UsageError(f"--backend-file '{rel}' is not in revision {rev}; commit it there, or keep it outside "
                         "the repository to run the same file on both sides")
    return export / rel
