"""Run CLI cases in a worker process: one ``main(argv)`` per case, stdout/stderr captured at the fd level.

A worker that dies (a crash) or overruns the time limit (a hang) is recorded and replaced, so one bad
case cannot stop the run.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

WORKER = r"""
import json, os, sys, warnings
warnings.filterwarnings("ignore")
from quantgraph.cli import main
results = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    case = json.loads(line)
    os.chdir(case["cwd"])
    out = os.open(case["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(out, 1); os.dup2(err, 2)
    try:
        rc = main(case["argv"])
    except SystemExit as done:
        rc = done.code if isinstance(done.code, int) else 2
    except BaseException as exc:
        import traceback; traceback.print_exc(); rc = -1000
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    for fd in (out, err, *saved):
        os.close(fd)
    results.write(json.dumps({"rc": rc}) + "\n"); results.flush()
"""


@dataclass
class Outcome:
    rc: int | None  # None: hang
    stderr: str
    crashed: bool = False
    hung: bool = False


class Worker:
    def __init__(self, env: dict[str, str], scratch: Path, time_limit: float) -> None:
        self.env, self.scratch, self.time_limit = env, scratch, time_limit
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", WORKER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=self.env,
                text=True,
                bufsize=1,
            )
        return self.proc

    def run(self, argv: list[str], cwd: Path) -> Outcome:
        proc = self._start()
        out, err = self.scratch / "case.out", self.scratch / "case.err"
        case = {"argv": argv, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
        proc.stdin.write(json.dumps(case) + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], self.time_limit)
        line = proc.stdout.readline() if ready else ""
        stderr = err.read_text(errors="replace") if err.exists() else ""
        if not ready:
            self.close()
            return Outcome(None, stderr, hung=True)
        if not line:  # the worker died mid-case
            code = proc.wait()
            self.proc = None
            return Outcome(code, stderr, crashed=True)
        return Outcome(json.loads(line)["rc"], stderr)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def fuzz_env(repo: Path, home: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTGRAPH_")}
    data_root = os.environ.get("QUANTGRAPH_DATA_ROOT")
    env |= {
        "PYTHONPATH": str(repo),
        "HOME": str(home),
        "QUANTGRAPH_CACHE": str(cache),
        "OMP_NUM_THREADS": "1",
    }
    if data_root:
        env["QUANTGRAPH_DATA_ROOT"] = data_root
    return env
