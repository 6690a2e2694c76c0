"""Data safety: one writer per output, writes that cannot tear or destroy (full and
read-only disks on a real 64 KiB tmpfs), rounds journaled, signals, the worker dying with its
parent, an outside kill recorded as `killed`, case identity."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attnbench.cli import main
from attnbench.core import results
from attnbench.core.results import Writer, make_header
from attnbench.core.safe_io import EXIT_WRITE, Locked, OutputError, hold_lock
from attnbench.run.rounds import RoundJournal

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "ATTNBENCH_TEST_BACKENDS": "1", "PYTHONUNBUFFERED": "1"}
HEADER = make_header(["test"], {"device": "cpu"}, None)


def _record(i: int, pad: int = 0) -> dict:
    from conftest import valid_record

    return valid_record(case_id=f"{i:016x}", reason="x" * pad or "test")


@pytest.fixture
def tmpfs(tmp_path):
    """A real 64 KiB tmpfs (root only; skipped with the reason elsewhere), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if rc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {rc.stderr.strip() or rc.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: a failed test may hold a file open


def _fill(mnt: Path, leave: int) -> Path:
    """Fill the tmpfs up to `leave` bytes of free space."""
    st = os.statvfs(mnt)
    filler = mnt / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def _readonly(mnt: Path, ro: bool) -> None:
    subprocess.run(["mount", "-o", f"remount,{'ro' if ro else 'rw'}", str(mnt)], check=True)


# ---------------------------------------------------------------- one writer
def test_second_writer_fails_at_once_naming_the_holder(tmp_path):
    out = tmp_path / "r.jsonl"
    with hold_lock(out):
        with pytest.raises(Locked, match=f"pid {os.getpid()}"):
            with hold_lock(out):
                pass
    assert not (tmp_path / ".r.jsonl.lock").exists()  # released and removed
    with hold_lock(out):  # free again
        pass


@pytest.mark.slow
def test_two_concurrent_runs_on_one_out(tmp_path):
    """The second run exits 2 with one line naming the first's pid; the first's file is complete."""
    out = tmp_path / "r.jsonl"
    sweep = [
        "run",
        "--variants",
        "mha",
        "--backends",
        "sdpa",
        "--seq",
        "64,128",
        "--time-budget",
        "1",
        "--out",
        str(out),
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "attnbench", *sweep],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = tmp_path / ".r.jsonl.lock"
    end = time.time() + 120
    while not lock.exists() and time.time() < end:
        time.sleep(0.1)
    second = subprocess.run(
        [sys.executable, "-m", "attnbench", *sweep, "--resume"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _, err1 = first.communicate(timeout=300)
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert second.returncode == 2 and len(lines) == 1 and f"pid {first.pid}" in lines[0], second.stderr
    assert first.returncode == 0, err1
    _, recs = results.read(out)
    assert len(recs) == 2 == len({r["case_id"] for r in recs})


# ---------------------------------------------------------------- writes that cannot tear
def test_a_full_disk_cuts_back_to_the_last_complete_record(tmpfs):
    out = tmpfs / "r.jsonl"
    _fill(tmpfs, 8192)
    w = Writer(out, HEADER)
    with pytest.raises(OutputError, match=r"No space left on device.*\(ENOSPC\); kept (\d+) complete records") as e:
        for i in range(100):
            w.write(_record(i, pad=700))
    w.close()
    kept = int(str(e.value).split("kept ")[1].split()[0])
    _, recs = results.read(out)  # no torn line, no warning
    assert len(recs) == kept > 0 and "--resume" in str(e.value)
    assert sorted(p.name for p in tmpfs.iterdir()) == ["filler", "r.jsonl"]  # no temporary left


def test_force_keeps_the_old_file_until_the_new_one_has_a_record(tmpfs):
    out = tmpfs / "r.jsonl"
    with Writer(out, HEADER) as w:
        for i in range(3):
            w.write(_record(i))
    before = out.read_bytes()
    _fill(tmpfs, 0)
    w = None
    with pytest.raises(OutputError, match="the existing file is unchanged"):
        w = Writer(out, HEADER)  # --force: the header goes to a temporary sibling first
        w.write(_record(9, pad=20000))
    if w is not None:
        w.close()  # drops the temporary
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmpfs.iterdir()) == ["filler", "r.jsonl"]
    (tmpfs / "filler").unlink()
    with Writer(out, HEADER) as w:  # room again: replaced at the first record
        assert out.read_bytes() == before
        w.write(_record(7))
        assert [r["case_id"] for r in results.read(out)[1]] == [f"{7:016x}"]


def test_a_run_that_writes_no_record_leaves_no_file(tmp_path):
    w = Writer(tmp_path / "r.jsonl", HEADER, discard_empty=True)
    w.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args,code",
    [
        (["merge", "{src}", "--out", "{mnt}/m.jsonl"], EXIT_WRITE),
        (["report", "{src}", "--out", "{mnt}/rep"], EXIT_WRITE),
        (["compare", "{src}", "{src}", "--report", "{mnt}/g.md"], 3),
        (["show-pattern", "sliding_window", "--seq", "1k", "--out", "{mnt}/p.png"], EXIT_WRITE),
        (["run", "--variants", "mha", "--backends", "sdpa", "--seq", "64", "--out", "{mnt}/r.jsonl"], EXIT_WRITE),
    ],
)
def test_read_only_disk_is_one_line_and_writes_nothing(tmpfs, tmp_path, capsys, args, code):
    from conftest import results_file as _results_file
    from conftest import valid_record

    src = tmp_path / "src.jsonl"
    _results_file(src, valid_record())
    _readonly(tmpfs, True)
    try:
        rc = main([a.format(src=src, mnt=tmpfs) for a in args])
    finally:
        _readonly(tmpfs, False)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == code and len(lines) == 1 and "Read-only file system" in lines[0], err
    assert list(tmpfs.iterdir()) == []


def test_report_on_a_full_disk_leaves_no_partial_directory_and_keeps_the_old_one(tmpfs, tmp_path, capsys):
    from conftest import results_file as _results_file
    from conftest import valid_record

    src = tmp_path / "src.jsonl"
    _results_file(src, valid_record())
    rep = tmpfs / "rep"
    rep.mkdir()
    (rep / "report.md").write_text("an earlier report\n")
    _fill(tmpfs, 4096)
    rc = main(["report", str(src), "--out", str(rep)])
    err = capsys.readouterr().err
    assert rc == EXIT_WRITE and "No space left" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmpfs.iterdir()) == ["filler", "rep"]
    assert [p.name for p in rep.iterdir()] == ["report.md"] and "earlier" in (rep / "report.md").read_text()


