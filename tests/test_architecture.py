"""The layered architecture, checked statically and by running the CLI (docs/architecture.md).

(a) the import graph of attnbench (kernels/ as attnbench.kernels), counting every import statement
    including those inside functions, has no cycle;
(b) the layers point one way: core <- variants <- measure <- distributed <- run <- profile <-
    report/gate <- cli (report and gate never import torch at module level);
(c) no private name (`_x`) is imported from another module;
(d) the commands that only read results (--help, compare, show, report, merge) import no torch,
    neither directly nor through another module (the import graph is walked transitively, and the
    modules they load are imported in a fresh interpreter).
Rules today's code still breaks while the lead fixes them are xfail(strict=True): they flip to
failures (to be un-marked) the day they hold.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PACKAGES = {"attnbench": ROOT / "attnbench"}


def _modules() -> dict[str, Path]:
    """Module name -> file, for every .py of attnbench (its Triton kernels in attnbench/kernels/)."""
    mods = {}
    for pkg, base in PACKAGES.items():
        for f in sorted(base.rglob("*.py")):
            parts = list(f.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([pkg, *parts])] = f
    return mods


def _resolve(module: str, is_pkg: bool, level: int, target: str | None) -> str:
    if not level:
        return target or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


@cache
def imports() -> tuple[tuple[str, str, str, int, bool, tuple[str, ...]], ...]:
    """Every import: (importer, imported module, file, line, at module level, names imported).
    `from a import b` counts as importing a.b when a.b is a module, else a."""
    mods = _modules()
    out = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        top = {id(n) for n in tree.body}
        top |= {id(x) for n in tree.body if isinstance(n, (ast.If, ast.Try)) for x in ast.walk(n)}
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    out.append((name, a.name, str(path), node.lineno, id(node) in top, ()))
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(name, is_pkg, node.level, node.module)
                names = tuple(a.name for a in node.names)
                subs = [f"{src}.{n}" for n in names if f"{src}.{n}" in mods]
                for target in subs or [src]:
                    out.append((name, target, str(path), node.lineno, id(node) in top, names))
    return tuple(out)


def _internal(target: str) -> str | None:
    """The attnbench module a target names (the longest known prefix), or None if external."""
    mods = _modules()
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in mods:
            return ".".join(parts[:n])
    return None


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in _modules()}
    for src, target, *_ in imports():
        if (t := _internal(target)) and t != src:
            g[src].add(t)
    return g


def test_no_import_cycle():
    g = graph()
    # a package's __init__ importing its own submodules is how Python packages work, and a submodule
    # importing its package runs that __init__: count only edges between distinct modules.
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def strong(v):  # Tarjan, iterative enough for ~100 modules
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            strong(v)
    assert not cycles, f"import cycles (strongly connected modules): {cycles}"


# ---------------------------------------------------------------- (b) layers point one way
def layer(module: str) -> str:
    """attnbench.<layer>.x -> <layer>; attnbench.kernels -> kernels; the root package -> attnbench."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "attnbench"


# what each layer may import of attnbench (its own layer included), imports inside functions counted;
# cli, api (the library entry), __main__ and the root package sit on top and may import anything.
ALLOWED = {
    "core": {"core"},
    "kernels": {"kernels"},
    "variants": {"core", "kernels", "variants"},
    "measure": {"core", "measure"},
    "distributed": {"core", "variants", "kernels", "measure", "distributed"},
    "run": {"core", "variants", "measure", "distributed", "run"},
    "profile": {"core", "variants", "measure", "run", "profile"},
    "report": {"core", "report"},
    # gate's suite runners (runs, flow) run sweeps: run/ and measure/ inside functions only, so
    # `compare` never loads them (test_compare_imports_no_torch)
    "gate": {"core", "report", "gate", "run", "measure"},
}

# Edges allowed on purpose, each with its reason (and nothing else): the pattern gallery
# (report --patterns, show-pattern) draws the variants' own masks, so it must import them; it is
# imported only inside those commands, never by the rest of the report.
KNOWN = {
    "the pattern gallery draws the variants' masks (report --patterns, show-pattern only)": {
        ("attnbench.report.gallery", "attnbench.variants.registry"),
    },
    "results files older than the header catalogue are described by the installed variants": {
        ("attnbench.report.catalogue", "attnbench.variants.registry"),
    },
}


