"""Reliability, second round (issue 22): SIGTERM and Slurm's SIGUSR1, read-only stores,
damaged databases and data files, names too long for a file, concurrent runs of one sweep."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from trainlab.store import open_store

from .test_reliability import (  # noqa: F401  (fixtures)
    SWEEP,
    _assert_complete,
    _cli,
    _env,
    _max_epoch,
    _run,
    _start_and_wait_for_epoch,
    reference,
    sweep_file,
)


@pytest.mark.parametrize(("signum", "code", "name"),
                         [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGUSR1, 138, "SIGUSR1")])
def test_sigterm_and_sigusr1_save_state_and_resume(sweep_file: Path,  # noqa: F811
                                                   reference: dict,  # noqa: F811
                                                   tmp_path: Path, signum: int, code: int,
                                                   name: str) -> None:
    """What Slurm (``scancel``, the time limit, ``--signal=USR1@60``), Kubernetes and
    ``timeout`` send: the run stops after its step, saves, and the process exits 128 + n well
    inside Slurm's 30 s grace period."""
    store = tmp_path / "store"
    proc = _start_and_wait_for_epoch(_cli(sweep_file, store), store, 2)
    proc.send_signal(signum)
    t = time.time()
    _, stderr = proc.communicate(timeout=60)
    assert time.time() - t < 30
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert f"{name}:" in stderr and f"interrupted ({name})" in stderr
    runs = open_store(store).runs("killme")
    assert "interrupted" in set(runs["status"])
    assert name in set(runs[runs["status"] == "interrupted"]["error"]).pop()
    rerun = _run(_cli(sweep_file, store))
    assert rerun.returncode == 0, rerun.stderr
    _assert_complete(store, reference)


TINY = {"name": "tiny", "data": {"name": "synthetic", "n_samples": 200, "shape": [8],
                                 "n_classes": 3, "batch_size": 16},
        "model": {"name": "mlp", "hidden_dim": 16}, "optimizer": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 1}, "grid": {"model.hidden_dim": [16, 8]}}


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    done = _run(_cli(root / "tiny.yaml", root / "store", "--no-estimate"))
    assert done.returncode == 0, done.stderr
    return root / "store"


