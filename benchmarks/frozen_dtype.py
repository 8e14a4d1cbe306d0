"""Frozen weights in low precision: logits agreement with fp32, memory and step time (CPU).

Each configuration (``model.frozen_dtype`` x ``train.amp_dtype``) runs in its own process,
one after the other:

1. build ViT-S/16 (``vit_small_patch16_224``, random init, seed 0) with MeLo LoRA and a
   10-class head by ``build_model(spec, frozen_dtype=...)``: layer by layer in the low dtype
   (`medpeft.frozen_dtype.low_precision_build`), never as a whole fp32 model;
2. eval-mode logits of a fixed random batch of ``--batch`` images, compared with the fp32
   configuration's: max abs diff and top-1 agreement (the fraction of images whose arg-max
   class is the same);
3. ``--steps`` LoRA training steps (AdamW, cross-entropy) after one warm-up step: median step
   time; peak resident memory of the process (``ru_maxrss``) after the build and at the end
   (build, steps and libraries).

The machine is a shared, loaded 2-core CPU: step times are indicative only.

Run: ``python benchmarks/frozen_dtype.py`` (writes benchmarks/results/frozen_dtype.md, a few
minutes); ``--quick`` runs a tiny ViT (seconds) for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "frozen_dtype.md"
CONFIGS = (  # (frozen_dtype, autocast dtype or None); the first is the reference
    ("float32", None), ("bfloat16", None), ("float16", None), ("int8", None), ("float32", "bf16"),
    ("bfloat16", "bf16"), ("int8", "bf16"),
)
NUM_CLASSES = 10
TINY_KWARGS = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8}


def measure(frozen: str, amp: str | None, batch: int, steps: int, quick: bool, logits_out: str) -> dict[str, Any]:
    """One configuration in this process: its logits (saved to ``logits_out``), step time, peak RSS."""
    import torch

    from medpeft.frozen_dtype import FROZEN_DTYPES, stored_bytes
    from medpeft.mixed_precision import autocast
    from medpeft.model import ModelSpec, build_model
    from medpeft.train.settings import AMP_DTYPES

    torch.manual_seed(0)
    size = 32 if quick else 224
    spec = ModelSpec("vit_small_patch16_224", NUM_CLASSES, "lora", img_size=size,
                     model_kwargs=TINY_KWARGS if quick else {})
    model = build_model(spec, frozen_dtype=FROZEN_DTYPES[frozen])
    build_rss = _peak_rss_mib()
    cpu, dtype = torch.device("cpu"), AMP_DTYPES[amp] if amp else None
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad(), autocast(cpu, dtype):
        torch.save(model(images).float(), logits_out)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    targets = torch.arange(batch) % NUM_CLASSES
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with autocast(cpu, dtype):
            loss = torch.nn.functional.cross_entropy(model(images).float(), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times[1:]), "build_rss_mib": build_rss, "peak_rss_mib": _peak_rss_mib(),
            "frozen_mib": sum(stored_bytes(p) for p in model.parameters() if not p.requires_grad) / 2**20,
            "load_avg": os.getloadavg()[0]}


def _peak_rss_mib() -> float:
    """The process's peak resident memory so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_config(frozen: str, amp: str | None, args: argparse.Namespace, folder: Path) -> tuple[dict, Any]:
    """:func:`measure` in a fresh process; its row and logits."""
    import torch

    logits = folder / f"{frozen}-{amp}.pt"
    command = [sys.executable, __file__, "--child", frozen, str(amp), str(logits),
               "--batch", str(args.batch), "--steps", str(args.steps), *(["--quick"] if args.quick else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), torch.load(logits)


def render(rows: list[dict], args: argparse.Namespace) -> str:
    """The results page."""
    model = "tiny ViT (--quick)" if args.quick else "ViT-S/16 (`vit_small_patch16_224`, random init), 224 px"
    lines = [
        "# Frozen weights in low precision (CPU)", "",
        f"`python benchmarks/frozen_dtype.py{' --quick' if args.quick else ''}`, {date.today()}, "
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch "
        f"{__import__('torch').__version__}. {model}, MeLo LoRA, 10-class head, batch {args.batch}; "
        "each configuration in its own process. A shared, loaded 2-core machine: step times "
        "are indicative only (load average in the last column).", "",
        "*max abs diff* and *top-1 agreement*: eval logits of the same model and batch against the "
        "fp32 configuration (first row). *frozen*: bytes of the frozen parameters. *step*: median "
        f"of {args.steps} LoRA training steps after one warm-up. *peak RSS*: the process's peak "
        "resident memory once the model is built (libraries, build) and at the end (and the steps).", "",
        "| frozen_dtype | amp_dtype (CPU autocast) | max abs diff | top-1 agreement | frozen (MiB) "
        "| step (s) | peak RSS after build (MiB) | peak RSS (MiB) | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['frozen']} | {r['amp'] or '-'} | {r['max_abs_diff']:.3g} | {r['top1']:.0%} "
                     f"| {r['frozen_mib']:.1f} | {r['step_s']:.2f} | {r['build_rss_mib']:,.0f} "
                     f"| {r['peak_rss_mib']:,.0f} | {r['load_avg']:.1f} |")
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a tiny ViT for a smoke test")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--child", nargs=3, metavar=("FROZEN", "AMP", "LOGITS"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.child:
        frozen, amp, logits = args.child
        print(json.dumps(measure(frozen, None if amp == "None" else amp, args.batch, args.steps, args.quick, logits)))
        return
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as folder:
        for frozen, amp in CONFIGS:
            row, logits = run_config(frozen, amp, args, Path(folder))
            reference = logits if reference is None else reference
            row.update(frozen=frozen, amp=amp, max_abs_diff=float((logits - reference).abs().max()),
                       top1=float((logits.argmax(1) == reference.argmax(1)).float().mean()))
            rows.append(row)
            print(f"{frozen} {amp}: {row}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, args))


if __name__ == "__main__":
    main()
