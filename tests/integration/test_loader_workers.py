"""DataLoader workers never outlive the sweep: Ctrl-C, SIGTERM and SIGKILL of ``trainlab run``
leave no worker process behind (persistent workers included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

DATA = textwrap.dedent('''
    import time

    import torch
    from torch.utils.data import Dataset


    class Slow(Dataset):
        def __init__(self, n):
            self.x = torch.randn(n, 6, generator=torch.Generator().manual_seed(0))

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            time.sleep(0.005)  # a slow read: epochs last long enough to be interrupted
            return self.x[i], int(self.x[i, 0] > 0)


    def slow():
        return {"train": Slow(2000), "valid": Slow(64), "test": Slow(64)}
''')


def _children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its closing paren.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["ctrl-c", "sigterm", "sigkill"])
def test_no_worker_outlives_the_sweep(tmp_path: Path, sig: signal.Signals) -> None:
    (tmp_path / "slowdata.py").write_text(DATA)
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "name": "workers",
        "data": {"name": "python", "target": "slowdata.py:slow", "task": "classification",
                 "num_classes": 2, "batch_size": 32, "loader": {"workers": 2}},
        "model": {"name": "mlp", "hidden_dim": 8}, "train": {"epochs": 5}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trainlab.cli", "run", str(config),
                             "--store", str(tmp_path / "store"), "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    deadline = time.time() + 120
    # Two forked children that stay: the loader's workers (not a short-lived `git`).
    while time.time() < deadline and proc.poll() is None:
        now = _children(proc.pid)
        if len(now & workers) >= 2:
            break
        workers = now
        time.sleep(0.5)
    workers = {w for w in workers if _alive(w)}
    assert proc.poll() is None and len(workers) >= 2, "the workers never started"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if sig != signal.SIGKILL:
        assert "Traceback" not in stderr
    # An orphaned worker notices its parent is gone within a few seconds (torch checks every
    # 5 s); one that outlives that is a leak.
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    left = [w for w in workers if _alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, f"worker processes {left} outlived the sweep ({sig.name})"
