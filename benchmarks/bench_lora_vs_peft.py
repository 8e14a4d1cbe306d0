"""medpeft LoRA vs Hugging Face PEFT LoRA on a timm ViT, side by side.

Both adapt the query and value parts of every fused ``attn.qkv`` Linear with
scale 1: medpeft with rank-r q and v pairs (MeLo), PEFT with its standard
rank-2r LoRA on ``qkv`` (SPEC.md §1's block form; as a free LoRA it also trains
the k rows and cross terms of B, hence twice the parameters). Timings alternate
between the two models iteration by iteration, so load from other processes
hits both alike; peak memory is measured in a fresh process per library.

Run: ``python benchmarks/bench_lora_vs_peft.py [--model vit_small_patch16_224] [--batch 8]``;
the table is printed and written to ``benchmarks/results/lora_vs_peft.md``.
"""

from __future__ import annotations

import medpeft  # noqa: F401  (torchvision shim before timm/peft)

# isort: split
import argparse
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import peft
import timm
import torch
from torch import nn

from medpeft.adapters_io.folder import save_adapter
from medpeft.methods import LoraSettings
from medpeft.methods.lora.attach import merge_lora
from medpeft.model import ModelSpec, build_model

NUM_CLASSES = 4
LIBRARIES = ("medpeft", "peft")
RESULTS = Path(__file__).parent / "results" / "lora_vs_peft.md"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224", help="timm ViT (random init)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--rank", type=int, default=4, help="medpeft rank r (PEFT uses 2r)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file for the table")
    return parser.parse_args()


def medpeft_spec(args: argparse.Namespace) -> ModelSpec:
    """MeLo defaults: q and v of every block, alpha = r (scale 1)."""
    lora = LoraSettings(targets=("q", "v"), rank=args.rank, alpha=float(args.rank))
    return ModelSpec(args.model, NUM_CLASSES, "lora", lora, img_size=args.img_size)


def build(library: str, args: argparse.Namespace) -> nn.Module:
    """The adapted model (same seed, so both libraries share the backbone weights)."""
    torch.manual_seed(0)
    if library == "medpeft":
        return build_model(medpeft_spec(args)).to(args.device)
    model = timm.create_model(args.model, num_classes=NUM_CLASSES, img_size=args.img_size)
    rank = 2 * args.rank
    config = peft.LoraConfig(
        r=rank, lora_alpha=rank, target_modules=["qkv"], modules_to_save=["head"]
    )
    return peft.get_peft_model(model, config).to(args.device)


def merge(library: str, model: nn.Module) -> None:
    """Fold the adapter into the base weights, keeping the wrappers (both libraries)."""
    if library == "medpeft":
        merge_lora(model)
    else:
        model.merge_adapter()


def adapter_file_kb(library: str, model: nn.Module, args: argparse.Namespace) -> float:
    """Size of the saved adapter weights (LoRA + head), in KiB."""
    with tempfile.TemporaryDirectory() as tmp:
        if library == "medpeft":
            labels = [f"class{i}" for i in range(NUM_CLASSES)]
            save_adapter(model, tmp, medpeft_spec(args), labels, "multiclass")
        else:
            model.save_pretrained(tmp)
        return (Path(tmp) / "adapter_model.safetensors").stat().st_size / 1024


class Steps:
    """Training and inference steps of one model on a fixed random batch."""

    def __init__(self, model: nn.Module, args: argparse.Namespace) -> None:
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=1e-3)
        size = (args.batch, 3, args.img_size, args.img_size)
        self.x = torch.randn(size, generator=torch.Generator().manual_seed(1)).to(args.device)
        self.y = torch.arange(args.batch, device=args.device) % NUM_CLASSES

    def train(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(self.model(self.x), self.y).backward()
        self.optimizer.step()

    def infer(self) -> None:
        self.model.eval()
        with torch.inference_mode():
            self.model(self.x)


def interleaved_ms(
    steps: dict[str, Callable[[], None]], args: argparse.Namespace
) -> dict[str, float]:
    """Median milliseconds per library, alternating libraries every iteration."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup + args.iters):
        for name, step in steps.items():
            sync(args.device)
            start = time.perf_counter()
            step()
            sync(args.device)
            if i >= args.warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_mb(library: str, args: argparse.Namespace) -> float:
    """Peak GPU memory, or the process's peak RSS, over building + one train and infer step."""
    steps = Steps(build(library, args), args)
    steps.train()
    steps.infer()
    if args.device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _memory_child(library: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    queue.put(peak_memory_mb(library, args))


def isolated_memory_mb(library: str, args: argparse.Namespace) -> float:
    """:func:`peak_memory_mb` in a fresh process, so the peak is this library's alone."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_memory_child, args=(library, args, queue))
    process.start()
    peak = queue.get()
    process.join()
    return peak


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Every metric, as ``metric -> library -> value``."""
    # Memory first: a spawned child starts with its parent's ru_maxrss (kept across exec).
    memory = "peak GPU memory (MiB)" if args.device.startswith("cuda") else "peak RSS (MiB)"
    peaks = {name: isolated_memory_mb(name, args) for name in LIBRARIES}
    models = {name: build(name, args) for name in LIBRARIES}
    steps = {name: Steps(model, args) for name, model in models.items()}
    results = {
        "trainable parameters": {n: sum(p.numel() for p in s.params) for n, s in steps.items()},
        "train step (ms)": interleaved_ms({n: s.train for n, s in steps.items()}, args),
        "inference, unmerged (ms)": interleaved_ms({n: s.infer for n, s in steps.items()}, args),
    }
    for name, model in models.items():
        merge(name, model)
    results["inference, merged (ms)"] = interleaved_ms({n: s.infer for n, s in steps.items()}, args)
    results["adapter file (KiB)"] = {n: adapter_file_kb(n, m, args) for n, m in models.items()}
    results[memory] = peaks
    return results


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    rows = ["| metric | medpeft | peft | medpeft/peft |", "|---|---:|---:|---:|"]
    for metric, values in results.items():
        ours, theirs = values["medpeft"], values["peft"]
        fmt = "{:,.0f}" if metric == "trainable parameters" else "{:,.1f}"
        ratio = f"{ours / theirs:.2f}" if theirs else "-"
        rows.append(f"| {metric} | {fmt.format(ours)} | {fmt.format(theirs)} | {ratio} |")
    return "\n".join(rows)


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    results = run(args)
    setup = (
        f"{args.model}, batch {args.batch}, {args.img_size} px, {args.device} "
        f"({torch.get_num_threads()} threads); medpeft q+v r={args.rank} vs peft qkv "
        f"r={2 * args.rank}; torch {torch.__version__}, peft {peft.__version__}; "
        f"median of {args.iters} after {args.warmup} warm-up"
    )
    table = markdown_table(results)
    print(f"{setup}\n\n{table}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(f"# medpeft LoRA vs Hugging Face PEFT LoRA\n\n{setup}\n\n{table}\n")
    print(f"\nwrote {args.output} (total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
