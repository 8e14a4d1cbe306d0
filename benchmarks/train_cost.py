"""Training and inference cost: medpeft LoRA vs full fine-tuning, linear probe and HF PEFT LoRA.

Everything is measured in one run, side by side:

* train step time (Adam step on a fixed random batch) of the four arms, iterations
  interleaved arm by arm so that load from other processes hits all alike; median and
  inter-quartile range;
* peak memory of two train steps, each arm in a fresh process (Linux ``VmHWM`` after
  resetting it through ``/proc/self/clear_refs``, minus the process's size before the
  model was built): weights, gradients, optimizer state and activations;
* inference latency of the base model, LoRA unmerged, LoRA merged and MoR (interleaved);
* a whole ``medpeft train`` run split into waiting for data, compute, validation and
  checkpointing (the trainer's ``timing``), with 0 and 2 loader workers.

medpeft LoRA adapts q and v of every block with rank r; PEFT's closest equivalent on
timm's fused ``qkv`` is rank 2r on the whole layer (see bench_lora_vs_peft.py).

Run: ``python benchmarks/train_cost.py --out benchmarks/results/train_cost.md``;
``--quick`` runs a tiny ViT for a smoke test (seconds).
"""

from __future__ import annotations

import medpeft  # noqa: F401  (torchvision shim before timm/peft)

# isort: split
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import peft
import timm
import torch
from torch import nn

from medpeft.cli import resolve_config
from medpeft.config import load_config
from medpeft.data.synthetic import make_synthetic_dataset
from medpeft.methods import LoraSettings
from medpeft.methods.lora.attach import merge_lora
from medpeft.model import ModelSpec, build_model
from medpeft.runs.train import train_run

ARMS = {"lora": "medpeft LoRA", "full": "full FT", "linear": "linear probe", "peft": "PEFT LoRA"}
INFERENCE = {"base": "base", "lora": "LoRA unmerged", "merged": "LoRA merged", "mor": "MoR"}
MODELS = {"ViT-S/16": "vit_small_patch16_224", "ViT-B/16": "vit_base_patch16_224"}
TINY_KWARGS = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
NUM_CLASSES = 2
RANK = 4
RESULTS = Path(__file__).parent / "results" / "train_cost.md"


@dataclass(frozen=True)
class Case:
    """One model at one batch size (random init, ``img_size`` pixels)."""

    label: str
    backbone: str
    batch: int
    img_size: int = 224
    kwargs: dict = field(default_factory=dict, hash=False)


def build(arm: str, case: Case) -> nn.Module:
    """The model of an arm; the same seed, so every arm shares the backbone weights."""
    torch.manual_seed(0)
    if arm == "peft":
        model = timm.create_model(case.backbone, num_classes=NUM_CLASSES, img_size=case.img_size,
                                  **case.kwargs)
        config = peft.LoraConfig(r=2 * RANK, lora_alpha=2 * RANK, target_modules=["qkv"],
                                 modules_to_save=["head"])
        return peft.get_peft_model(model, config)
    method = {"lora": "lora", "merged": "lora", "mor": "mor", "full": "full"}.get(arm, "linear")
    settings = LoraSettings(targets=("q", "v"), rank=RANK, alpha=float(RANK)) if method == "lora" else None
    spec = ModelSpec(case.backbone, NUM_CLASSES, method, settings, img_size=case.img_size,
                     model_kwargs=dict(case.kwargs))
    model = build_model(spec)
    if arm == "merged":
        merge_lora(model)
    return model


