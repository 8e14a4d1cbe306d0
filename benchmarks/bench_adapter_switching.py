"""Task switching on one frozen backbone: medpeft vs Hugging Face PEFT, side by side.

MeLo's deployment claim is one frozen ViT serving many diagnosis tasks with
"extremely fast" switching. This measures, for N task adapters (q+v LoRA r=4 +
head) on one ViT-B/16: loading an adapter from disk onto the running model,
switching task (medpeft: entering ``route(adapters=name)``, which touches no
weights and no model state; PEFT: ``set_adapter``), and, for scale, building the model from scratch for
one task (what a deployment without adapter switching pays). PEFT loads the same
adapters exported with ``medpeft export``.

Run: ``python benchmarks/bench_adapter_switching.py [--model vit_base_patch16_224] [--tasks 4]``;
the table is printed and written to ``benchmarks/results/adapter_switching.md``.
"""

from __future__ import annotations

import medpeft  # noqa: F401  (torchvision shim before timm/peft)

# isort: split
import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import peft
import timm
import torch

from medpeft.adapters_io.folder import load_adapter, save_adapter
from medpeft.adapters_io.peft import export_peft
from medpeft.model import ModelSpec, build_model
from medpeft.routing import route

NUM_CLASSES = 4
RESULTS = Path(__file__).parent / "results" / "adapter_switching.md"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--tasks", type=int, default=4, help="task adapters on the backbone")
    parser.add_argument("--switches", type=int, default=200, help="switches timed")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args()


def median_ms(action: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``action`` in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def write_adapters(spec: ModelSpec, folder: Path, tasks: int) -> tuple[list[Path], list[Path]]:
    """Train-free task adapters (random B so they differ) in medpeft and PEFT formats."""
    ours, theirs = [], []
    for task in range(tasks):
        torch.manual_seed(task)
        model = build_model(spec)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if ".lora_B" in name:
                    param.normal_(0, 0.02)
        labels = [f"t{task}_c{i}" for i in range(NUM_CLASSES)]
        ours.append(save_adapter(model, folder / f"medpeft_t{task}", spec, labels, "multiclass"))
        theirs.append(export_peft(model, folder / f"peft_t{task}"))
    return ours, theirs


def enter_route(name: str) -> None:
    """What picking task ``name`` for the calls inside costs (the block itself is empty)."""
    with route(adapters=name):
        pass


def bench_medpeft(spec: ModelSpec, adapters: list[Path], switches: int) -> dict[str, float]:
    model = build_model(spec).eval()
    load = [median_ms(lambda a=a, i=i: load_adapter(a, model, adapter_name=f"t{i}"), 1)
            for i, a in enumerate(adapters)]
    names = [f"t{i}" for i in range(len(adapters))]
    cycle = iter(names * switches)
    switch = median_ms(lambda: enter_route(next(cycle)), switches)
    cold = median_ms(lambda: load_adapter(adapters[0], allow_random_backbone=True), 3)
    return {"load adapter onto running model (ms)": statistics.median(load),
            "switch task (ms)": switch, "build model + load one task (ms)": cold}


def bench_peft(name: str, adapters: list[Path], switches: int) -> dict[str, float]:
    base = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)
    start = time.perf_counter()
    model = peft.PeftModel.from_pretrained(base, str(adapters[0]), adapter_name="t0").eval()
    load = [(time.perf_counter() - start) * 1e3]
    for i, adapter in enumerate(adapters[1:], start=1):
        load.append(median_ms(lambda a=adapter, i=i: model.load_adapter(str(a), adapter_name=f"t{i}"), 1))
    cycle = iter([f"t{i}" for i in range(len(adapters))] * switches)
    switch = median_ms(lambda: model.set_adapter(next(cycle)), switches)

    def cold() -> None:
        fresh = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)
        peft.PeftModel.from_pretrained(fresh, str(adapters[0]))

    return {"load adapter onto running model (ms)": statistics.median(load[1:] or load),
            "switch task (ms)": switch, "build model + load one task (ms)": median_ms(cold, 3)}


def markdown(results: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    ours, theirs = results["medpeft"], results["peft"]
    lines = [
        "# Task switching on one frozen backbone: medpeft vs PEFT",
        "",
        f"{args.model}, {args.tasks} task adapters (q+v LoRA r=4 + head), CPU, "
        f"torch {torch.__version__}, peft {peft.__version__}; median times",
        "",
        "| metric | medpeft | peft | medpeft/peft |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {k} | {ours[k]:.3f} | {theirs[k]:.3f} | {ours[k] / theirs[k]:.2f} |" for k in ours]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    # The adapters are untrained and the backbone random on purpose: only time is measured.
    warnings.filterwarnings("ignore", message=".*randomly initialised backbone")
    spec = ModelSpec(args.model, NUM_CLASSES)
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = write_adapters(spec, Path(tmp), args.tasks)
        results = {"medpeft": bench_medpeft(spec, ours, args.switches),
                   "peft": bench_peft(args.model, theirs, args.switches)}
    table = markdown(results, args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
