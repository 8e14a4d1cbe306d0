"""Forward speed of one merged task: torch eager vs onnxruntime (CPU), each configuration in its own process.

The task is what ``medpeft export --merged/--onnx`` writes: a timm ViT (random weights) with a
q+v LoRA (rank 8, random ``B`` and head) folded in (`medpeft.adapters_io.export.merged_model`),
as a plain timm model for torch and as the ONNX file `medpeft.adapters_io.export.export_onnx`
writes for onnxruntime (``CPUExecutionProvider``, ``ORT_ENABLE_ALL`` graph optimizations,
``intra_op_num_threads`` = threads, one inter-op thread, idle threads not spinning). Torch
runs eval + ``no_grad`` with ``torch.set_num_threads(threads)``; every child process gets
``OMP_NUM_THREADS=threads`` and the sleeping-OpenMP settings of ``medpeft serve``.

For every input size, batch size and thread count, torch and onnxruntime run in turns
(``--rounds`` rounds, the first of each round alternating) in fresh processes; each
process warms up, then times forwards for ``--seconds`` (wall time) and reports the
median. The logits of both runtimes on one batch of 16 are compared (max abs difference).

Run: ``python benchmarks/onnx_forward.py`` (ViT-S/16 at 224 and 112 px, batches 1 and 16,
1 and 2 threads, about 10 minutes on 2 idle cores); the table goes to ``benchmarks/results/onnx_forward.md``.
"""

from __future__ import annotations

import os

import medpeft  # noqa: F401  (torchvision shim before timm)
from medpeft.threads import SLEEPING_THREADS

os.environ.update(SLEEPING_THREADS)  # before torch is imported, as in serve

# isort: split
import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from serve import time_calls, write_adapters  # benchmarks/serve.py: its adapters, the timing loop

from medpeft.adapters_io.export import export_onnx, merged_model

RESULTS = Path(__file__).parent / "results" / "onnx_forward.md"
TASK = "blood"  # the rank-8 adapter of benchmarks/serve.py
RUNTIMES = ("torch", "onnxruntime")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224", help="timm ViT (random weights)")
    parser.add_argument("--img-size", type=int, nargs="+", default=[224, 112])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=6.0, help="timed forwards per process")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--one", nargs=5, metavar=("RUNTIME", "ADAPTER", "ONNX", "BATCH", "THREADS"),
                        help=argparse.SUPPRESS)  # a child: time one configuration, print JSON
    return parser.parse_args(argv)


def ort_session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session as the server would open it."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_one(runtime: str, adapter: Path, onnx_file: Path, batch: int, threads: int, seconds: float) -> dict:
    """Median wall and CPU (all threads) ms of one forward of ``batch`` images (child process)."""
    torch.set_num_threads(threads)
    model, config = merged_model(adapter)
    size = config.preprocessing.size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    if runtime == "torch":
        def forward() -> None:
            with torch.no_grad():
                model(images)
    else:
        session, array = ort_session(onnx_file, threads), images.numpy()

        def forward() -> None:
            session.run(["logits"], {"image": array})
    return time_calls(forward, seconds)


def run_child(runtime: str, adapter: Path, onnx_file: Path, batch: int, threads: int, seconds: float) -> dict:
    """`time_one` in a fresh process with ``OMP_NUM_THREADS=threads``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **SLEEPING_THREADS}
    command = [sys.executable, __file__, "--seconds", str(seconds),
               "--one", runtime, str(adapter), str(onnx_file), str(batch), str(threads)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def logit_difference(adapter: Path, onnx_file: Path) -> float:
    """Max abs difference of torch's and onnxruntime's logits on one batch of 16."""
    model, config = merged_model(adapter)
    size = config.preprocessing.size
    images = torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(1))
    (logits,) = ort_session(onnx_file, 2).run(["logits"], {"image": images.numpy()})
    with torch.no_grad():
        expected = model(images).numpy()
    return float(np.abs(logits - expected).max())


def measure_size(args: argparse.Namespace, folder: Path, size: int) -> tuple[list[str], float]:
    """Table rows of one input size, and the logit difference."""
    (folder / str(size)).mkdir()
    adapter = write_adapters(folder / str(size), args.model, size) / TASK
    onnx_file = folder / f"{size}.onnx"
    export_onnx(adapter, onnx_file)
    difference = logit_difference(adapter, onnx_file)
    rows = []
    for batch in args.batches:
        for threads in args.threads:
            runs: dict[str, list[dict]] = {runtime: [] for runtime in RUNTIMES}
            for round_index in range(args.rounds):
                order = RUNTIMES if round_index % 2 == 0 else RUNTIMES[::-1]
                for runtime in order:
                    runs[runtime].append(run_child(runtime, adapter, onnx_file, batch, threads, args.seconds))
            (torch_ms, ort_ms), (torch_cpu, ort_cpu) = (
                [statistics.median(run[key] for run in runs[runtime]) for runtime in RUNTIMES] for key in ("ms", "cpu_ms")
            )
            rows.append(
                f"| {size} | {batch} | {threads} | {torch_ms:.1f} | {ort_ms:.1f} | {1000 * batch / torch_ms:.1f} "
                f"| {1000 * batch / ort_ms:.1f} | **{torch_ms / ort_ms:.2f}x** | {torch_cpu:.0f} | {ort_cpu:.0f} "
                f"| {torch_cpu / ort_cpu:.2f}x |"
            )
            print(rows[-1], flush=True)
    return rows, difference


def report(args: argparse.Namespace, rows: list[str], differences: dict[int, float], load: tuple) -> str:
    """The markdown page."""
    command = "python benchmarks/onnx_forward.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    diffs = ", ".join(f"{size} px {diff:.1e}" for size, diff in differences.items())
    return "\n".join([
        "# Forward of a merged task: torch eager vs onnxruntime (CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"{args.model}, random weights, q+v LoRA rank 8 merged (as `medpeft export` writes it); torch "
        f"{torch.__version__}, onnxruntime {onnxruntime.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs shared with other work (load average before {load[0]:.2f}, after {load[1]:.2f}). "
        "Each cell: its own process, `OMP_NUM_THREADS` = threads, torch `set_num_threads(threads)`, onnxruntime "
        "`intra_op_num_threads` = threads (1 inter-op thread, `ORT_ENABLE_ALL`, no spinning); median wall ms of "
        f"one forward over {args.seconds:g} s, median of {args.rounds} rounds (runtimes alternating). Speed-up: "
        "torch ms / onnxruntime ms (> 1: onnxruntime faster). CPU ms: the process's CPU time per forward, all "
        "threads (less disturbed by other jobs than wall time; at 2 threads it adds both threads' time).",
        "",
        "| px | batch | threads | torch ms | onnxruntime ms | torch img/s | onnxruntime img/s | onnxruntime speed-up "
        "| torch CPU ms | onnxruntime CPU ms | CPU-time ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Max abs logit difference (batch of 16, 3 classes): {diffs}.",
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        runtime, adapter, onnx_file, batch, threads = args.one
        print(json.dumps(time_one(runtime, Path(adapter), Path(onnx_file), int(batch), int(threads), args.seconds)))
        return
    load_before = os.getloadavg()[0]
    rows: list[str] = []
    differences: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.img_size:
            size_rows, differences[size] = measure_size(args, Path(tmp), size)
            rows += size_rows
    page = report(args, rows, differences, (load_before, os.getloadavg()[0]))
    args.output.write_text(page)
    print(page)


if __name__ == "__main__":
    main()
