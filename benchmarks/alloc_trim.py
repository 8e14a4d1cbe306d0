"""Issue 19 experiment: does glibc's ``malloc_trim(0)`` at points of the training step cut the
step's resident-memory peak of ``lora+ckpt+bf16`` (ViT-L/16, batch 8, 224 px, CPU), and at
what cost in step time?

Placements (``--variants``): ``none``; ``build`` (once, after the build); ``fwd`` (after the
forward, before backward); ``fblockN`` (in the forward, after every N-th checkpointed block);
``blockN`` (in backward, every N checkpointed blocks: a hook on the block's output gradient,
which runs once the later blocks' backward and recomputation are done); ``step`` (after ``optimizer.step``); combinations joined with ``,`` (``fwd,block4``). The model is built as
``benchmarks/memory.py`` builds it. Every variant runs in its own process, the variants
interleaved, ``--repeats`` rounds; the table holds medians.

Per process: *built*: RSS after the build; *step peak*: the highest ``VmHWM`` above *built*
over the steps' forwards and backwards (``VmHWM`` reset through ``/proc/self/clear_refs``
before each and read after it); *whole*: the larger of the build's peak and built + step peak; *s/step*, *cpu s/step* (the process's CPU time, less load-dependent; *sys*: its kernel part), *faults*
(minor page faults per step, thousands): medians of the steps after the first.

Run: ``python benchmarks/alloc_trim.py --model vit-l`` (results: benchmarks/results/memory-breakdown.md).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import memory

MIB = 1024 ** 2
_LIBC = ctypes.CDLL("libc.so.6")
TRIMS = {"count": 0}


def trim() -> None:
    """Return the heap's free pages to the OS."""
    _LIBC.malloc_trim(0)
    TRIMS["count"] += 1


def add_block_trims(model: Any, every: int, backward: bool) -> None:
    """``trim`` every ``every`` checkpointed blocks: right after the block's forward, or in
    backward when the gradient of the block's output arrives (the later blocks' backward done)."""
    from medpeft.checkpointing import backbone_blocks

    def on_output(_module: Any, _inputs: Any, output: Any) -> None:
        if not output.requires_grad:
            return
        if backward:
            output.register_hook(lambda _grad: trim())
        else:
            trim()

    for index, block in enumerate(backbone_blocks(model)):
        if index % every == 0:
            block.register_forward_hook(on_output)


def phase_peak(built: int) -> int:
    """``VmHWM`` above ``built`` since the last reset, then reset it."""
    peak = memory.status_kib("VmHWM") * 1024 - built
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return peak


def run_worker(key: str, config: str, variant: str, steps: int, batch: int) -> dict[str, Any]:
    """Build, train ``steps`` steps with the trims of ``variant``; memory and times."""
    import torch

    torch.manual_seed(0)
    model = memory.build(memory.MODELS[key][0], config)
    points = set(variant.split(","))
    for point in points:
        if point.startswith(("block", "fblock")):
            add_block_trims(model, int(point.lstrip("fblock")), backward=point.startswith("block"))
    if "build" in points:
        trim()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(batch) % memory.NUM_CLASSES
    model.train()
    build_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    built = memory.status_kib("VmRSS") * 1024
    forward_peaks, backward_peaks, times, cpu, system, faults = [], [], [], [], [], []
    for _ in range(steps):
        phase_peak(built)
        start, cpu_start = time.perf_counter(), time.process_time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        if "fwd" in points:
            trim()
        forward_peaks.append(phase_peak(built))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if "step" in points:
            trim()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        system.append(after.ru_stime - usage.ru_stime)
        faults.append(after.ru_minflt - usage.ru_minflt)
        backward_peaks.append(phase_peak(built))
    step_peak = max(forward_peaks + backward_peaks)
    return {"built_mib": built / MIB, "step_peak_mib": step_peak / MIB,
            "forward_peaks_mib": [round(p / MIB) for p in forward_peaks],
            "backward_peaks_mib": [round(p / MIB) for p in backward_peaks],
            "whole_gib": max(build_peak, built + step_peak) / 1024 ** 3,
            "step_s": statistics.median(times[1:] or times), "cpu_s": statistics.median(cpu[1:] or cpu),
            "system_s": statistics.median(system[1:] or system),
            "faults_k": statistics.median(faults[1:] or faults) / 1000, "trims_per_step": TRIMS["count"] // steps,
            "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(memory.MODELS), default="vit-l")
    parser.add_argument("--config", default="lora+ckpt+bf16")
    parser.add_argument("--variants", nargs="+", default=["none", "build,fblock1,block1,step", "build,fblock2,block2,step", "build,fblock4,block4,step"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    import medpeft  # noqa: F401  (torchvision shim before timm)

    if args.worker:
        torch.set_num_threads(args.threads)
        print(json.dumps(run_worker(args.model, args.config, args.worker, args.steps, args.batch)))
        return
    results: dict[str, list[dict[str, Any]]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    for _ in range(args.repeats):
        for variant in args.variants:
            command = [sys.executable, __file__, "--worker", variant, "--model", args.model, "--config", args.config,
                       "--steps", str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads)]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.setdefault(variant, []).append(result)
            print(variant, json.dumps(result), flush=True)
    print(f"\n{args.model} {args.config}, batch {args.batch}, {args.steps} steps, {args.threads} threads, "
          f"{args.repeats} rounds (medians)")
    print("| variant | built MiB | step peak above built MiB | whole GiB | s/step | cpu s/step | sys s/step "
          "| faults k/step | trims/step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    keys = ("built_mib", "step_peak_mib", "whole_gib", "step_s", "cpu_s", "system_s", "faults_k", "trims_per_step")
    for variant, runs in results.items():
        cell = [statistics.median(r[k] for r in runs) for k in keys]
        print(f"| {variant} | {cell[0]:.0f} | {cell[1]:.0f} | {cell[2]:.2f} | {cell[3]:.2f} | {cell[4]:.2f} | "
              f"{cell[5]:.2f} | {cell[6]:.0f} | {cell[7]:.0f} |")


if __name__ == "__main__":
    main()