def _read_only_mount(store: Path, mount: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (sh) with ``store`` bind-mounted read-only at ``mount``, in a private
    mount namespace: a read-only file system stops even root, who ignores permissions."""
    mount.mkdir()
    return subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount --bind '{store}' '{mount}' && mount -o remount,bind,ro '{mount}' "
         f"|| exit 99; {script}"], env=_env(), capture_output=True, text=True, timeout=300)


def test_a_read_only_store_is_read_by_every_reading_command(tiny_store: Path,
                                                            tmp_path: Path) -> None:
    ids = list(open_store(tiny_store).runs("tiny")["run_id"])
    ro = tmp_path / "ro"
    py = f"'{sys.executable}'"
    cli = f"{py} -m trainlab.cli"
    script = "; ".join([
        f"{cli} ls --store {ro} --json > {tmp_path}/ls.json; echo ls=$?",
        f"{cli} show {ids[0][:8]} --store {ro} > /dev/null; echo show=$?",
        f"{cli} compare {ids[0][:8]} {ids[1][:8]} --store {ro} > /dev/null; echo compare=$?",
        f"{cli} report --store {ro} --out {tmp_path}/report > /dev/null; echo report=$?",
        f"{py} -c \"import trainlab; s = trainlab.open_store('{ro}'); "
        f"print('api', s.read_only, len(s.runs()))\"",
        f"touch {ro}/x 2>/dev/null; echo touch=$?",
        f"{cli} run {tiny_store.parent / 'tiny.yaml'} --set train.epochs=2 --store {ro} -q; "
        "echo run=$?"])
    done = _read_only_mount(tiny_store, ro, script)
    if done.returncode == 99 or "unshare" in done.stderr.split(":")[0]:
        pytest.skip(f"cannot bind-mount read-only here (needs CAP_SYS_ADMIN): {done.stderr}")
    lines = done.stdout.splitlines()
    assert "touch=1" in lines, done.stdout  # the mount is read-only indeed
    for command in ("ls", "show", "compare", "report"):
        assert f"{command}=0" in lines, done.stdout + done.stderr
    assert "api True 2" in lines
    assert "run=2" in lines
    assert "Traceback" not in done.stderr
    assert "is read-only (cannot write to the directory" in done.stderr
    assert (tmp_path / "report" / "report.html").is_file()
    assert (tmp_path / "ls.json").read_text().count('"ok"') == 2


def test_a_damaged_database_gets_a_recovery_hint_and_is_left_alone(tiny_store: Path,
                                                                   tmp_path: Path) -> None:
    import os
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(tiny_store, copy)
    db = copy / "trainlab.db"
    os.truncate(db, db.stat().st_size // 2)
    before = db.read_bytes()
    for command in (["ls"], ["report", "--out", str(tmp_path / "r")],
                    ["run", str(tiny_store.parent / "tiny.yaml")]):
        done = _run([sys.executable, "-m", "trainlab.cli", *command, "--store", str(copy)])
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert "is damaged" in done.stderr and '".recover"' in done.stderr
        assert "writable" not in done.stderr
    assert db.read_bytes() == before


def test_a_second_run_of_a_sweep_says_which_runs_are_trained_elsewhere(tiny_store: Path,
                                                                      tmp_path: Path) -> None:
    import shutil
    import socket
    import sqlite3

    copy = tmp_path / "store"
    shutil.copytree(tiny_store, copy)
    held = open_store(copy).runs("tiny")["run_id"].iloc[0]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with sqlite3.connect(copy / "trainlab.db") as conn:  # what a live trainer leaves
            conn.execute("UPDATE runs SET status='running', pid=?, host=?, heartbeat=? "
                         "WHERE run_id=?", (other.pid, socket.gethostname(), time.time(), held))
        done = subprocess.run(_cli(tiny_store.parent / "tiny.yaml", copy, "--no-estimate"),
                              env={**_env(), "COLUMNS": "250"}, capture_output=True, text=True,
                              timeout=300)
    finally:
        other.kill()
        other.wait()
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if held[:8] in line)
    assert "training elsewhere" in row and " running " not in row
    assert f"1 run(s) of this sweep are being trained by another process (pid {other.pid}" \
        in " ".join(done.stderr.split())


def test_small_input_mistakes_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from trainlab.cli import app

    runner = CliRunner()
    long = tmp_path / "long.yaml"
    long.write_text(yaml.safe_dump({**TINY, "name": "x" * 5000}))
    done = runner.invoke(app, ["run", str(long), "--store", str(tmp_path / "s")])
    assert done.exit_code == 2, done.output
    assert "`name`: the sweep's name is 5000 characters long" in done.output
    assert "at most 100 bytes" in done.output
    assert not (tmp_path / "s" / "trainlab.db").exists() or \
        open_store(tmp_path / "s").sweeps().empty  # refused before anything was stored

    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "a.yaml").write_text(yaml.safe_dump(TINY))
    done = runner.invoke(app, ["run", str(folder), "--store", str(tmp_path / "s")])
    assert done.exit_code == 2, done.output
    text = " ".join(done.output.split())
    assert "is a directory, not a sweep file" in text and "a.yaml" in text
    assert "does not exist" not in text

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    config = tmp_path / "npz.yaml"
    config.write_text(yaml.safe_dump({**TINY, "name": "npz", "grid": {},
                                      "data": {"name": "npz", "path": str(garbage)}}))
    done = _run([sys.executable, "-m", "trainlab.cli", "run", str(config), "--store",
                 str(tmp_path / "s"), "-q", "--no-estimate"])
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "garbage.npz' could not be read as a NumPy .npz file" in " ".join(done.stderr.split())


def test_a_full_disk_ends_the_sweep_with_a_message_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC injected where the issue saw it: finish_run's commit."""
    import sqlite3

    from typer.testing import CliRunner

    from trainlab.cli import app
    from trainlab.store.sqlite import Store

    def full(self: Store, run_id: str, *args: object) -> None:
        (self.run_dir(run_id) / "last.pt.tmp").write_bytes(b"half a checkpoint")
        with self._tx():
            raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "finish_run", full)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "grid": {}}))
    store = tmp_path / "store"
    done = CliRunner().invoke(app, ["run", str(config), "--store", str(store), "-q",
                                    "--no-estimate"])
    text = " ".join(done.output.split())
    assert done.exit_code == 1, done.output
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    assert f"the store at {str(store)!r} is full (database or disk is full;" in text
    assert "MiB free on its file system" in text and "rerun the same command" in text
    assert not list(store.glob("runs/*/*.tmp"))