# ---------------------------------------------------------------- rounds journal
def test_round_journal_survives_a_cut_line_and_resumes(tmp_path):
    out = tmp_path / "r.jsonl"
    j = RoundJournal(out, 3, resume=False)
    j.add("a", {"status": "ok", "n": 1})
    j.add("a", {"status": "ok", "n": 2})
    j.add("b", {"status": "ok", "n": 1})
    j.close()
    with open(tmp_path / ".r.jsonl.rounds", "a") as f:
        f.write('{"case_id": "b", "rou')  # kill -9 mid-line
    back = RoundJournal(out, 3, resume=True)
    assert [r["n"] for r in back.done["a"]] == [1, 2] and [r["n"] for r in back.done["b"]] == [1]
    assert RoundJournal(out, 5, resume=True).done == {}  # another --rounds: the rounds are not reused
    back.finish()
    assert not (tmp_path / ".r.jsonl.rounds").exists()


@pytest.mark.slow
def test_rounds_kill9_then_resume_gives_one_record_per_case(tmp_path):
    out = tmp_path / "r.jsonl"
    sweep = [
        "run",
        "--variants",
        "mha",
        "--backends",
        "sdpa,eager",
        "--seq",
        "64,128,256",
        "--time-budget",
        "1",
        "--rounds",
        "3",
        "--out",
        str(out),
    ]
    p = subprocess.Popen(
        [sys.executable, "-m", "attnbench", *sweep],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = tmp_path / ".r.jsonl.rounds"
    end = time.time() + 180
    while time.time() < end and (not journal.exists() or journal.read_text().count("\n") < 7):
        time.sleep(0.2)
    p.kill()
    p.wait(30)
    assert journal.read_text().count("\n") >= 7  # round 1 of every case and more survived kill -9
    done = subprocess.run(
        [sys.executable, "-m", "attnbench", *sweep, "--resume"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    _, recs = results.read(out)
    assert len(recs) == 6 == len({r["case_id"] for r in recs})
    assert all(r["timing"]["rounds"] == 3 for r in recs if r["status"] == "ok")
    assert not journal.exists()


# ---------------------------------------------------------------- signals and the worker
def test_interrupt_first_signal_finishes_the_case_second_abandons_it_sigterm_at_once():
    from attnbench.run.session import Interrupt

    stop = Interrupt()
    assert not stop
    stop(signal.SIGINT, None)  # first Ctrl-C: stop after the case in flight
    assert stop and stop.signum == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):  # second: abandon it now
        stop(signal.SIGINT, None)
    term = Interrupt()
    with pytest.raises(KeyboardInterrupt):  # SIGTERM: at once (a SIGKILL usually follows)
        term(signal.SIGTERM, None)
    assert term.signum == signal.SIGTERM


def test_a_signal_during_a_records_fsync_keeps_the_record(tmp_path, monkeypatch):
    """SIGTERM arriving while a record is being fsynced (a busy disk makes that window wide) is
    handled once the record is on disk and counted: the writer never takes its file for empty
    and removes it."""
    out = tmp_path / "r.jsonl"
    real_fsync = os.fsync

    def fsync_then_signalled(fd):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered now; Python would run its handler at once
        real_fsync(fd)

    def stop(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, stop)
    try:
        with Writer(out, HEADER, discard_empty=True) as w:
            monkeypatch.setattr(os, "fsync", fsync_then_signalled)
            with pytest.raises(KeyboardInterrupt):
                w.write(_record(1))
            monkeypatch.setattr(os, "fsync", real_fsync)
            assert w.records == 1
    finally:
        signal.signal(signal.SIGTERM, old)
    assert out.exists(), "the writer removed a file that held a record"
    assert len(results.read(out)[1]) == 1


def _signalled_run(tmp_path, sig, env: dict) -> tuple[subprocess.Popen, str, Path]:
    """A small sweep, `sig` sent the moment its first record is in the file."""
    out = tmp_path / "r.jsonl"
    sweep = ["run", "--variants", "mha", "--backends", "sdpa,eager", "--seq", "64,128,256,512", "--time-budget", "2",
             "--out", str(out), "--quiet"]  # quiet: no plan, no progress; stderr holds what the signal made it say
    p = subprocess.Popen([sys.executable, "-m", "attnbench", *sweep], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    end = time.time() + 180
    while time.time() < end and p.poll() is None and not (out.exists() and out.read_text().count('"type": "record"')):
        time.sleep(0.05)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    return p, err, out


def _says_why(p: subprocess.Popen, err: str, out: Path) -> str:
    n = out.read_text().count('"type": "record"') if out.exists() else None
    return f"exit {p.returncode}; results file exists: {out.exists()}, records: {n}; stderr lines: {err.splitlines()}"


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_keep_the_records_and_say_so(tmp_path, sig, code):
    p, err, out = _signalled_run(tmp_path, sig, ENV)
    why = _says_why(p, err, out)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == code and len(lines) == 1 and signal.Signals(sig).name in lines[0], why
    assert "--resume" in lines[0] and "Traceback" not in err, why
    assert out.exists(), why
    assert 1 <= len(results.read(out)[1]) < 8, why


@pytest.mark.slow
def test_sigterm_during_the_first_records_fsync_keeps_it(tmp_path):
    """The race a busy disk opens: the record is in the file, its fsync still running, when SIGTERM
    comes. A slow fsync (a sitecustomize in the run's process) makes the window certain."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import os, time\n_fsync = os.fsync\n"
        "def _slow(fd):\n    time.sleep(0.5)\n    return _fsync(fd)\n"
        "os.fsync = _slow\n"
    )
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), ENV.get("PYTHONPATH")]))}
    p, err, out = _signalled_run(tmp_path, signal.SIGTERM, env)
    why = _says_why(p, err, out)
    assert p.returncode == 143 and out.exists() and len(results.read(out)[1]) >= 1, why
    assert "no case finished" not in err and "kept in" in err, why


@pytest.mark.slow
def test_the_worker_dies_with_its_parent(tmp_path):
    script = (
        "import sys, time, torch\nfrom attnbench.run.worker import RunConfig, Worker\n"
        "w = Worker(RunConfig(device=torch.device('cpu')))\nw.start()\nw.measure_refs(('float32',))\n"
        "print(w.proc.pid, flush=True)\ntime.sleep(600)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    p.kill()
    p.wait(30)
    end = time.time() + 10
    while time.time() < end and _alive(child):
        time.sleep(0.1)
    assert not _alive(child), "the worker outlived its parent"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited (waiting for init to reap it)


@pytest.mark.parametrize("before,after,status", [(3, 3, "killed"), (3, 4, "oom"), (None, None, "killed")])
def test_an_outside_sigkill_is_killed_unless_the_oom_killer_acted(monkeypatch, before, after, status):
    import attnbench.run.worker as runner

    class Proc:
        exitcode = -signal.SIGKILL

    w = runner.Worker(runner.RunConfig(device=torch.device("cpu")))
    w.proc = Proc()
    monkeypatch.setattr(runner, "oom_kill_count", lambda: after)
    rec = w._death_fields(before)
    assert rec["status"] == status and ("SIGKILL" in rec["reason"])


# ---------------------------------------------------------------- case identity
def test_case_id_covers_threads_device_name_and_backend_version():
    from attnbench.run.plan import expand, make_sweep
    from attnbench.run.worker import backend_version, case_identity

    cpu = torch.device("cpu")
    case = expand([make_sweep(variants="mha", backends="sdpa", seq=[64])], cpu)[0]
    base = case_identity(case.backend, cpu, threads=2)
    key = lambda ident: results.case_id(case.problem.as_dict(), case.variant, case.backend, "cpu", ident)  # noqa: E731
    ids = {
        key(base),
        key(base | {"threads": 1}),
        key(base | {"device_name": "other cpu"}),
        key(base | {"backend_version": "torch 0.0"}),
    }
    assert len(ids) == 4
    assert backend_version("sdpa").startswith("torch ") and "triton" in backend_version("triton")
    assert json.dumps(base)  # identity is plain JSON
