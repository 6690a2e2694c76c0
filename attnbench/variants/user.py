"""Backends from outside attnbench: a user's file (`--backend-file PATH.py`) or an installed
package's `attnbench.backends` entry point add backends to existing variants, through the same
contract the built-in ones use (variants/base.py `Backend`: build(problem, device) -> fn(q, k, v)).

The registration surface is one module-level name. A file defines

    from attnbench.api import Backend

    def build(problem, device):
        scale = problem.head_dim ** -0.5
        return lambda q, k, v: torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v

    BACKENDS = {"mha": [Backend(name="my-softmax", build=build)]}

(variant name -> a list of Backend). An entry point in the `attnbench.backends` group gives the
same thing: a module that defines BACKENDS, or the mapping itself (`mykernels = "pkg.mod:BACKENDS"`).
Each backend is recorded with its Source (the file's path and sha256, or the entry point), so a
results file says which kernel it timed, and is checked against the variant's oracle before any
timed sample (run/precheck.py).

Honest limits: a file runs with the full rights of the process that loads it (the CLI, then each
worker process, which imports it again by path): load only code you trust. A file that changes
while a run is under way is read again by a restarted worker; its records carry the sha256 the
worker saw.
"""

from __future__ import annotations

import hashlib
import re
import sys
import types
from collections.abc import Mapping
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from attnbench.core.errors import UsageError
from attnbench.variants import registry
from attnbench.variants.base import Backend, Source

GROUP = "attnbench.backends"
EXPECTED = 'expected BACKENDS = {"VARIANT": [Backend(name=..., build=...)]} (from attnbench.api import Backend)'
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # no ':' (peer:NAME and VARIANT:BACKEND use it)


def load(files: Iterable[str | Path] = (), installed: bool = True) -> tuple[Source, ...]:
    """Add the backends of every installed `attnbench.backends` entry point (unless
    installed=False), then of each file; returns their sources. Any mistake: UsageError, one line."""
    sources = list(load_entry_points()) if installed else []
    sources += [load_file(f) for f in files]
    return tuple(sources)


def load_or_reason(files: Iterable[str | Path]) -> str | None:
    """`load` in a process that runs cases (the worker, a Ray task), which starts with the built-in
    catalogue: None when loaded, else why not — a file that no longer loads makes each of its
    cases an error with that reason, not a dead worker."""
    try:
        load(files)
    except UsageError as e:
        return f"this process could not load the user backends: {e}"
    return None


def source_fields(variant: str, backend: str) -> dict[str, Any]:
    """{"backend_source": {kind, where, sha256}} for a backend added from outside attnbench, else {}
    (also for a backend the catalogue does not hold: a FlashInfer definition's own `reference`)."""
    b = next((b for b in registry.get(variant).backends if b.name == backend), None)
    return {"backend_source": b.source.as_dict()} if b is not None and b.source else {}


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_file(path: str | Path) -> Source:
    """Import the file at `path` (its own module, named after its content hash) and add its BACKENDS."""
    p = Path(path).expanduser()
    if p.suffix != ".py":
        raise UsageError(f"--backend-file '{path}': expected a Python file (PATH.py)")
    try:
        code = p.read_bytes()
    except OSError as e:
        raise UsageError(f"--backend-file '{path}': cannot be read ({e.strerror or e})") from None
    p = p.resolve()
    digest = hashlib.sha256(code).hexdigest()
    source = Source("file", str(p), digest)
    name = f"attnbench_user_{p.stem}_{digest[:12]}"
    module = types.ModuleType(name)
    module.__file__ = str(p)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        exec(compile(code, str(p), "exec"), module.__dict__)
    except BaseException as e:  # noqa: BLE001  (a user's code may raise anything, SystemExit included)
        sys.modules.pop(name, None)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise UsageError(f"--backend-file '{path}': failed to import: {_short(e, str(p))}") from None
    if not hasattr(module, "BACKENDS"):
        raise UsageError(f"--backend-file '{path}' defines no BACKENDS; {EXPECTED}")
    register(module.BACKENDS, source, f"--backend-file '{path}'")
    return source


