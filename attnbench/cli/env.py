"""`attnbench env`: the environment a result depends on."""

from __future__ import annotations

import json

from rich.console import Console

from attnbench.cli import options as O


def env(fmt: O.Format = None, json_out: O.Json = False, device: O.Device = "auto") -> None:
    """The environment a result depends on (versions, device, threads, NVML).

    Examples:

      attnbench env

      attnbench env --json > env.json

      attnbench --version
    """
    from attnbench.measure.env import capture
    from attnbench.run.session import resolve_device

    fmt = O.output_format(fmt, json_out)
    e = capture(resolve_device(device))
    if fmt == "json":
        print(json.dumps(e, indent=2))
    else:
        console = Console()
        for k, v in e.items():
            console.print(f"[bold]{k:>12}[/]  {v}")
