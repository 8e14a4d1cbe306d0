"""Forward of the serving bank at batch 16 by frozen-weight precision, each recipe in its own process.

The bank is `benchmarks/serve.py`'s (two LoRA tasks, q+v ranks 4 and 8, on one random ViT),
served as `medpeft serve` serves it (`AdapterBank.predict`, tasks alternating in the batch):

* ``float32``: the default.
* ``bfloat16-layers``: the frozen Linear/Conv weights in bf16 (`medpeft.frozen_dtype.cast_frozen`:
  each such layer casts its input to bf16 and its output back to fp32); adapters, heads, norms,
  attention and the activations between layers fp32 (the bank's ``autocast_dtype`` set to None).
* ``bfloat16+autocast``: what ``medpeft serve --frozen-dtype bfloat16`` runs: the same bank, its
  forwards also under ``torch.autocast('cpu', torch.bfloat16)`` (attention, LoRA and head
  matmuls in bf16 too).
* ``int8+autocast``: what ``medpeft serve --frozen-dtype int8`` runs: the frozen Linear weights
  int8 (torchao weight-only, one scale per row), the patch embedding bf16, forwards under bf16
  autocast as above.

Every recipe runs ``--rounds`` times in a fresh process (``OMP_NUM_THREADS`` = ``--threads``,
torch ``set_num_threads`` the same, the sleeping-OpenMP settings of ``medpeft serve``),
recipes alternating; each process warms up, then times forwards for ``--seconds`` and reports
the median wall and CPU ms, and the bank's backbone bytes. Agreement with ``float32``: the probabilities of ``--images``
random images (normal noise, as preprocessed inputs; tasks alternating), max abs difference
and top-1 agreement (`serve.agreement`).

Run: ``python benchmarks/serve_precision.py`` (224 and 112 px, about 5 minutes on 2 cores);
the table goes to ``benchmarks/results/serve_precision.md``.
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

import torch
from serve import TASKS, agreement, bank_probabilities, time_calls, write_adapters  # benchmarks/serve.py

from medpeft.bank import AdapterBank

RESULTS = Path(__file__).parent / "results" / "serve_precision.md"
RECIPES = ("float32", "bfloat16-layers", "bfloat16+autocast", "int8+autocast")
DTYPES = {"float32": torch.float32, "int8+autocast": torch.int8}  # the others: bfloat16
BATCH = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224", help="timm ViT (random weights)")
    parser.add_argument("--img-size", type=int, nargs="+", default=[224, 112])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed forwards per process")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=320, help="random images for the agreement")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--one", nargs=3, metavar=("RECIPE", "DIR", "SIZE"), help=argparse.SUPPRESS)  # a child
    return parser.parse_args(argv)


def recipe_bank(recipe: str, directory: Path) -> AdapterBank:
    """The bank of ``recipe``."""
    bank = AdapterBank.from_directory(directory, device="cpu", frozen_dtype=DTYPES.get(recipe, torch.bfloat16))
    if recipe == "bfloat16-layers":
        bank.autocast_dtype = None
    return bank


def time_one(recipe: str, directory: Path, size: int, seconds: float) -> dict:
    """Median wall and CPU ms of one batch-16 forward of ``size`` px images, and the backbone's
    MiB (child process)."""
    bank = recipe_bank(recipe, directory)
    generator = torch.Generator().manual_seed(0)
    names = [list(TASKS)[i % len(TASKS)] for i in range(BATCH)]
    inputs = [{"image": torch.randn(3, size, size, generator=generator)} for _ in names]

    def forward() -> None:
        bank.predict(names, inputs)

    return time_calls(forward, seconds) | {"backbone_mib": bank.memory()["backbone_bytes"] / 2**20}


def run_child(recipe: str, directory: Path, size: int, args: argparse.Namespace) -> dict:
    """`time_one` in a fresh process with ``OMP_NUM_THREADS=threads``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), **SLEEPING_THREADS}
    command = [sys.executable, __file__, "--seconds", str(args.seconds), "--threads", str(args.threads),
               "--one", recipe, str(directory), str(size)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def agreements(directory: Path, size: int, count: int) -> dict[str, tuple[float, float]]:
    """Recipe -> (max abs probability difference from float32, top-1 agreement)."""
    reference = bank_probabilities(recipe_bank("float32", directory), size, count)
    return {recipe: agreement(reference, bank_probabilities(recipe_bank(recipe, directory), size, count))
            for recipe in RECIPES[1:]}


def measure_size(args: argparse.Namespace, folder: Path, size: int) -> list[str]:
    """Table rows of one input size."""
    (folder / str(size)).mkdir()
    directory = write_adapters(folder / str(size), args.model, size)
    agree = agreements(directory, size, args.images)
    runs: dict[str, list[dict]] = {recipe: [] for recipe in RECIPES}
    for round_index in range(args.rounds):
        order = RECIPES if round_index % 2 == 0 else RECIPES[::-1]
        for recipe in order:
            runs[recipe].append(run_child(recipe, directory, size, args))
    ms = {recipe: statistics.median(run["ms"] for run in runs[recipe]) for recipe in RECIPES}
    cpu = {recipe: statistics.median(run["cpu_ms"] for run in runs[recipe]) for recipe in RECIPES}
    mib = {recipe: runs[recipe][0]["backbone_mib"] for recipe in RECIPES}
    rows = []
    for recipe in RECIPES:
        difference, top1 = agree.get(recipe, (0.0, 1.0))
        rows.append(f"| {size} | {recipe} | {ms[recipe]:.0f} | {1000 * BATCH / ms[recipe]:.1f} | "
                    f"**{ms['float32'] / ms[recipe]:.2f}x** | {cpu[recipe]:.0f} | {mib[recipe]:.1f} | {difference:.1e} | "
                    f"{top1:.1%} |")
        print(rows[-1], flush=True)
    return rows


def report(args: argparse.Namespace, rows: list[str], load: tuple) -> str:
    """The markdown page."""
    command = "python benchmarks/serve_precision.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    return "\n".join([
        "# Serving forward by frozen-weight precision (CPU, batch 16)",
        "",
        f"Command: `{command}`",
        "",
        f"{args.model}, random weights, the two LoRA tasks of `benchmarks/serve.py` alternating in the batch "
        f"(`AdapterBank.predict`); torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs shared with other work (load average before {load[0]:.2f}, after {load[1]:.2f}). "
        f"Each recipe: its own process, `OMP_NUM_THREADS={args.threads}`; median wall ms of one batch-{BATCH} "
        f"forward over {args.seconds:g} s, median of {args.rounds} rounds (recipes alternating). Agreement "
        f"with float32: {args.images} random images, 3 classes.",
        "",
        "| px | recipe | ms / batch | img/s | speed-up | CPU ms | backbone MiB | max abs prob diff | top-1 agreement |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        recipe, directory, size = args.one
        torch.set_num_threads(args.threads)
        print(json.dumps(time_one(recipe, Path(directory), int(size), args.seconds)))
        return
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.img_size:
            rows += measure_size(args, Path(tmp), size)
    page = report(args, rows, (load_before, os.getloadavg()[0]))
    args.output.write_text(page)
    print(page)


if __name__ == "__main__":
    main()
