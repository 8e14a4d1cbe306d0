"""Many tasks on one backbone: the adapter bank vs Hugging Face PEFT, side by side.

For N task adapters (q+v LoRA r=4 + a 4-class head each) on one ViT, measures:

* switch latency: what selecting another task costs. The bank routes each call by
  name (:func:`medpeft.routing.route`, no weights touched, no model state) vs
  PEFT's ``set_adapter``.
* throughput of one batch spread over 1, 8 and 64 adapters (sample ``i`` goes to
  task ``i mod k``): the bank's mixed batch (one forward, per-sample LoRA), the same
  batch run sequentially (one forward per task), and PEFT's mixed batch
  (``model(x, adapter_names=...)``), against the bank serving the whole batch with
  one adapter.
* the adapters' own cost in one layer (block 0's ``attn.qkv`` on the batch's
  tokens): the layer's time minus its frozen Linear's, medpeft's batched per-sample
  LoRA vs PEFT's per-adapter loop.

Timings are interleaved: every repeat times each configuration once, in a rotated
order, so load from other processes hits all alike; the table shows medians.

Run: ``python benchmarks/bank.py`` (ViT-B/16, batch 64) or ``--quick`` (tiny ViT,
seconds); the table is printed and written to ``benchmarks/results/bank.md``.
"""

from __future__ import annotations

import medpeft  # noqa: F401  (torchvision shim before timm/peft)

# isort: split
import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import peft
import timm
import torch

from medpeft.adapters_io.folder import save_adapter
from medpeft.adapters_io.peft import export_peft
from medpeft.bank import AdapterBank
from medpeft.model import ModelSpec, build_model
from medpeft.routing import route

NUM_CLASSES = 4
RESULTS = Path(__file__).parent / "results" / "bank.md"
QUICK = dict(model="vit_tiny_patch16_224", img_size=32, batch=8, spreads=[1, 2, 4], repeats=3,
             switches=100, kwargs=dict(depth=2, embed_dim=32, num_heads=2, patch_size=8))
FULL = dict(model="vit_base_patch16_224", img_size=224, batch=64, spreads=[1, 8, 64], repeats=3,
            switches=2000, kwargs={})
TARGETS = {"mixed / single": 0.9, "mixed / PEFT mixed": 5.0}  # at the widest spread
SWITCH_TARGET_MS = 0.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny ViT, small batch (seconds)")
    parser.add_argument("--repeats", type=int, help="timed repeats per configuration")
    parser.add_argument("--layer-repeats", type=int, default=5, help="timed repeats of the layer part")
    parser.add_argument("--switches", type=int, help="task switches timed per method")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file for the table")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def write_adapters(args: argparse.Namespace, folder: Path, tasks: int) -> tuple[Path, list[Path]]:
    """``tasks`` adapters (random B and head, so they differ) as a bank folder and in PEFT format."""
    spec = ModelSpec(args.model, NUM_CLASSES, img_size=args.img_size, model_kwargs=dict(args.kwargs))
    model = build_model(spec)
    theirs = []
    for task in range(tasks):
        generator = torch.Generator().manual_seed(task)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if ".lora_B" in name or name.startswith("head."):
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        labels = [f"t{task}_c{i}" for i in range(NUM_CLASSES)]
        save_adapter(model, folder / "bank" / f"t{task}", spec, labels, "multiclass")
        theirs.append(export_peft(model, folder / "peft" / f"t{task}"))
    return folder / "bank", theirs


def peft_model(args: argparse.Namespace, adapters: list[Path]) -> peft.PeftModel:
    base = timm.create_model(args.model, num_classes=NUM_CLASSES, img_size=args.img_size, **args.kwargs)
    model = peft.PeftModel.from_pretrained(base, str(adapters[0]), adapter_name="t0")
    for i, adapter in enumerate(adapters[1:], start=1):
        model.load_adapter(str(adapter), adapter_name=f"t{i}")
    return model.eval()


def log(message: str, start: float = time.perf_counter()) -> None:
    """Progress on stderr (the full run takes long on a shared CPU)."""
    print(f"[{time.perf_counter() - start:7.1f} s] {message}", file=sys.stderr, flush=True)


