"""Training throughput on one GPU: images/s and the fraction of the GPU's peak bf16 FLOP/s.

The FLOPs of one training image (forward + backward, as the arm runs it) are counted
with ``torch.utils.flop_counter`` on the CPU, once per arm: full fine-tuning computes
weight gradients everywhere (about 3x the forward), LoRA only activation gradients
and its own small weights (about 2x). Then training steps run on the GPU the way
``medpeft train`` runs them (bf16 autocast, timm's fused attention, optionally
``torch.compile`` and channels-last) on a fixed random batch; images/s is the median
over timed steps, achieved FLOP/s = images/s x FLOPs per image.

Run (on a GPU machine): ``python benchmarks/gpu_throughput.py [--model vit_base_patch16_224]
[--batch 128] [--compile] [--peak-tflops 989]``; the table goes to stdout and to
``benchmarks/results/gpu_throughput.md``. ``--device cpu --batch 2 --steps 2`` checks the
script anywhere.
"""

from __future__ import annotations

import medpeft  # noqa: F401  (torchvision shim before timm)

# isort: split
import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from medpeft.methods import LoraSettings
from medpeft.mixed_precision import autocast
from medpeft.model import ModelSpec, build_model
from medpeft.train.trainer import to_channels_last, use_fused_attention

ARMS = ("lora", "full", "linear")
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name fragment.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
RESULTS = Path(__file__).parent / "results" / "gpu_throughput.md"


def build(arm: str, args: argparse.Namespace) -> nn.Module:
    torch.manual_seed(0)
    settings = LoraSettings(targets=("q", "v"), rank=4, alpha=4.0) if arm == "lora" else None
    return build_model(ModelSpec(args.model, 2, arm, settings, img_size=args.img_size))


def train_flops_per_image(arm: str, args: argparse.Namespace) -> float:
    """FLOPs of forward + backward of one image (counted on the CPU, batch 1)."""
    model = build(arm, args).train()
    x = torch.randn(1, 3, args.img_size, args.img_size)
    with FlopCounterMode(display=False) as counter:
        loss = model(x).float().logsumexp(-1).sum()
        if loss.requires_grad:
            loss.backward()
    return float(counter.get_total_flops())


def images_per_second(arm: str, args: argparse.Namespace) -> float:
    """Median images/s over timed training steps on ``args.device``."""
    device = torch.device(args.device)
    model = build(arm, args).to(device)
    use_fused_attention(model)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    x = to_channels_last(x) if args.channels_last else x
    y = torch.arange(args.batch, device=device) % 2
    dtype = None if args.dtype == "fp32" else torch.bfloat16
    times = []
    for step in range(args.warmup + args.steps):
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = nn.functional.cross_entropy(net(x).float(), y)
        loss.backward()
        optimizer.step()
        _sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return args.batch / statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if not args.device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(args.device))
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak bf16 TFLOP/s")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    peak = peak_tflops(args)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    rows = ["| arm | GFLOPs / train image | images/s | achieved TFLOP/s | of peak |",
            "|---|---:|---:|---:|---:|"]
    for arm in ARMS:
        flops = train_flops_per_image(arm, args)
        rate = images_per_second(arm, args)
        achieved = rate * flops / 1e12
        share = f"{achieved / peak:.1%}" if peak else "-"
        rows.append(f"| {arm} | {flops / 1e9:.1f} | {rate:,.1f} | {achieved:.1f} | {share} |")
        print(rows[-1], flush=True)
    setup = (f"{args.model} at {args.img_size} px, batch {args.batch}, {args.dtype}, "
             f"compile {args.compile}, channels_last {args.channels_last}, {device_name} "
             f"(peak {peak or '?'} TFLOP/s), torch {torch.__version__}; median of {args.steps} "
             f"steps after {args.warmup}")
    text = f"# Training throughput\n\n{setup}\n\n" + "\n".join(rows) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"\n{text}\nwrote {args.output}")


if __name__ == "__main__":
    main()
