"""A user's own backends (variants/user.py): loaded from a file or an installed entry point through
the Backend contract, checked before timing (run/precheck.py), and every bad file refused in one line."""

from __future__ import annotations

import hashlib
import json
import textwrap

import pytest
import torch
from user_files import WRONG, good

from attnbench.api import attend
from attnbench.cli import main
from attnbench.core.errors import UsageError
from attnbench.core.problem import Problem
from attnbench.run.plan import Case
from attnbench.run.worker import base_record
from attnbench.variants import registry, user
from conftest import fp64_oracle, seeded_qkv

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def built_in_catalogue():
    """Every test starts and ends with the catalogue of the family files alone."""
    registry.drop_added_backends()
    yield
    registry.drop_added_backends()


def test_a_file_adds_backends_to_a_variant_without_changing_the_built_in_one(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(good())
    before = registry.get("mha")
    source = user.load_file(path)
    assert source.kind == "file" and source.where == str(path.resolve())
    assert source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    mha = registry.get("mha")
    assert mha.backend("my-softmax").source == source and "my-softmax" in mha.backend_names()
    assert "my-softmax" not in before.backend_names()  # the frozen Variant is copied, never changed
    assert registry.describe(["mha"])["mha"]["backends"]["my-softmax"]["source"] == source.as_dict()
    user.load_file(path)  # loading the same file again replaces its backends (a worker, a re-run)
    assert registry.get("mha").backend_names().count("my-softmax") == 1
    registry.drop_added_backends()
    assert "my-softmax" not in registry.get("mha").backend_names()


def test_a_user_backend_computes_through_the_library_like_ours(tmp_path):
    (tmp_path / "mine.py").write_text(good())
    user.load_file(tmp_path / "mine.py")
    p = Problem(batch=1, heads=4, kv_heads=4, seq_q=24, seq_k=40, head_dim=16, causal=True)
    q, k, v = seeded_qkv(p, dtype=torch.float32)
    out = attend(q, k, v, variant="mha", backend="my-softmax", causal=True)
    ref = fp64_oracle(q, k, v, causal=True)
    assert (out.double() - ref).abs().max().item() < 1e-5


def test_the_check_before_timing_passes_a_right_backend_and_refuses_a_wrong_one(tmp_path):
    from attnbench.run.case import run_case
    from attnbench.run.worker import RunConfig

    (tmp_path / "good.py").write_text(good())
    (tmp_path / "wrong.py").write_text(WRONG)
    user.load_file(tmp_path / "good.py")
    user.load_file(tmp_path / "wrong.py")
    mha = registry.get("mha")
    p = mha.resolve(Problem(batch=1, heads=2, kv_heads=0, seq_q=32, seq_k=32, head_dim=16))
    wrong = run_case(Case("mha", "my-wrong", p), CPU, RunConfig(CPU).policy, None)
    assert wrong["status"] == "wrong" and "refused before timing" in wrong["reason"]
    assert wrong["precheck"]["passed"] is False and wrong["precheck"]["rel_l2"] > wrong["precheck"]["budget"]
    assert "latency_ms" not in wrong and "samples_ms" not in wrong  # never timed
    assert wrong["backend_source"]["sha256"] == hashlib.sha256((tmp_path / "wrong.py").read_bytes()).hexdigest()
    assert base_record(Case("mha", "my-wrong", p), CPU)["backend_source"] == wrong["backend_source"]
    from attnbench.run.precheck import budget, precheck

    q, k, v = seeded_qkv(p)
    fn = mha.backend("my-softmax").build(p, CPU)
    from attnbench.run.case import compute_error

    check = precheck(mha, mha.backend("my-softmax"), fn, p, q, k, v, CPU,
                     lambda out: compute_error(mha, p, out, q, k, v))
    assert check["passed"] is True and check["rel_l2"] <= budget(p) and check["vs"] == "fp64 reference"


def test_a_built_in_backend_is_not_checked_before_timing(tmp_path):
    from attnbench.run.case import user_check

    mha = registry.get("mha")
    p = mha.resolve(Problem(batch=1, heads=2, kv_heads=0, seq_q=16, seq_k=16, head_dim=16))
    assert user_check(mha, mha.backend("sdpa"), None, Case("mha", "sdpa", p), None, None, None, CPU, "randn",
                      None) is None
    assert "backend_source" not in base_record(Case("mha", "sdpa", p), CPU)


def _dist(tmp_path, value: str, module_text: str, name: str = "fake_kernels"):
    """A fake installed distribution: a module and a dist-info with an attnbench.backends entry point."""
    (tmp_path / f"{name}.py").write_text(module_text)
    info = tmp_path / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[attnbench.backends]\nmine = {value}\n")


def test_an_installed_entry_point_gives_what_a_file_gives(tmp_path, monkeypatch):
    _dist(tmp_path, "fake_kernels", good("ep-softmax"))
    monkeypatch.syspath_prepend(str(tmp_path))
    sources = user.load_entry_points()
    assert [s.kind for s in sources] == ["entry point"] and sources[0].where == "mine = fake_kernels"
    assert sources[0].sha256 == hashlib.sha256((tmp_path / "fake_kernels.py").read_bytes()).hexdigest()
    assert registry.get("mha").backend("ep-softmax").source == sources[0]


def test_an_entry_point_may_name_the_mapping_itself(tmp_path, monkeypatch):
    _dist(tmp_path, "fake_kernels2:BACKENDS", good("ep-map"), name="fake_kernels2")
    monkeypatch.syspath_prepend(str(tmp_path))
    user.load_entry_points()
    assert registry.get("mha").backend("ep-map").source.where == "mine = fake_kernels2:BACKENDS"


def test_a_broken_entry_point_is_one_line_naming_it(tmp_path, monkeypatch):
    _dist(tmp_path, "fake_kernels3", "raise ImportError('needs a GPU build')\n", name="fake_kernels3")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match=r"entry point 'mine = fake_kernels3' .*ImportError: needs a GPU build"):
        user.load_entry_points()