def load_entry_points() -> list[Source]:
    """Add the backends of each installed entry point of the `attnbench.backends` group."""
    sources = []
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        label = f"entry point '{ep.name} = {ep.value}' ({GROUP})"
        try:
            obj = ep.load()
        except BaseException as e:  # noqa: BLE001  (an installed package's import may raise anything)
            if isinstance(e, KeyboardInterrupt):
                raise
            raise UsageError(f"{label}: failed to import: {_short(e)}") from None
        if isinstance(obj, types.ModuleType):
            if not hasattr(obj, "BACKENDS"):
                raise UsageError(f"{label}: module {obj.__name__} defines no BACKENDS; {EXPECTED}")
            file = getattr(obj, "__file__", None)
            obj = obj.BACKENDS
        else:
            file = getattr(sys.modules.get(ep.module), "__file__", None)
        source = Source("entry point", f"{ep.name} = {ep.value}", sha256_of(file) if file else None)
        register(obj, source, label)
        sources.append(source)
    return sources


def register(backends: Any, source: Source, label: str) -> None:
    """Check a BACKENDS mapping (variant -> list of Backend) and add it to the catalogue."""
    if not isinstance(backends, Mapping) or not backends:
        raise UsageError(f"{label}: BACKENDS is {_what(backends)}; {EXPECTED}")
    checked: dict[str, list[Backend]] = {}
    seen: set[str] = set()
    for variant, items in backends.items():
        if not isinstance(variant, str):
            raise UsageError(f"{label}: a BACKENDS key is {_what(variant)}; keys are variant names")
        try:
            target = registry.get(variant)
        except UsageError as e:
            raise UsageError(f"{label}: {e}") from None
        if target.distributed:
            raise UsageError(f"{label}: variant '{variant}' runs over several ranks (distributed/); backends "
                             "from outside attnbench are accepted for single-process variants only")
        if isinstance(items, Backend):
            items = [items]
        if not isinstance(items, (list, tuple)) or not items:
            raise UsageError(f"{label}: BACKENDS['{variant}'] is {_what(items)}; expected a list of Backend")
        for b in items:
            if not isinstance(b, Backend):
                raise UsageError(f"{label}: BACKENDS['{variant}'] holds {_what(b)}; expected Backend(name=..., "
                                 "build=...)")
            if not isinstance(b.name, str) or not _NAME.match(b.name):
                raise UsageError(f"{label}: backend name {b.name!r} is not accepted; accepted: letters, digits "
                                 "and . _ + - (no spaces, commas or colons)")
            if not callable(b.build):
                raise UsageError(f"{label}: backend '{b.name}': build is {_what(b.build)}; expected "
                                 "build(problem, device) -> fn(q, k, v)")
            if (variant, b.name) in seen:
                raise UsageError(f"{label}: backend '{b.name}' is given twice for variant '{variant}'")
            seen.add((variant, b.name))
        checked[variant] = [replace(b, source=source, test_only=False) for b in items]
    for variant, items in checked.items():  # all checked first: a mistake adds nothing
        registry.add_backends(variant, items)


def _what(obj: Any) -> str:
    if isinstance(obj, Mapping) and not obj:
        return "empty"
    if isinstance(obj, (list, tuple)) and not obj:
        return "an empty list"
    return f"a {type(obj).__name__}"


def _short(e: BaseException, file: str | None = None) -> str:
    """The exception in one line, with the line of the user's file it came from when known."""
    tb, line = e.__traceback__, None
    while tb is not None:
        line = tb.tb_lineno if tb.tb_frame.f_code.co_filename == file else line
        tb = tb.tb_next
    if isinstance(e, SyntaxError):
        line = e.lineno
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}{': ' + text if text else ''}{f' (line {line})' if line else ''}"
