"""From `attnbench run`'s options to what a run needs: the sweeps, the settings, the scope and the
record hook. The CLI parses and prints; this module decides what is run and how.

Order of precedence everywhere: an option given, then the suite's value, then the default
(run/settings.py, run/plan.py `Sweep`). A model preset (`--model`, `--model-config`) brings its
own cases (run/models.py); with none of --suite, an axis or a model, the quick suite runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from attnbench.core.errors import UsageError
from attnbench.run.session import Scope
from attnbench.run.settings import RunSettings, build


@dataclass(frozen=True)
class Prepared:
    sweeps: list
    settings: RunSettings
    scope: Scope
    annotate: Callable[[dict], dict] | None
    models: list[dict] | None = None  # the dry run's `models` (run/models.plan_entries); None without a model


def prepare(given: dict[str, Any], params: list[str] | None, suite: str | None, cli_settings: dict[str, Any],
            scope: Scope, model: str | None = None, model_config: Path | None = None,
            layers: int | None = None) -> Prepared:
    """`given`: the sweep axes given on the command line (cli/options.py shape_axes, variants,
    backends); `params`: the --param items; `cli_settings`: the run settings given (None: not)."""
    from attnbench.run.models import annotator
    from attnbench.run.plan import load_suite, make_sweep, parse_param_items

    settings = build(None, None, **cli_settings)  # the options' own mistakes first, before any work
    cli_settings = {**cli_settings, "backend_files": load_backends(settings.backend_files)}
    given = dict(given)
    if params:
        given["params"] = parse_param_items(params)
    plan = None
    if model is not None or model_config is not None:
        from attnbench.run.models import model_plan, resolve_models
        from attnbench.run.session import resolve_device

        plan = model_plan(resolve_models(model, model_config, layers), given | {"suite": suite},
                          resolve_device(settings.device))
        scope = replace(scope, extra=tuple(plan.cases))
    elif layers is not None and layers < 1:
        raise UsageError(f"--layers must be at least 1 (got {layers})")
    if suite is None and not given and plan is None:
        suite = "quick"
    if plan is not None:
        sweeps = []
    elif suite is not None:
        sweeps, meta = load_suite(suite, **given)
        settings = build(meta, suite, **cli_settings)
    else:
        sweeps = [make_sweep(**given)]
    models = None
    if plan is not None:
        from attnbench.run.models import plan_entries

        models = plan_entries(list(plan.specs), plan.cases)
    return Prepared(sweeps, settings, scope, annotator(plan, layers), models)


def load_backends(files: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Add the backends of the installed `attnbench.backends` entry points and of each user file
    (variants/user.py) before any sweep names them; returns the files' absolute paths, which the
    settings hand to each worker (it imports them again) and record in the header."""
    from attnbench.variants.user import load

    return tuple(s.where for s in load(files or ()) if s.kind == "file")


def make_scope(profile_dir: Path | None, world_size: int | None, executor: str, address: str | None,
               shard: str | None) -> Scope:
    """run's scale-out options as a Scope, each checked on its own (one line per mistake)."""
    from attnbench.run.executors import parse_shard

    if profile_dir is not None and not profile_dir.parent.exists():
        raise UsageError(f"--profile-dir '{profile_dir}': directory '{profile_dir.parent}' does not exist")
    if profile_dir is not None and profile_dir.exists() and not profile_dir.is_dir():
        raise UsageError(f"--profile-dir '{profile_dir}' is a file; give a directory (created if missing)")
    if world_size is not None and world_size < 1:
        raise UsageError(f"--world-size must be at least 1 (got {world_size})")
    if executor not in ("local", "ray"):
        raise UsageError(f"unknown --executor '{executor}'; accepted: local, ray")
    if address is not None and executor != "ray":
        raise UsageError("--address goes with --executor ray")
    return Scope(shard=parse_shard(shard) if shard is not None else None, world_size=world_size,
                 executor=executor, address=address)


def prepare_trace(req, given: dict[str, Any], cli_settings: dict[str, Any], scope: Scope) -> tuple[Prepared, Any]:
    """`run --definition`: the definition's cases (run/trace_plan.py) as the scope's extra cases and
    its record hook; returns (Prepared, the TracePlan). `given` holds every sweep option given
    (the shape axes, backends, and suite/model/params when given: refused with the definition)."""
    from attnbench.run.session import resolve_device
    from attnbench.run.trace_plan import plan as trace_plan

    settings = build(None, None, **cli_settings)
    tp = trace_plan(req, given, resolve_device(settings.device))
    return Prepared([], settings, replace(scope, extra=tp.cases), tp.annotate), tp
