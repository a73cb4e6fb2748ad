"""Huge grids (issue 22, item 8): `run` asks before training hundreds of runs, its final table
is a screenful, and Ctrl-C ends a large sweep at once."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.cli.run import CONFIRM_RUNS

from .test_reliability import _env

GRID = {"name": "huge", "data": {"name": "synthetic", "n_samples": 64, "shape": [4],
                                 "n_classes": 2, "batch_size": 32},
        "model": {"name": "mlp", "hidden_dim": 4}, "optimizer": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 1},
        "grid": {"model.hidden_dim": list(range(2, 32)), "train.seed": list(range(20))}}


@pytest.fixture
def huge(tmp_path: Path) -> Path:
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(GRID))
    return path


def test_a_large_sweep_needs_yes_when_not_interactive(huge: Path, tmp_path: Path) -> None:
    assert CONFIRM_RUNS < 30 * 20
    store = tmp_path / "store"
    done = CliRunner().invoke(app, ["run", str(huge), "--store", str(store), "-q"])
    text = " ".join(done.output.split())
    assert done.exit_code == 2, done.output
    assert "Traceback" not in done.output
    assert "sweep huge has 600 runs to train (more than 500); pass --yes" in text
    assert not store.exists()  # refused before anything was stored


def test_ctrl_c_ends_a_large_sweep_at_once_with_a_short_table(huge: Path,
                                                              tmp_path: Path) -> None:
    """Behaviour, not speed: the process answers a Ctrl-C with exit 130 (the slack is wide for
    a loaded machine) and its final table lists a screenful, not 600 rows."""
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "trainlab.cli", "run", str(huge), "--store",
                             str(store), "-q", "--yes", "--no-estimate"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    done = 0
    while done < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        try:
            conn = sqlite3.connect(store / "trainlab.db", timeout=1)
            try:
                done = conn.execute("SELECT COUNT(*) FROM runs WHERE status='ok'").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error:
            pass
    assert proc.poll() is None, proc.communicate()
    start = time.time()
    proc.send_signal(signal.SIGINT)
    out, errs = proc.communicate(timeout=60)
    assert time.time() - start < 20
    assert proc.returncode == 130, errs
    assert "Traceback" not in errs
    assert "interrupted (Ctrl-C): state saved" in errs
    assert "more" in out and "runs by status:" in out and "pending" in out
    assert sum(line.startswith("│") for line in out.splitlines()) < 60


def _registered(store: Path) -> bool:
    try:
        conn = sqlite3.connect(store / "trainlab.db", timeout=1)
        try:
            return bool(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return False


@pytest.mark.parametrize("answer", ["n", "y", "ctrl-c"])
def test_a_large_sweep_asks_at_a_terminal(huge: Path, tmp_path: Path, answer: str) -> None:
    """At a terminal (stdin and stderr a pty) `run` asks; "n" trains nothing (exit 2, no
    store), "y" goes on to train (stopped here by a Ctrl-C once the sweep is stored), a Ctrl-C
    at the prompt exits 130 and, like "n", leaves no store behind."""
    import os
    import pty
    import select

    store = tmp_path / "store"
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "trainlab.cli", "run", str(huge), "--store",
                             str(store), "-q", "--no-estimate"],
                            env=_env(), stdin=child, stderr=child, stdout=subprocess.PIPE,
                            text=True)
    os.close(child)
    seen = b""
    deadline = time.time() + 120
    try:
        while b"Train them all?" not in seen and time.time() < deadline:
            ready, _, _ = select.select([main], [], [], 1.0)
            if ready:
                try:
                    seen += os.read(main, 4096)
                except OSError:
                    break
        assert b"sweep huge has 600 runs to train (more than 500)" in seen, seen
        if answer == "ctrl-c":
            proc.send_signal(signal.SIGINT)
        else:
            os.write(main, f"{answer}\n".encode())
        while answer == "y" and not _registered(store) and time.time() < deadline:
            time.sleep(0.1)  # the sweep is stored once the answer is in and the plan checked
        if answer == "y":
            proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
        while True:  # the rest of the terminal's output
            ready, _, _ = select.select([main], [], [], 0.2)
            if not ready:
                break
            try:
                seen += os.read(main, 4096)
            except OSError:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    text = " ".join(seen.decode(errors="replace").split())
    assert "Traceback" not in text
    if answer == "n":
        assert proc.returncode == 2, text
        assert "not confirmed; nothing was trained" in text
        assert not store.exists()
    elif answer == "ctrl-c":
        assert proc.returncode == 130, text
        assert not store.exists()
    else:
        assert proc.returncode == 130, text
        assert "not confirmed" not in text


def test_an_interrupted_plan_says_so(huge: Path) -> None:
    """A Ctrl-C inside `plan` (here a real SIGINT sent while it plans) exits 130 and says
    "interrupted": typer turns the KeyboardInterrupt into a silent exit 130 otherwise."""
    code = ("import os, signal, sys\n"
            "import trainlab.plan\n"
            "def planning(*args, **kwargs):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    raise AssertionError('the SIGINT did not interrupt')\n"
            "trainlab.plan.make_plan = planning\n"
            "from trainlab.cli import main\n"
            f"sys.argv = ['trainlab', 'plan', {str(huge)!r}]\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert "interrupted (Ctrl-C)" in done.stderr and "Traceback" not in done.stderr
