"""Wall time of ``medpeft demo`` by ``--threads``, on idle cores and beside one busy process.

Each configuration runs ``python -m medpeft demo --quiet --threads N --output TMP`` in a
fresh process and a fresh temporary folder; "busy" starts ``python -c 'while True: pass'``
first and kills it after. Recorded: wall seconds, the demo's CPU seconds (user + system;
threads spinning while they wait show up here) and the 1-minute load average before the run
(other work on a shared machine). The table (markdown) goes to ``--out`` and stdout.

Run: ``python benchmarks/demo_threads.py --threads 1 2 4 --out benchmarks/results/threads.md``
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY = [sys.executable, "-c", "while True: pass"]


def demo_seconds(threads: int, busy: bool, extra_env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one demo at ``threads``, with or without a busy process beside it."""
    env = {**os.environ, **extra_env}
    env.pop("OMP_NUM_THREADS", None)  # --threads decides
    loader = subprocess.Popen(BUSY) if busy else None
    try:
        with tempfile.TemporaryDirectory() as folder:
            command = [sys.executable, "-m", "medpeft", "demo", "--quiet", "--threads", str(threads),
                       "--output", str(Path(folder) / "demo")]
            start, cpu = time.perf_counter(), _children_cpu()
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
            return time.perf_counter() - start, _children_cpu() - cpu
    finally:
        if loader is not None:
            loader.kill()
            loader.wait()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--loads", nargs="+", choices=("idle", "busy"), default=["idle", "busy"])
    parser.add_argument("--spin", action="store_true", help="OMP_WAIT_POLICY=ACTIVE (the old spinning)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    extra = {"OMP_WAIT_POLICY": "ACTIVE"} if args.spin else {}
    rows = []
    for load in args.loads:
        for threads in args.threads:
            load_before = os.getloadavg()[0]
            wall, cpu = demo_seconds(threads, load == "busy", extra)
            other = "one busy process" if load == "busy" else "none"
            rows.append(f"| {threads} | {other} | {wall:.0f} | {cpu:.0f} | {load_before:.1f} |")
            print(rows[-1], flush=True)
    table = "\n".join(["| --threads | other load | wall (s) | demo CPU (s) | load before |",
                       "|---:|---|---:|---:|---:|", *rows])
    note = (f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
            f"{'spinning (OMP_WAIT_POLICY=ACTIVE)' if args.spin else 'default wait policy (PASSIVE)'}")
    if args.out:
        args.out.write_text(f"{table}\n\n{note}\n")
    print(note)


if __name__ == "__main__":
    main()