def layer_violations(exclude_known: bool) -> list[str]:
    known = set().union(*KNOWN.values()) if exclude_known else set()
    bad = []
    for src, target, path, line, _, names in imports():
        t = _internal(target)
        if t is None or layer(src) not in ALLOWED or (src, t) in known:
            continue
        if t == "attnbench" and set(names) <= {"__version__"}:  # the version string only
            continue
        if layer(t) not in ALLOWED[layer(src)]:
            bad.append(f"{src} -> {t} ({Path(path).relative_to(ROOT)}:{line})")
    return sorted(set(bad))


def test_layers_point_one_way_apart_from_known_edges():
    bad = layer_violations(exclude_known=True)
    assert not bad, "imports against the layer order (docs/architecture.md):\n" + "\n".join(bad)


def test_the_gallery_is_imported_only_inside_functions():
    """report/gallery.py imports torch and the variants: no module imports it at module level."""
    top = [f"{src}:{line}" for src, target, _, line, at_top, _ in imports()
           if _internal(target) == "attnbench.report.gallery" and at_top]
    assert not top, top


def torch_imports(layers: set[str]) -> list[str]:
    return sorted({f"{src}:{line}" for src, target, _, line, _, _ in imports()
                   if layer(src) in layers and target.split(".")[0] == "torch"})


def test_core_units_errors_results_import_no_torch():
    """What report/ and gate/ read records with must not pull torch in."""
    bad = [s for s in torch_imports({"core"}) if not s.startswith("attnbench.core.problem:")]
    assert not bad, bad


def test_every_family_file_is_in_the_catalogue():
    """A family file (a module of variants/ defining VARIANTS) left out of FAMILIES is a defect."""
    from attnbench.variants import registry

    listed = {m.__name__ for m in registry.FAMILIES}
    defining = {m for m, f in _modules().items() if m.startswith("attnbench.variants.")
                and any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "VARIANTS" for t in n.targets)
                        for n in ast.parse(f.read_text()).body)}
    assert defining == listed, (defining, listed)


def test_core_imports_torch_only_lazily():
    """Problem.torch_dtype imports torch when called; nothing in core does at module level."""
    top = sorted({f"{src}:{line}" for src, target, _, line, at_top, _ in imports()
                  if layer(src) == "core" and target.split(".")[0] == "torch" and at_top})
    assert not top, top


def torch_chain(start: str) -> list[str] | None:
    """The chain of module-level imports by which `import start` loads torch, or None when it
    does not: followed transitively through attnbench's own modules (importing a.b.c runs the
    __init__ of a and a.b first), so torch reached through another module counts too."""
    edges: dict[str, set[str]] = {}
    for src, target, _, _, at_top, _ in imports():
        if at_top:
            edges.setdefault(src, set()).add(_internal(target) or target)
    prev: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        m = queue.pop(0)
        parts = m.split(".")
        for t in sorted(edges.get(m, set()) | {".".join(parts[:i]) for i in range(1, len(parts))}):
            if t in prev:
                continue
            prev[t] = m
            if t.split(".")[0] == "torch":
                chain = [t]
                while prev[chain[-1]] is not None:
                    chain.append(prev[chain[-1]])
                return chain[::-1]
            if _internal(t) == t:
                queue.append(t)
    return None


# What the read-only commands (show, report, compare, merge, --help) load: the CLI package (every
# command module at import), report/, gate/ and core/. The gallery and core.problem import torch
# only inside functions (see above); report.catalogue reads the variants only inside a function.
def _torch_free_modules() -> list[str]:
    return ["attnbench.cli"] + [m for m in _modules() if layer(m) in ("report", "gate", "core")
                                and m != "attnbench.report.gallery"]


@pytest.mark.parametrize("module", _torch_free_modules())
def test_read_only_modules_reach_no_torch_even_indirectly(module):
    chain = torch_chain(module)
    assert chain is None, "importing it loads torch: " + " -> ".join(chain)