def interleaved(actions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each action; each repeat runs all once, in a rotated order."""
    names = list(actions)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            actions[name]()
            times[name].append(time.perf_counter() - start)
        log(f"repeat {r + 1}/{repeats} done")
    return {n: statistics.median(t) for n, t in times.items()}


def switch_ms(action: Callable[[str], object], names: list[str], switches: int) -> float:
    """Median milliseconds of ``action(name)`` over a cycle of task names."""
    times = []
    for i in range(switches):
        start = time.perf_counter()
        action(names[i % len(names)])
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def route_only(name: str) -> None:
    with route(adapters=name):
        pass


def sequential(bank: AdapterBank, names: list[str], inputs: list[dict]) -> None:
    """The batch as one forward per task (the routing a single-task server must do)."""
    for task in dict.fromkeys(names):
        rows = [i for i, n in enumerate(names) if n == task]
        bank.predict([task] * len(rows), [inputs[i] for i in rows])


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = max(args.spreads)
    warnings.filterwarnings("ignore", message=".*randomly initialised backbone")
    with tempfile.TemporaryDirectory() as tmp:
        bank_dir, theirs = write_adapters(args, Path(tmp), tasks)
        log(f"wrote {tasks} adapters")
        bank = AdapterBank.from_directory(bank_dir, allow_random_backbone=True)
        for task in bank.tasks():
            bank.load(task.name)
        reference = peft_model(args, theirs)
        log("bank and PEFT model ready")
    names = [f"t{i}" for i in range(tasks)]
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(0))
    inputs = [{"image": x} for x in images]
    switch = {
        "bank: route by name": switch_ms(route_only, names, args.switches),
        "PEFT set_adapter": switch_ms(reference.set_adapter, names, args.switches),
    }
    layer = layer_costs(args, bank, reference, names)
    log("switch and layer timings done")
    bank.predict([names[0], names[-1]], inputs[:2])  # warm-up: builds the stacked-adapter caches
    _peft_forward(reference, images[:2], [names[0], names[-1]])
    actions: dict[str, Callable[[], object]] = {"single": lambda: bank.predict(["t0"] * args.batch, inputs)}
    for k in args.spreads:
        spread = [names[i % k] for i in range(args.batch)]
        actions[f"mixed {k}"] = lambda s=spread: bank.predict(s, inputs)
        actions[f"sequential {k}"] = lambda s=spread: sequential(bank, s, inputs)
        actions[f"peft {k}"] = lambda s=spread: _peft_forward(reference, images, s)
    seconds = interleaved(actions, args.repeats)
    return {"switch": switch, "layer": layer, "throughput": {n: args.batch / s for n, s in seconds.items()}}


def layer_costs(
    args: argparse.Namespace, bank: AdapterBank, reference: peft.PeftModel, names: list[str]
) -> dict[str, float]:
    """Milliseconds the adapters add to block 0's ``qkv`` on the batch's tokens (minus the base)."""
    ours = bank.model.blocks[0].attn.qkv
    theirs = reference.base_model.model.blocks[0].attn.qkv
    tokens = (args.img_size // bank.model.patch_embed.patch_size[0]) ** 2 + 1
    x = torch.randn(args.batch, tokens, ours.in_features, generator=torch.Generator().manual_seed(1))

    def medpeft_layer(spread: list[str]) -> None:
        with route(adapters=spread):
            ours(x)

    actions: dict[str, Callable[[], object]] = {"base": lambda: ours.base(x)}
    for k in args.spreads:
        spread = [names[i % k] for i in range(args.batch)]
        actions[f"medpeft {k}"] = lambda s=spread: medpeft_layer(s)
        actions[f"peft {k}"] = lambda s=spread: theirs(x, adapter_names=s)
    with torch.inference_mode():
        medpeft_layer([names[i % len(names)] for i in range(args.batch)])  # warm-up: the cache
        seconds = interleaved(actions, args.layer_repeats)
    return {n: (s - seconds["base"]) * 1e3 for n, s in seconds.items() if n != "base"} | {
        "base": seconds["base"] * 1e3
    }


def _peft_forward(model: peft.PeftModel, images: torch.Tensor, names: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        return model(images, adapter_names=names)


def markdown(results: dict, args: argparse.Namespace) -> str:
    tput = results["throughput"]
    single = tput["single"]
    widest = max(args.spreads)
    lines = [
        "# Adapter bank: many tasks on one backbone, medpeft vs PEFT",
        "",
        f"{args.model} (random init, {args.img_size} px{', ' + str(args.kwargs) if args.kwargs else ''}), "
        f"{widest} task adapters (q+v LoRA r=4 + 4-class head), batch {args.batch}, CPU "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}, peft {peft.__version__}; "
        f"{args.repeats} interleaved repeats, medians.",
        "",
        "Command: `python benchmarks/bank.py" + (" --quick" if args.quick else "") + "`",
        "",
        "| switch task | median ms |",
        "|---|---:|",
        *(f"| {name} | {ms:.4f} |" for name, ms in results["switch"].items()),
        "",
        f"| batch of {args.batch} spread over | bank mixed (img/s) | sequential per task (img/s) "
        "| PEFT mixed (img/s) | mixed / single | mixed / PEFT mixed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k in args.spreads:
        mixed = tput[f"mixed {k}"]
        lines.append(
            f"| {k} adapter{'s' if k > 1 else ''} | {mixed:.1f} | {tput[f'sequential {k}']:.1f} | "
            f"{tput[f'peft {k}']:.1f} | {mixed / single:.2f} | {mixed / tput[f'peft {k}']:.2f} |"
        )
    lines += ["", f"Single adapter (whole batch on one task): {single:.1f} img/s.", ""]
    layer = results["layer"]
    lines += [
        f"Adapters' own cost in one layer (block 0 `attn.qkv`, {args.batch} samples; the frozen "
        f"Linear alone takes {layer['base']:.2f} ms):",
        "",
        "| spread over | medpeft LoRA (ms) | PEFT LoRA (ms) | PEFT / medpeft |",
        "|---|---:|---:|---:|",
        *(f"| {k} | {layer[f'medpeft {k}']:.2f} | {layer[f'peft {k}']:.2f} | "
          f"{layer[f'peft {k}'] / max(layer[f'medpeft {k}'], 1e-9):.1f} |" for k in args.spreads),
        "",
    ]
    ratios = {"mixed / single": tput[f"mixed {widest}"] / single,
              "mixed / PEFT mixed": tput[f"mixed {widest}"] / tput[f"peft {widest}"]}
    checks = [f"{name} at {widest} adapters: {ratios[name]:.2f} (target >= {goal:g}: "
              f"{'met' if ratios[name] >= goal else 'MISSED'})" for name, goal in TARGETS.items()]
    route_ms = results["switch"]["bank: route by name"]
    checks.append(f"switch (bank, route by name): {route_ms:.4f} ms (target <= {SWITCH_TARGET_MS} ms: "
                  f"{'met' if route_ms <= SWITCH_TARGET_MS else 'MISSED'})")
    lines += [f"- {c}" for c in checks]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    table = markdown(run(args), args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    print(table)
    return table


if __name__ == "__main__":
    main()
