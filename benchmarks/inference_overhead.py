"""Inference overhead of one LoRA (or DoRA) adapter: medpeft vs the plain timm model, PEFT alongside.

For each backbone and batch size, in a fresh process: the plain timm ViT (the base), the
model :func:`medpeft.adapt` gives (q+v LoRA r=4 + head, random ``B`` so the adapter acts;
eval + ``no_grad``, the adapter not merged: its layers serve the cached merged weight),
the same model with the cache off (``cache_merged_weights(model, False)``: the unmerged
``W x + s B A x`` path, what every call paid before the cache), the adapter folded in by
``merge_lora``, two tasks alternating call by call (the cache rebuilt at every call), and
Hugging Face PEFT's unmerged LoRA (rank 2r on the fused ``qkv``, as
``bench_lora_vs_peft.py`` puts it on timm). Variants run in turns within each round (the
first of the round rotates), each between two runs of the base, and is reported as the
median over rounds of its time divided by the geometric mean of those two base times, so
load from other processes cancels. Times are the process's CPU time (``time.process_time``):
on a machine shared with other jobs, wall time also counts the waits for a core.

``--method dora`` runs the same with DoRA adapters (random ``B`` and magnitudes; PEFT with
``use_dora=True``): there the cache holds DoRA's merged ``W'`` and "cache off" recomputes
the row norms at every call.

Run: ``OMP_NUM_THREADS=1 python benchmarks/inference_overhead.py [--seconds 60] [--method dora]``;
the table is printed and written to ``benchmarks/results/inference_overhead[_dora].md``.
"""

from __future__ import annotations

import medpeft  # first: its torchvision shim must precede timm/peft

# isort: split
import argparse
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import peft
import timm
import torch
from torch import nn

from medpeft.methods import DoraSettings, LoraSettings
from medpeft.methods.dora.attach import add_dora
from medpeft.methods.lora.attach import add_lora, cache_merged_weights, merge_lora
from medpeft.routing import route

NUM_CLASSES = 4
RANK = 4
RESULTS = Path(__file__).parent / "results"
METHODS = {"lora": (LoraSettings, add_lora, "LoRA"), "dora": (DoraSettings, add_dora, "DoRA")}
VARIANTS = ("medpeft", "cache off", "merged", "2 tasks alternating", "peft unmerged")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget of each configuration")
    parser.add_argument("--min-rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--method", choices=sorted(METHODS), default="lora")
    parser.add_argument("--output", type=Path, help="default: results/inference_overhead.md (_dora.md for DoRA)")
    args = parser.parse_args(argv)
    suffix = "" if args.method == "lora" else f"_{args.method}"
    args.output = args.output or RESULTS / f"inference_overhead{suffix}.md"
    return args


def randomize_lora(model: nn.Module, seed: int) -> None:
    """Random ``B`` (zero at init) and DoRA magnitudes so the adapter changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
            if "lora_magnitude" in name:
                param.mul_(1 + 0.1 * torch.randn(param.shape, generator=generator))


def medpeft_model(name: str, img_size: int, method: str, tasks: int = 1) -> nn.Module:
    """What :func:`medpeft.adapt` gives (eval mode), with ``tasks`` adapters ``t0``, ``t1``..."""
    torch.manual_seed(0)
    settings_type, add_adapter, _ = METHODS[method]
    settings = settings_type(rank=RANK, alpha=float(RANK))
    adapted = medpeft.adapt(name, settings, NUM_CLASSES, img_size=img_size, adapter_name="t0")
    for task in range(1, tasks):
        add_adapter(adapted.model, rank=RANK, alpha=float(RANK), adapter_name=f"t{task}")
    randomize_lora(adapted, seed=1)
    return adapted.eval()


def peft_model(name: str, img_size: int, method: str) -> nn.Module:
    """PEFT's LoRA on timm's fused ``qkv`` (rank 2r: q and v of medpeft's r each, as a free LoRA)."""
    torch.manual_seed(0)
    base = timm.create_model(name, num_classes=NUM_CLASSES, img_size=img_size)
    config = peft.LoraConfig(r=2 * RANK, lora_alpha=2 * RANK, target_modules=["qkv"], use_dora=method == "dora")
    model = peft.get_peft_model(base, config)
    randomize_lora(model, seed=1)
    return model.eval()


def variants(
    name: str, batch: int, img_size: int, method: str
) -> tuple[dict[str, Callable[[], torch.Tensor]], dict]:
    """One no-argument forward per variant (plus the base), and the exactness checks."""
    torch.manual_seed(0)
    base = timm.create_model(name, num_classes=NUM_CLASSES, img_size=img_size).eval()
    ours, off, merged = (medpeft_model(name, img_size, method) for _ in range(3))
    cache_merged_weights(off, False)
    merge_lora(merged)
    two = medpeft_model(name, img_size, method, tasks=2)
    theirs = peft_model(name, img_size, method)
    x = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(2))
    turn = iter(range(10**9))

    def alternating() -> torch.Tensor:
        with route(adapters=f"t{next(turn) % 2}"):
            return two(x)

    forwards = {
        "base": lambda: base(x),
        "medpeft": lambda: ours(x),
        "cache off": lambda: off(x),
        "merged": lambda: merged(x),
        "2 tasks alternating": alternating,
        "peft unmerged": lambda: theirs(x),
    }
    with torch.no_grad():
        checks = {
            "max |medpeft - cache off|": (ours(x) - off(x)).abs().max().item(),
            "max |medpeft - merged|": (ours(x) - merged(x)).abs().max().item(),
        }
    return forwards, checks


