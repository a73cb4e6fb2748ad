"""The GPU suite in one command: every ``gpu``-marked test, then a short ``benchmarks.suite``.

Usage (from the repository root, on a machine with a CUDA GPU; ``pip install -e ".[dev,bench,
hf,gpu]"``):

    python -m benchmarks.gpu_suite [--out gpu-results] [--skip-bench]

It writes, under ``--out``:

  junit.xml          the pytest report of ``pytest -m gpu tests`` (one case per check)
  pytest.log         that run's output
  suite.md / .json   ``benchmarks.suite`` on the GPU, 2 rounds of gpt-lm and digits-mlp
                     (MFU of trainlab and of the plain loop, peak memory per contender)
  gpu_suite.json     the summary: the device, torch, each part's seconds and exit status,
                     the test counts and failures, the matmul peaks (IEEE fp32, TF32, bf16)
                     and the probe's predicted against measured step

Expected on one H100: the tests 2-4 min (tests/gpu/test_gpu_suite.py about 1-2 min, the
NCCL test skips on one GPU), the benchmark 2-3 min; each part is cut off at its limit
(``--test-limit``, ``--bench-limit``: 300 and 200 s) so the whole stays under 8 minutes and
writes what it has.  Exit status: 0 when every part passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

BENCH_WORKLOADS = "digits-mlp,gpt-lm"


def _run(cmd: list[str], log: Path, limit: float) -> tuple[int, float, str]:
    t = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        code, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        code = 124
        out = exc.stdout or b""
        text = (out.decode() if isinstance(out, bytes) else out) + f"\n[timed out at {limit} s]"
    log.write_text(text)
    return code, time.perf_counter() - t, text


def _junit(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} | {
        "failed": failed}


def _tagged(text: str, tag: str) -> Any:
    match = re.search(rf"{tag} (\{{.*\}})", text)
    return json.loads(match.group(1)) if match else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    parser.add_argument("--test-limit", type=float, default=300.0)
    parser.add_argument("--bench-limit", type=float, default=200.0)
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    summary: dict[str, Any] = {
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "gpus": torch.cuda.device_count(),
    }
    code, seconds, text = _run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-s", "-q", "-p",
         "no:cacheprovider", f"--junitxml={args.out / 'junit.xml'}"],
        args.out / "pytest.log", args.test_limit)
    summary["tests"] = {"exit": code, "seconds": round(seconds, 1),
                        **_junit(args.out / "junit.xml")}
    summary["peaks"] = _tagged(text, "GPU_SUITE_PEAKS")
    summary["probe"] = _tagged(text, "GPU_SUITE_PROBE")
    ok = code == 0
    if not args.skip_bench:
        code, seconds, _ = _run(
            [sys.executable, "-m", "benchmarks.suite", "--rounds", "2", "--workloads",
             BENCH_WORKLOADS, "--out", str(args.out / "suite.md"),
             "--json", str(args.out / "suite.json")],
            args.out / "suite.log", args.bench_limit)
        summary["bench"] = {"exit": code, "seconds": round(seconds, 1)}
        if (args.out / "suite.json").exists():
            summary["bench"]["results"] = json.loads((args.out / "suite.json").read_text())
        ok = ok and code == 0
    (args.out / "gpu_suite.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "bench"}, indent=2))
    print(f"written: {args.out}/gpu_suite.json")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