def test_importing_the_read_only_modules_loads_no_torch():
    """The same, by importing them all in a fresh interpreter (catches what a static walk cannot:
    an import done by a third-party module, a plugin hook)."""
    mods = _torch_free_modules()
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))[:5]\n"
            "assert not loaded, f'torch imported: {loaded}'\n")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_report_and_gate_import_no_torch_at_module_level():
    """(the gallery excepted: see KNOWN)"""
    top = sorted({f"{src}:{line}" for src, target, _, line, at_top, _ in imports()
                  if layer(src) in ("report", "gate") and target.split(".")[0] == "torch" and at_top
                  and src != "attnbench.report.gallery"})
    assert not top, top


# ---------------------------------------------------------------- (c) private names stay home
KNOWN_PRIVATE: set = set()


def private_imports() -> set[tuple[str, str, str]]:
    """(importer, module, name) for `from attnbench.x import _name` across modules. kernels/ is left
    out: its Triton modules share @triton.jit helpers through the package-private _common (and
    block_sparse reuses flash's tile loops) -- reported, not asserted."""
    found = set()
    for src, target, _, _, _, names in imports():
        t = _internal(target)
        if t and t != src and layer(src) != "kernels":
            found |= {(src, t, n) for n in names if n.startswith("_") and not n.startswith("__")}
    return found


def test_no_private_name_imported_from_another_module():
    assert not private_imports() - KNOWN_PRIVATE


# ---------------------------------------------------------------- (d) reading results imports no torch


def test_importing_the_cli_imports_no_torch():
    r = subprocess.run([PY, "-X", "importtime", "-c", "import attnbench.cli"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    mods = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    assert "attnbench.cli" in mods  # the importtime output was read
    assert not [m for m in mods if m == "torch" or m.startswith("torch.")]


def _main_without_torch(argv: list[str]) -> subprocess.CompletedProcess:
    code = ("import sys; from attnbench.cli import main; rc = main(sys.argv[1:]); "
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))[:5]; "
            "assert not loaded, f'torch imported: {loaded}'; sys.exit(rc)")
    return subprocess.run([PY, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny results files: one real run (mha/sdpa, L=64 and 128, 2 s budget) and a copy of it,
    so compare/merge have two files without paying for a second run on a busy CPU."""
    d = tmp_path_factory.mktemp("results")
    a, b = d / "a.jsonl", d / "b.jsonl"
    r = subprocess.run([PY, "-m", "attnbench", "run", "--variants", "mha", "--backends", "sdpa", "--seq", "64,128",
                        "--time-budget", "2", "--out", str(a)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0 and a.exists(), r.stderr[-2000:]
    b.write_bytes(a.read_bytes())
    return a, b


def test_help_imports_no_torch():
    r = _main_without_torch(["--help"])
    assert r.returncode == 0 and "compare" in r.stdout, r.stderr[-2000:]


def test_compare_imports_no_torch(results):
    a, b = results
    r = _main_without_torch(["compare", str(a), str(b)])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_show_imports_no_torch(results):
    r = _main_without_torch(["show", str(results[0])])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_report_imports_no_torch(results, tmp_path):
    r = _main_without_torch(["report", str(results[0]), "--out", str(tmp_path / "report")])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_merge_imports_no_torch(results, tmp_path):
    r = _main_without_torch(["merge", *map(str, results), "--out", str(tmp_path / "merged.jsonl")])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


# ---------------------------------------------------------------- the kernels package exports every kernel
def test_the_kernels_package_exports_every_kernel():
    """Each kernel file (not the shared helpers, configs or the AOT report) has a public function
    in attnbench.kernels.__all__ that it defines."""
    init = ast.parse((ROOT / "attnbench" / "kernels" / "__init__.py").read_text())
    exported = next(ast.literal_eval(n.value) for n in init.body
                    if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets))
    missing = []
    for f in sorted((ROOT / "attnbench" / "kernels").glob("*.py")):
        if f.stem in ("__init__", "_common", "aot", "configs"):
            continue
        defined = {n.name for n in ast.parse(f.read_text()).body if isinstance(n, ast.FunctionDef)}
        if not defined & set(exported):
            missing.append(f.name)
    assert not missing, f"kernel files with nothing exported by kernels/__init__.py: {missing}"
