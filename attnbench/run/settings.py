"""How a run measures: one typed, frozen settings object, built once and handed down.

`RunSettings` holds what decides how every case of a run is measured (not which cases run: that
is the sweeps'). It is built by :func:`build` from three layers, later ones winning: the
defaults below, a suite file's top-level keys, the command line. Every command that measures a
suite (`run`, `gate`, `baseline save`, `ab` through `run --suite`, `run --dry-run`'s plan,
`frontier`) builds it the same way, so a suite measures the same whichever command runs it; the
results header records it (`settings`, see :meth:`RunSettings.header`).

`SETTING_KEYS` is the one list of a suite file's setting keys, and :func:`build` their one
validation (a bad value: one UsageError line naming where it came from). Torch-free: the device
stays a name here (auto | cpu | cuda); run/session.py resolves it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from attnbench.core.errors import UsageError, did_you_mean

DEVICES = ("auto", "cpu", "cuda")
INPUTS = ("randn", "peaked")  # measure/inputs.py (kept torch-free here; a test checks they agree)


@dataclass(frozen=True)
class RunSettings:
    """How each case is measured. `None` means "the measuring code's own default"."""

    time_budget: float = 30.0  # seconds of measurement per case (setup and compilation get more)
    sample_time: float | None = None  # cap on the timed samples' seconds per case (None: the policy's 2 s)
    reference_limit: int | None = None  # score elements of the fp64 oracle (None: measure.accuracy.REFERENCE_LIMIT)
    rounds: int = 1  # each case measured this many times, interleaved (run/rounds.py)
    inputs: str = "randn"  # measure/inputs.py: randn | peaked
    threads: int | None = None  # torch's CPU threads (None: torch's default, recorded as resolved)
    device: str = "auto"  # auto | cpu | cuda
    keep_throttled: bool = False  # keep samples taken while the GPU throttled in the median (measure/clocks.py)
    cuda_graph: bool = False  # time replays of a captured CUDA graph (measure/graphs.py)
    backend_files: tuple[str, ...] = ()  # user backend files (variants/user.py), loaded here and in each worker

    def header(self) -> dict[str, Any]:
        """The results header's `settings` object (device as resolved by the caller); backend_files
        only when given, so the header of a run without user backends is unchanged."""
        d = asdict(self)
        if not self.backend_files:
            d.pop("backend_files")
        return d

    def with_(self, **changes: Any) -> RunSettings:
        """A copy with `changes` applied and validated (e.g. the threads or device resolved)."""
        return _checked(replace(self, **changes), "")


CLI_ONLY = ("backend_files",)  # code to import is named on the command line, never by a suite file
SETTING_KEYS = tuple(f.name for f in fields(RunSettings) if f.name not in CLI_ONLY)
SUITE_KEYS = ("description", "sweep", *SETTING_KEYS)
_OPTION = {k: "--" + k.replace("_", "-") for k in SETTING_KEYS} | {"backend_files": "--backend-file"}


def build(suite: dict[str, Any] | None = None, suite_name: str | None = None, **given: Any) -> RunSettings:
    """Defaults, then the suite's settings (`suite`: a suite file's top level), then the
    command line's (`given`: options not given are None). Raises UsageError, one line, naming
    the suite key or the option that is wrong."""
    unknown = set(given) - set(SETTING_KEYS) - set(CLI_ONLY)
    if unknown:
        raise TypeError(f"not a run setting: {', '.join(sorted(unknown))}")
    base = RunSettings()
    if suite:
        picked = {k: v for k, v in suite.items() if k in SETTING_KEYS}
        base = _checked(replace(base, **picked), f"suite '{suite_name}': ", suite_keys=True)
    cli = {k: v for k, v in given.items() if v is not None}
    return _checked(replace(base, **cli), "")


def check_suite_keys(data: dict[str, Any], suite_name: str) -> None:
    """A suite file's top level has only SUITE_KEYS (the one check of its key names)."""
    for key in sorted(set(data) - set(SUITE_KEYS)):
        raise UsageError(
            f"suite '{suite_name}': unknown key '{key}'{did_you_mean(key, SUITE_KEYS)}; "
            f"accepted: {', '.join(sorted(SUITE_KEYS))}"
        )


def _checked(s: RunSettings, where: str, suite_keys: bool = False) -> RunSettings:
    """`s` with every field's type and range checked; the first wrong one raises."""
    name = (lambda k: k) if suite_keys else (lambda k: _OPTION[k])  # noqa: E731

    def bad(key: str, value: Any, accepted: str) -> UsageError:
        return UsageError(f"{where}{name(key)} = {value!r} is not accepted; accepted: {accepted}")

    if not _number(s.time_budget) or not 0 < s.time_budget <= 86400:
        raise bad("time_budget", s.time_budget, "finite positive seconds, at most 86400")
    if s.sample_time is not None and (not _number(s.sample_time) or s.sample_time <= 0):
        raise bad("sample_time", s.sample_time, "a positive number of seconds")
    if s.reference_limit is not None and (not _integer(s.reference_limit) or s.reference_limit < 0):
        raise bad("reference_limit", s.reference_limit, "a whole number of score elements >= 0")
    if not _integer(s.rounds) or not 1 <= s.rounds <= 1000:
        raise bad("rounds", s.rounds, "an integer, at least 1 (at most 1000)")
    if s.inputs not in INPUTS:
        raise bad("inputs", s.inputs, " | ".join(INPUTS))
    if s.threads is not None and (not _integer(s.threads) or s.threads < 1):
        raise bad("threads", s.threads, "an integer, at least 1")
    if not isinstance(s.backend_files, (tuple, list)) or not all(isinstance(f, str) for f in s.backend_files):
        raise bad("backend_files", s.backend_files, "paths of Python files")
    for flag in ("keep_throttled", "cuda_graph"):
        if not isinstance(getattr(s, flag), bool):
            raise bad(flag, getattr(s, flag), "true | false")
    if not isinstance(s.device, str) or s.device.strip().lower() not in DEVICES:
        raise UsageError(f"{where}unknown device {s.device!r} ({name('device')}); accepted: {', '.join(DEVICES)}")
    return replace(s, time_budget=float(s.time_budget), device=s.device.strip().lower(),
                   sample_time=None if s.sample_time is None else float(s.sample_time),
                   backend_files=tuple(s.backend_files))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