BAD_FILES = [
    ("missing.py", None, "cannot be read"),
    ("notes.txt", "x = 1\n", "expected a Python file"),
    ("syntax.py", "def build(:\n", "SyntaxError"),
    ("raises.py", "import torch\nraise RuntimeError('boom')\n", "RuntimeError: boom (line 2)"),
    ("exits.py", "import sys\nsys.exit(3)\n", "SystemExit"),
    ("nothing.py", "x = 1\n", "defines no BACKENDS"),
    ("empty.py", "BACKENDS = {}\n", "BACKENDS is empty"),
    ("unknown.py", "from attnbench.api import Backend\nBACKENDS = {'mhaa': [Backend('x', lambda p, d: None)]}\n",
     "unknown variant 'mhaa'"),
    ("notbackend.py", "BACKENDS = {'mha': [lambda p, d: None]}\n", "expected Backend(name=..., build=...)"),
    ("clash.py", "from attnbench.api import Backend\nBACKENDS = {'mha': [Backend('sdpa', lambda p, d: None)]}\n",
     "clashes with a built-in backend"),
    ("twice.py", "from attnbench.api import Backend\nb = Backend('x', lambda p, d: None)\n"
     "BACKENDS = {'mha': [b, b]}\n", "given twice"),
    ("badname.py", "from attnbench.api import Backend\nBACKENDS = {'mha': [Backend('a b', lambda p, d: None)]}\n",
     "is not accepted"),
    ("colon.py", "from attnbench.api import Backend\nBACKENDS = {'mha': [Backend('peer:x', lambda p, d: None)]}\n",
     "no spaces, commas or colons"),
]


@pytest.mark.parametrize("name,text,mention", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_backend_file_is_one_line_exit_2_and_adds_nothing(tmp_path, capsys, name, text, mention):
    path = tmp_path / name
    if text is not None:
        path.write_text(textwrap.dedent(text))
    rc = main(["run", "--variants", "mha", "--seq", "32", "--backend-file", str(path), "--dry-run",
               "--out", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert mention in lines[0] and name in lines[0], lines[0]
    assert all(b.source is None for b in registry.get("mha").backends)
    assert not (tmp_path / "r.jsonl").exists()


def test_the_gate_commands_refuse_a_bad_file_with_their_usage_exit(tmp_path, capsys):
    (tmp_path / "nothing.py").write_text("x = 1\n")
    rc = main(["gate", "--suite", "ci", "--baseline", str(tmp_path), "--backend-file", str(tmp_path / "nothing.py")])
    err = capsys.readouterr().err
    assert rc == 3 and "defines no BACKENDS" in err and "Traceback" not in err


def test_a_suite_file_cannot_name_backend_files(tmp_path, capsys):
    (tmp_path / "s.toml").write_text('backend_files = ["x.py"]\n[[sweep]]\nvariants = ["mha"]\nseq = 32\n')
    rc = main(["run", "--suite", str(tmp_path / "s.toml"), "--dry-run"])
    assert rc == 2 and "unknown key 'backend_files'" in capsys.readouterr().err


def test_a_changed_file_is_another_case_for_resume(tmp_path):
    from attnbench.run.worker import case_key

    path = tmp_path / "mine.py"
    path.write_text(good())
    user.load_file(path)
    p = registry.get("mha").resolve(Problem(batch=1, heads=2, kv_heads=0, seq_q=16, seq_k=16, head_dim=16))
    first = case_key(Case("mha", "my-softmax", p), CPU)
    assert case_key(Case("mha", "my-softmax", p), CPU) == first
    path.write_text(good(delay_ms=1))
    user.load_file(path)
    assert case_key(Case("mha", "my-softmax", p), CPU) != first


def test_check_holds_a_user_backend_to_the_oracle_like_ours(tmp_path, capsys):
    (tmp_path / "good.py").write_text(good())
    (tmp_path / "wrong.py").write_text(WRONG)
    args = ["check", "--variants", "mha", "--dtype", "float32", "--json", "--backend-file", str(tmp_path / "good.py"),
            "--backend-file", str(tmp_path / "wrong.py")]
    assert main([*args, "--backends", "my-softmax"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["backend"] == "my-softmax" and r["passed"] for r in rows)
    assert main([*args, "--backends", "my-wrong"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert rows and not any(r["passed"] for r in rows)
