"""Every option the commands share, declared once: one name, one meaning, one type and metavar.

A command takes an option by naming its alias here (``seq: Seq = None``); docs/cli.md lists
every option with the commands that take it, and tests/cli/test_vocabulary.py walks the command
tree to check that an option name has one metavar, type and meaning (the first sentence of its
help) everywhere, and that docs/cli.md lists it.

Shape options are lists everywhere (repeatable or comma-separated, as in `run`): a command that
measures one case (`profile`, `frontier`'s fixed axes) refuses more than one value with one
line. Their defaults are the sweep's (run/plan.py `Sweep`): None here means "not given".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from attnbench.core.errors import UsageError

WHAT, SHAPES, MEASURE, OUTPUT, SCALE = "What to run", "Shapes", "Measurement", "Output", "Scale-out"

# ---------------------------------------------------------------- what to run
Variants = Annotated[Optional[str], typer.Option(
    "--variants", metavar="LIST", rich_help_panel=WHAT,
    help="Comma-separated variants (see `attnbench list`).")]
Backends = Annotated[Optional[str], typer.Option(
    "--backends", metavar="LIST", rich_help_panel=WHAT,
    help="Comma-separated backends; default: every backend of each variant available here.")]
BackendFile = Annotated[Optional[list[Path]], typer.Option(
    "--backend-file", metavar="PATH.py", rich_help_panel=WHAT,
    help="A Python file adding your own backends to existing variants (repeatable): it defines BACKENDS = "
         "{\"mha\": [Backend(name=..., build=...)]} (docs/ci.md). Each is checked against the variant's "
         "oracle before it is timed; a wrong one is recorded `wrong`, untimed.")]
Suite = Annotated[Optional[str], typer.Option(
    "--suite", metavar="NAME|FILE", rich_help_panel=WHAT,
    help="A suite: a name (quick, ci, ...) or a .toml path; its axes and settings, options given win.")]
Mode = Annotated[Optional[list[str]], typer.Option(
    "--mode", metavar="MODES", rich_help_panel=WHAT,
    help="fwd | bwd | fwd+bwd | decode (repeatable or comma-separated).")]
Param = Annotated[Optional[list[str]], typer.Option(
    "--param", metavar="NAME=VALUE", rich_help_panel=WHAT,
    help="Variant parameter (repeatable), e.g. --param window=512; applies to the variants that declare it "
         "(see `attnbench list`).")]
Model = Annotated[Optional[str], typer.Option(
    "--model", metavar="LIST", rich_help_panel=WHAT,
    help="Model presets (comma-separated, see `attnbench list --models`): their heads, KV heads, head dim, "
         "dtype, causal mask and attention pattern; shape options given replace them, --seq stays yours.")]
Layers = Annotated[Optional[int], typer.Option(
    "--layers", metavar="N", rich_help_panel=SHAPES,
    help="Layers for the KV-cache arithmetic (default: the model's; without a model: the measured attention × N).")]

# ---------------------------------------------------------------- shapes
Seq = Annotated[Optional[str], typer.Option(
    "--seq", metavar="LENGTHS", rich_help_panel=SHAPES,
    help="Lengths: 1k..64k doubles, 1k,3k,8k lists, k = 1024 (default 1k); in decode mode the KV-cache length.")]
KvSeq = Annotated[Optional[str], typer.Option(
    "--kv-seq", metavar="LENGTHS", rich_help_panel=SHAPES,
    help="Key/value lengths (cross attention); the --seq grammar.")]
Batch = Annotated[Optional[list[str]], typer.Option(
    "--batch", metavar="N", rich_help_panel=SHAPES, help="Batch size (repeatable or comma-separated; default 1).")]
Heads = Annotated[Optional[list[str]], typer.Option(
    "--heads", metavar="N", rich_help_panel=SHAPES, help="Query heads (repeatable or comma-separated; default 8).")]
KvHeads = Annotated[Optional[list[str]], typer.Option(
    "--kv-heads", metavar="N", rich_help_panel=SHAPES,
    help="Key/value heads; must divide the query heads (default: the variant's choice).")]
KvGroups = Annotated[Optional[list[str]], typer.Option(
    "--kv-groups", metavar="N", rich_help_panel=SHAPES,
    help="Query heads per key/value head (instead of --kv-heads).")]
HeadDim = Annotated[Optional[list[str]], typer.Option(
    "--head-dim", metavar="N", rich_help_panel=SHAPES,
    help="Head dimension (repeatable or comma-separated; default 64).")]
Dtype = Annotated[Optional[str], typer.Option(
    "--dtype", metavar="LIST", rich_help_panel=SHAPES,
    help="float32 | float16 | bfloat16 (comma-separated for several; default float32).")]
Causal = Annotated[Optional[bool], typer.Option(
    "--causal/--no-causal", rich_help_panel=SHAPES, help="Causal mask (bottom-right aligned; default off).")]

# ---------------------------------------------------------------- measurement
Device = Annotated[str, typer.Option(
    "--device", metavar="DEVICE", rich_help_panel=MEASURE, help="auto | cpu | cuda (auto: cuda when visible).")]
Threads = Annotated[Optional[int], typer.Option(
    "--threads", metavar="N", rich_help_panel=MEASURE,
    help="CPU threads for torch in each measuring process (recorded in the environment: compare runs with the "
         "same number; 1 is far steadier on a shared CPU); default: torch's.")]
TimeBudget = Annotated[Optional[float], typer.Option(
    "--time-budget", metavar="SECONDS", rich_help_panel=MEASURE,
    help="Seconds of measurement per case (default 30, or the suite's); setup and compilation get 60 s more.")]
Rounds = Annotated[Optional[int], typer.Option(
    "--rounds", metavar="N", rich_help_panel=MEASURE,
    help="Measure every case this many times, interleaved, pooling the samples: averages out a shared machine's "
         "drift.")]
MemoryBudget = Annotated[Optional[str], typer.Option(
    "--memory-budget", metavar="SIZE", rich_help_panel=MEASURE,
    help="Largest peak memory a case may use, e.g. 8GiB, 512MiB (K, M, G, T: powers of 1024).")]
AllowEnvMismatch = Annotated[bool, typer.Option(
    "--allow-env-mismatch", help="Combine results measured on different environments (device, torch, threads...) "
                                 "anyway.")]

WorldSize = Annotated[Optional[int], typer.Option(
    "--world-size", metavar="N", rich_help_panel=SCALE,
    help="Ranks of distributed variants (ring), launched locally; under torchrun its WORLD_SIZE.")]

# ---------------------------------------------------------------- output
Out = Annotated[Optional[Path], typer.Option(
    "--out", metavar="PATH", rich_help_panel=OUTPUT,
    help="Where the command's result goes (a file or a folder: see the command's description).")]
Force = Annotated[bool, typer.Option(
    "--force", rich_help_panel=OUTPUT, help="Replace an existing --out (and --csv, --report).")]
Format = Annotated[Optional[str], typer.Option(
    "--format", metavar="FORMAT", rich_help_panel=OUTPUT,
    help="The output's format: on stdout table (the default) | json, and per command markdown, csv or junit; "
         "export's folder: flashinfer-trace.")]
DryRun = Annotated[bool, typer.Option(
    "--dry-run", rich_help_panel=WHAT,
    help="Print the plan and exit, measuring nothing (with --json, as JSON).")]
Json = Annotated[bool, typer.Option(
    "--json", rich_help_panel=OUTPUT, help="Print JSON instead of a table (= --format json).")]
Quiet = Annotated[bool, typer.Option(
    "--quiet", "-q", rich_help_panel=OUTPUT, help="Print only errors and the results file's path.")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", rich_help_panel=OUTPUT,
    help="Per-case details: the plan case by case, and how each case was measured (samples, stop rule, setup, "
         "first call, kernel, error).")]
RelativeTo = Annotated[Optional[str], typer.Option(
    "--relative-to", metavar="VARIANT:BACKEND",
    help="The series speedups and crossovers are relative to (default mha:eager).")]


def output_format(fmt: str | None, json_out: bool, accepted: tuple[str, ...] = ("table", "json")) -> str:
    """The stdout format of a command: --format, --json (= --format json), else table."""
    if json_out and fmt not in (None, "json"):
        raise UsageError(f"--json and --format {fmt} disagree; give one")
    chosen = "json" if json_out else fmt or "table"
    if chosen not in accepted:
        raise UsageError(f"unknown --format '{chosen}'; accepted: {', '.join(accepted)}")
    return chosen


def shape_axes(seq=None, kv_seq=None, batch=None, heads=None, kv_heads=None, kv_groups=None, head_dim=None,
               dtype=None, causal=None, mode=None) -> dict:
    """The shape options given (not None, not empty), as sweep axes (run/plan.py make_sweep)."""
    axes = {"seq": seq, "kv_seq": kv_seq, "batch": batch, "heads": heads, "kv_heads": kv_heads,
            "kv_groups": kv_groups, "head_dim": head_dim, "dtype": dtype, "causal": causal, "modes": mode}
    return {k: v for k, v in axes.items() if v not in (None, [])}


def one_each(sweep, command: str, axes: tuple[str, ...]) -> dict:
    """The single value of each of `axes` of a sweep (a command that runs one case per
    variant/backend); more than one is a usage error naming the option."""
    out = {}
    for axis in axes:
        values = getattr(sweep, axis)
        if len(values) > 1:
            option = "--mode" if axis == "modes" else "--" + axis.replace("_", "-")
            raise UsageError(f"{command} takes one {option} value (got {', '.join(map(str, values))})")
        out[axis] = values[0] if values else None
    return out


# ---------------------------------------------------------------- KV-cache layout (decode and prefill)
KvLayout = Annotated[Optional[list[str]], typer.Option(
    "--kv-layout", metavar="LIST", rich_help_panel=SHAPES,
    help="KV-cache layout: paged (pages + a block table) | dense (padded), comma-separated or repeated for both; "
         "mha, gqa and mqa then run on the paged-KV implementation (variant paged).")]
PageSize = Annotated[Optional[int], typer.Option(
    "--page-size", metavar="N", rich_help_panel=SHAPES, help="Tokens per KV page (default 16, vLLM's).")]
SeqDist = Annotated[Optional[str], typer.Option(
    "--seq-dist", metavar="DIST", rich_help_panel=SHAPES,
    help="Sequence lengths of a ragged batch: fixed (all --seq) | uniform:1k..16k (seeded draws) | 1k,3k,8k "
         "(cycled over the batch).")]

BatchSpec = Annotated[Optional[list[str]], typer.Option(
    "--batch-spec", metavar="SPEC[,SPEC...]", rich_help_panel=SHAPES,
    help="Mixed batches (prefill chunks and decodes in one call) in vLLM's notation, one case per spec. "
         "Segments <COUNT>q<Q>s<S> joined by _: COUNT requests of Q new query tokens over an S-token KV (COUNT "
         "defaults to 1, s<S> to S = Q; a k after a number multiplies it by 1024); 2q2k_32q1s1k = 2 prefills of "
         "2048 + 32 decodes over 1024. Runs the paged variant; replaces --batch, --seq, --kv-seq and --seq-dist.")]


def kv_layout_axes(kv_layout: list[str] | None, page_size: int | None, seq_dist: str | None) -> dict:
    """--kv-layout, --page-size, --seq-dist as sweep axes (run/plan.py make_sweep checks them)."""
    axes = {"kv_layout": kv_layout or None, "page_size": page_size, "seq_dist": seq_dist}
    return {k: v for k, v in axes.items() if v is not None}


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.I)


def parse_size(text: str) -> int:
    """'16GiB', '8G', '512MiB', '1.5GB' -> bytes (powers of 1024 for all suffixes)."""
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"bad size '{text}'; accepted: a number with K, M, G or T (e.g. 8GiB, 512MiB)")
    power = "KMGT".find(m.group(2).upper()) + 1 if m.group(2) else 0
    value = float(m.group(1)) * 1024**power
    if value <= 0:
        raise UsageError(f"bad size '{text}'; it must be positive")
    return int(value)


def one_int(values: list[str] | None, option: str, default: int) -> int:
    """A command that takes one whole number for a list-valued shape option (e.g. --batch)."""
    if not values:
        return default
    items = [x.strip() for v in values for x in v.split(",") if x.strip()]
    if len(items) != 1 or not items[0].isdigit() or int(items[0]) < 1:
        raise UsageError(f"{option} takes one whole number >= 1 here (got {', '.join(items) or 'nothing'})")
    return int(items[0])


def check_out(out: Path | None, force: bool, kind: str = "file") -> None:
    """An --out file that can be written: its folder exists, it is not a folder, and it does not
    exist unless --force. One line naming what is wrong."""
    if out is None:
        return
    if out.is_dir():
        raise UsageError(f"--out '{out}' is a directory; give a {kind} path inside it")
    if not out.parent.exists():
        raise UsageError(f"cannot write '{out}': directory '{out.parent}' does not exist")
    if out.is_file() and not force:  # a device or a pipe (/dev/stdout) is written in place
        raise UsageError(f"'{out}' already exists; add --force to overwrite it")