def measure(name: str, batch: int, args: argparse.Namespace) -> dict:
    """Median ratio to the base of each variant: each timed between two base forwards and
    divided by their geometric mean, so load that changes during a round cancels too."""
    torch.set_num_threads(args.threads)
    forwards, checks = variants(name, batch, args.img_size, args.method)
    base = forwards.pop("base")
    ratios: dict[str, list[float]] = {v: [] for v in VARIANTS}
    base_times: list[float] = []
    load_before = os.getloadavg()[0]
    with torch.no_grad():
        for forward in (base, *forwards.values()):  # warm-up (and the first build of the merged cache)
            forward()
        start = time.perf_counter()
        before = timed(base)
        rounds = 0
        while rounds < args.min_rounds or time.perf_counter() - start < args.seconds:
            for variant in VARIANTS[rounds % len(VARIANTS) :] + VARIANTS[: rounds % len(VARIANTS)]:
                elapsed, after = timed(forwards[variant]), timed(base)
                ratios[variant].append(elapsed / (before * after) ** 0.5)
                base_times.append(after)
                before = after
            rounds += 1
    return {
        "model": name,
        "batch": batch,
        "rounds": rounds,
        "base_ms": 1e3 * statistics.median(base_times),
        "ratios": {v: statistics.median(r) for v, r in ratios.items()},
        "checks": checks,
        "load": (load_before, os.getloadavg()[0]),
    }


def timed(forward: Callable[[], torch.Tensor]) -> float:
    """CPU seconds one call of ``forward`` takes (the process's: time spent waiting for a
    core taken by other jobs does not count; with one thread, the wall time of an idle machine)."""
    tic = time.process_time()
    forward()
    return time.process_time() - tic


def _child(name: str, batch: int, args: argparse.Namespace, queue: mp.Queue) -> None:
    queue.put(measure(name, batch, args))


def isolated(name: str, batch: int, args: argparse.Namespace) -> dict:
    """:func:`measure` in a fresh process (no allocator or cache state from other configurations)."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(name, batch, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    header = "| model | batch | base (CPU ms) | " + " | ".join(VARIANTS) + " | rounds | load avg |"
    rows = [header, "|---|---:|---:|" + "---:|" * len(VARIANTS) + "---:|---|"]
    for r in results:
        ratios = " | ".join(f"{r['ratios'][v]:.3f}" for v in VARIANTS)
        load = f"{r['load'][0]:.1f} -> {r['load'][1]:.1f}"
        rows.append(
            f"| {r['model']} | {r['batch']} | {r['base_ms']:.1f} | {ratios} | {r['rounds']} | {load} |"
        )
    worst = max(max(r["checks"].values()) for r in results)
    label = METHODS[args.method][2]
    setup = (
        f"CPU, {args.threads} thread(s) (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
        f"{os.cpu_count()} cores shared with other jobs; torch {torch.__version__}, timm {timm.__version__}, "
        f"peft {peft.__version__}; {args.img_size} px, eval + no_grad; q+v {label} r={RANK} (PEFT: qkv r={2 * RANK}); "
        f"CPU time of the process per forward; ratios: medians over rounds of time / geometric "
        f"mean of the base runs just before and after; "
        f"largest |medpeft - unmerged or merged| logit difference {worst:.1e}"
    )
    return "\n".join([f"# Inference overhead of one {label} adapter", "", setup, "", *rows, ""])


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    results = []
    for name in args.models:
        for batch in args.batches:
            results.append(isolated(name, batch, args))
            print(results[-1], flush=True)
    table = markdown(results, args)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    return table


if __name__ == "__main__":
    main()
