"""Shared helpers for the benchmark scripts: fresh-process workers, machine info, RESULTS.md sections."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
RESULT_PREFIX = "@@RESULT@@ "


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    """Versions of the libraries being compared, read in a child process so the parent stays light."""
    code = "import json, torch, pyblp; print(json.dumps({'torch': torch.__version__, 'pyblp': pyblp.__version__}))"
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def worker_env(threads: int | None) -> dict[str, str]:
    """Environment for a worker; with ``threads`` set, pin every BLAS/OpenMP pool to that many threads."""
    env = dict(os.environ)
    if threads is not None:
        env.update({name: str(threads) for name in THREAD_VARS})
    return env


def emit(result: dict) -> None:
    """Worker side: print the result as one tagged JSON line on stdout."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(args: list[str], threads: int | None) -> dict:
    """Run ``python <args>`` in a fresh process and return the JSON dict it emitted."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=worker_env(threads))
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(f"worker {args} emitted no result:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def header() -> str:
    """RESULTS.md header describing the machine and library versions."""
    ver = versions()
    return (
        "# Benchmarks\n\n"
        "Each section is written by one script in `benchmarks/`; every timed repetition runs in a fresh Python "
        "process.\n\n"
        f"- machine: {len(os.sched_getaffinity(0))} cores (`nproc`), CPU `{cpu_model()}`\n"
        f"- python {platform.python_version()}, torch {ver['torch']}, pyblp {ver['pyblp']}\n"
        f"- header written {datetime.date.today().isoformat()}\n"
    )


def update_section(name: str, body: str) -> Path:
    """Replace (or append) the ``<!-- name:start -->`` ... ``<!-- name:end -->`` section of RESULTS.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = RESULTS.read_text() if RESULTS.exists() else header()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(text.rstrip("\n") + "\n")
    return RESULTS