class Steps:
    """Train and inference steps of one model on a fixed random batch."""

    def __init__(self, model: nn.Module, case: Case) -> None:
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=1e-4)
        size = (case.batch, 3, case.img_size, case.img_size)
        self.x = torch.randn(size, generator=torch.Generator().manual_seed(1))
        self.y = torch.arange(case.batch) % NUM_CLASSES

    def train(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(self.model(self.x), self.y).backward()
        self.optimizer.step()

    def infer(self) -> None:
        self.model.eval()
        with torch.inference_mode():
            self.model(self.x)


def interleaved(steps: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds of each step, alternating the steps every iteration."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    return times


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """Median and the first and third quartiles (min and max below four values)."""
    if len(values) < 4:
        return statistics.median(values), min(values), max(values)
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q2, q1, q3


def cell(values: Sequence[float]) -> str:
    median, low, high = quartiles(values)
    return f"{median:,.0f} ({low:,.0f}-{high:,.0f})"


def _status_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def peak_memory_mb(arm: str, case: Case) -> float:
    """Peak resident memory of building the arm and two train steps, above the process before."""
    before = _status_kb("VmRSS")
    steps = Steps(build(arm, case), case)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
    for _ in range(2):
        steps.train()
    return (_status_kb("VmHWM") - before) / 1024


def isolated_memory_mb(arms: Sequence[str], case: Case) -> dict[str, float]:
    """:func:`peak_memory_mb` of each arm in a fresh process of its own (run side by side)."""
    children = {
        arm: subprocess.Popen([sys.executable, __file__, "--memory-child", arm, json.dumps(asdict(case))],
                              stdout=subprocess.PIPE, text=True)
        for arm in arms
    }
    out = {}
    for arm, child in children.items():
        stdout, _ = child.communicate()
        if child.returncode:
            raise RuntimeError(f"memory child of {arm} failed ({child.returncode})")
        out[arm] = float(stdout.strip().splitlines()[-1])
    return out


def train_step_table(cases: list[Case], args: argparse.Namespace) -> tuple[str, dict]:
    """Step times and peak memory of every arm; the markdown table and the raw numbers."""
    rows = [
        "| model | batch | " + " | ".join(ARMS.values()) + " | LoRA/full time | LoRA/PEFT time "
        "| LoRA/full memory |",
        "|---|---:|" + "---:|" * (len(ARMS) + 3),
    ]
    raw = {}
    for case in cases:
        repeats = args.repeats if case.batch * (4 if "B/16" in case.label else 1) < 128 else args.repeats_large
        if args.quick:
            memory = {arm: peak_memory_mb(arm, case) for arm in ARMS}
        else:
            memory = isolated_memory_mb(list(ARMS), case)
        steps = {arm: Steps(build(arm, case), case).train for arm in ARMS}
        times = interleaved(steps, repeats, args.warmup)
        median = {arm: quartiles(times[arm])[0] for arm in ARMS}
        raw[(case.label, case.batch)] = {"time": median, "memory": memory, "repeats": repeats}
        cells = [f"{cell(times[a])} ms, {memory[a]:,.0f} MiB" for a in ARMS]
        rows.append(
            f"| {case.label} | {case.batch} | " + " | ".join(cells)
            + f" | {median['lora'] / median['full']:.2f} | {median['lora'] / median['peft']:.2f} "
            f"| {memory['lora'] / memory['full']:.2f} |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows), raw


def inference_table(cases: list[Case], args: argparse.Namespace) -> tuple[str, dict]:
    """Inference latency of base, LoRA unmerged, LoRA merged and MoR."""
    rows = [
        "| model | batch | " + " | ".join(INFERENCE.values()) + " | unmerged/base | merged/base |",
        "|---|---:|" + "---:|" * (len(INFERENCE) + 2),
    ]
    raw = {}
    for case in cases:
        steps = {arm: Steps(build(arm, case), case).infer for arm in INFERENCE}
        times = interleaved(steps, args.repeats * 2, args.warmup)
        median = {arm: quartiles(times[arm])[0] for arm in INFERENCE}
        raw[(case.label, case.batch)] = median
        rows.append(
            f"| {case.label} | {case.batch} | " + " | ".join(cell(times[a]) for a in INFERENCE)
            + f" | {median['lora'] / median['base']:.3f} | {median['merged'] / median['base']:.3f} |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows), raw


def end_to_end(args: argparse.Namespace, folder: Path) -> tuple[str, list[dict]]:
    """``medpeft train`` (one epoch) split into data waits, compute, validation, checkpoints."""
    if args.quick:
        model = ["model.backbone=vit_tiny_patch16_224", "model.img_size=32",
                 "model.kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}"]
        n_per_class, image_px, batch = 8, 64, 4
    else:
        model = ["model.backbone=vit_small_patch16_224", "model.img_size=224"]
        n_per_class, image_px, batch = 32, 384, 16
    manifest = make_synthetic_dataset(folder / "data", n_per_class=n_per_class, img_size=image_px)
    rows = [
        "| loader workers | data wait (s) | compute (s) | validation (s) | checkpoints (s) | test (s) "
        "| data wait / (data + compute) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    raw = []
    for workers in (0, 2):
        overrides = [
            f"output_dir={folder / f'run{workers}'}", "data.source=csv", f"data.manifest={manifest}",
            *model, "model.pretrained=false", "train.epochs=1", f"data.batch_size={batch}",
            f"data.num_workers={workers}", "train.amp=false", "train.device=cpu",
        ]
        config = load_config(resolve_config("melo_shenzhen"), overrides)
        timing = train_run(config, resume=False, progress=False).timing
        raw.append({"workers": workers, **timing})
        share = timing["data_s"] / (timing["data_s"] + timing["compute_s"])
        rows.append(
            f"| {workers} | {timing['data_s']:.2f} | {timing['compute_s']:.2f} | {timing['eval_s']:.2f} "
            f"| {timing['checkpoint_s']:.2f} | {timing['test_s']:.2f} | {share:.1%} |"
        )
        print(rows[-1], flush=True)
    setup = (f"{2 * n_per_class} synthetic {image_px} px PNGs, batch {batch}, one epoch, "
             f"{config.model.backbone} at {config.model.img_size} px")
    return setup + "\n\n" + "\n".join(rows), raw


def targets(train: dict, infer: dict, e2e: list[dict]) -> str:
    """The issue's targets, each with the worst measured value and whether it holds."""
    lines = ["| target | worst measured | holds |", "|---|---:|---|"]

    def add(name: str, values: list[float], limit: float, fmt: str = "{:.2f}") -> None:
        worst = max(values)
        lines.append(f"| {name} | {fmt.format(worst)} | {'yes' if worst <= limit else 'no'} |")

    add("LoRA step <= 0.75x full FT", [r["time"]["lora"] / r["time"]["full"] for r in train.values()], 0.75)
    add("LoRA peak memory <= 0.6x full FT", [r["memory"]["lora"] / r["memory"]["full"] for r in train.values()], 0.6)
    add("medpeft LoRA step <= 1.0x PEFT", [r["time"]["lora"] / r["time"]["peft"] for r in train.values()], 1.0)
    add("LoRA unmerged inference <= 1.05x base", [r["lora"] / r["base"] for r in infer.values()], 1.05, "{:.3f}")
    add("LoRA merged inference = 1.00x base (<= 1.02)", [r["merged"] / r["base"] for r in infer.values()], 1.02, "{:.3f}")
    with_workers = [r for r in e2e if r["workers"] > 0]
    add("data wait <= 10% of training time (2 workers)",
        [r["data_s"] / (r["data_s"] + r["compute_s"]) for r in with_workers], 0.10, "{:.1%}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file for the tables")
    parser.add_argument("--cases", nargs="+", default=[f"{m}:{b}" for m in MODELS for b in (8, 32)],
                        help="model:batch pairs, models from " + ", ".join(MODELS))
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per arm")
    parser.add_argument("--repeats-large", type=int, default=3,
                        help="timed steps per arm for ViT-B at batch >= 32")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny ViT, batch 2: a smoke test")
    parser.add_argument("--memory-child", nargs=2, metavar=("ARM", "CASE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_child:
        arm, case = args.memory_child
        print(peak_memory_mb(arm, Case(**json.loads(case))))
        return
    start = time.perf_counter()
    if args.quick:
        args.repeats, args.repeats_large, args.warmup = 2, 2, 1
        cases = [Case("tiny ViT", "vit_tiny_patch16_224", 2, 32, TINY_KWARGS)]
    else:
        pairs = [text.rsplit(":", 1) for text in args.cases]
        cases = [Case(label, MODELS[label], int(batch)) for label, batch in pairs]
    train_md, train_raw = train_step_table(cases, args)
    smallest = min(case.batch for case in cases)
    infer_md, infer_raw = inference_table([c for c in cases if c.batch == smallest], args)
    with tempfile.TemporaryDirectory() as tmp:
        e2e_md, e2e_raw = end_to_end(args, Path(tmp))
    setup = (
        f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, timm {timm.__version__}, "
        f"peft {peft.__version__}; random init, {cases[0].img_size} px; medpeft LoRA q+v r={RANK} vs "
        f"PEFT qkv r={2 * RANK}; train steps: Adam, median (inter-quartile range, or min-max under "
        f"4 values) of {args.repeats} timed steps after {args.warmup} warm-up "
        f"({args.repeats_large} for ViT-B at batch >= 32), arms interleaved; memory: peak RSS of "
        f"build + 2 steps above the process before, a fresh process per arm (arms side by side)"
        + (" (quick: in-process, not comparable)" if args.quick else "")
    )
    text = (
        f"# Training and inference cost\n\n`python benchmarks/train_cost.py{' --quick' if args.quick else ''}` "
        f"({time.perf_counter() - start:.0f} s). {setup}.\n\n"
        f"## Train step: time (ms) and peak memory (MiB)\n\n{train_md}\n\n"
        f"## Inference latency (ms)\n\n{infer_md}\n\n"
        f"## `medpeft train`: where the time goes\n\n{e2e_md}\n\n"
        f"## Targets\n\n{targets(train_raw, infer_raw, e2e_raw)}\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"\n{text}\nwrote {args.out}")


if __name__ == "__main__":
    main()
