"""Build time and memory of LoRA fine-tuning on every foundation-model preset (CPU, fp32).

Each configuration runs in its own process, one after the other (never two at once):

1. estimate the memory of one training step from the architecture built on the meta
   device (no memory): ``parameters x 4 bytes x 3`` (weights and the build's transient
   copies), plus activations (``batch x tokens x the in+out features of every Linear x 4
   bytes``: fused attention, as timm and transformers' ``sdpa`` run it on CPU, stores no
   ``tokens x tokens`` matrix), plus 0.5 GiB for the libraries and allocator; above
   ``--limit-gib`` the configuration is skipped and the table says so;
2. build ``medpeft.adapt(preset, medpeft.LoraSettings(), num_classes=2)`` offline at
   random init (``pretrained=False``) and time it;
3. run ONE LoRA training step (AdamW, cross-entropy, a random batch of ``--batch`` at the
   input size) and time it; memory: the peak resident size of the process
   (``getrusage`` ``ru_maxrss``, build included) and the step's increment over the
   resident size after the build (Linux ``VmHWM`` reset through ``/proc/self/clear_refs``).

Presets whose recommended input is 518 px (RAD-DINO, DINOv2) are also measured at 224 px;
the input column says which. One step, not a median: the numbers are indicative and the
shared machine's load average at the start of each configuration is in the table.

Run: ``python benchmarks/presets.py`` (writes benchmarks/results/presets.md after every
configuration; about 20 minutes on a loaded 2-core CPU); ``--only dinov2-s phikon`` picks
presets; ``--quick`` runs one tiny timm ViT (seconds) for a smoke test; ``--low-memory`` turns
on activation checkpointing and bf16 frozen weights (docs/scale.md), e.g.
``python benchmarks/presets.py --low-memory --out benchmarks/results/presets_low_memory.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from importlib.metadata import version
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "presets.md"
BYTES = 4  # fp32
GIB = 1024 ** 3
OVERHEAD_BYTES = GIB // 2  # libraries and allocator of the first step, beyond weights and activations
TINY_KWARGS = {"embed_dim": 32, "depth": 2, "num_heads": 2}
LOW_MEMORY = ("`--low-memory`: activation checkpointing on and the frozen Linear/Conv weights in bf16, "
              "built in bf16 (`adapt(..., activation_checkpointing=True, frozen_dtype=\"bfloat16\")`); adapters, "
              "head, optimizer state and the compute between layers fp32")
COLUMNS = ("preset", "input (px)", "params (M)", "estimate (GiB)", "build (s)", "step (s)",
           "peak RSS (MiB)", "step increment (MiB)", "load avg")
# Every preset at 224 px and at its recommended size, cheap ones first, so that a run stopped
# at a deadline has measured the most presets.
ORDER = ("dinov2-s@224", "dinov2-s@518", "phikon@224", "rad-dino@224", "rad-dino@518", "clip-b16@224",
         "dinov2-b@224", "biomedclip@224", "retfound@224", "uni@224", "dinov2-l@224", "dinov2-b@518",
         "virchow@224", "virchow2@224", "uni2-h@224", "prov-gigapath@224", "dinov2-g@224", "dinov2-l@518",
         "dinov2-g@518")


@dataclass(frozen=True)
class Case:
    """One preset at one input size (``model_kwargs`` shrink it for the quick run)."""

    preset: str
    img_size: int
    model_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def label(self) -> str:
        return f"{self.preset}@{self.img_size}"


def full_cases(names: list[str] | None) -> list[Case]:
    """The cases of ``ORDER`` (of the presets ``names``; default: all), in that order."""
    cases = [Case(preset, int(size)) for preset, size in (label.split("@") for label in ORDER)]
    unknown = set(names or ()) - {case.preset for case in cases}
    if unknown:
        known = ", ".join(dict.fromkeys(case.preset for case in cases))
        raise SystemExit(f"--only: no preset {', '.join(sorted(unknown))}; presets: {known}")
    return [case for case in cases if names is None or case.preset in names]


def quick_cases() -> list[Case]:
    """One tiny ViT (the ``clip-b16`` preset shrunk to 2 blocks of width 32) at 32 px."""
    return [Case("clip-b16", 32, dict(TINY_KWARGS))]


# ---------------------------------------------------------------- worker (one case per process)


def status_kib(name: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {name}")


def build(case: Case, low_memory: bool = False) -> Any:
    """The case's adapted model: MeLo LoRA, a 2-class head, random init, offline; ``low_memory``:
    activation checkpointing and bf16 frozen weights (built in bf16)."""
    import medpeft

    options = {"activation_checkpointing": True, "frozen_dtype": "bfloat16"} if low_memory else {}
    return medpeft.adapt(case.preset, medpeft.LoraSettings(), num_classes=2, img_size=case.img_size,
                         **options, **case.model_kwargs)


def estimate_bytes(case: Case, batch: int, low_memory: bool = False) -> tuple[int, int]:
    """``(parameters, estimated bytes of build + one step)`` from the model on the meta device.

    fp32: parameters x 4 bytes x 3 + the activations of every Linear; ``low_memory``: parameters
    x 2 bytes x 3 + a quarter of those activations (checkpointing keeps the block inputs only).
    """
    import torch
    from torch import nn

    with torch.device("meta"):
        model = build(case)
    params = sum(p.numel() for p in model.parameters())
    patch = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).stride[0]
    tokens = (case.img_size // patch) ** 2 + 1
    linear = sum(m.in_features + m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    activations = batch * tokens * linear * BYTES
    if low_memory:
        return params, params * 2 * 3 + activations // 4 + OVERHEAD_BYTES
    return params, params * BYTES * 3 + activations + OVERHEAD_BYTES


def train_step(model: Any, batch: int, img_size: int) -> None:
    """One AdamW step of the trainable parameters on a random batch."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(batch) % 2
    model.train()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()


def measure(case: Case, batch: int, threads: int, limit_gib: float, low_memory: bool = False) -> dict[str, Any]:
    """One case: the estimate, then (under the limit) build time, step time and memory."""
    import torch

    torch.set_num_threads(threads)
    params, estimate = estimate_bytes(case, batch, low_memory)
    row: dict[str, Any] = {"params_m": params / 1e6, "estimate_gib": estimate / GIB,
                           "load": os.getloadavg()[0]}
    if estimate > limit_gib * GIB:
        return {**row, "skipped": f"estimated {estimate / GIB:.1f} GiB > {limit_gib:g} GiB limit"}
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build(case, low_memory)
    row["build_s"] = time.perf_counter() - start
    after_build = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
    start = time.perf_counter()
    train_step(model, batch, case.img_size)
    row["step_s"] = time.perf_counter() - start
    row["step_increment_mib"] = (status_kib("VmHWM") - after_build) / 1024
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return row


# ---------------------------------------------------------------- parent: sequence and table


def run_case(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """The case's row from a fresh process (a failure or timeout becomes the row's note)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, __file__, "--worker", json.dumps(asdict(case)), "--batch", str(args.batch),
               "--threads", str(args.threads), "--limit-gib", str(args.limit_gib),
               *(["--low-memory"] if args.low_memory else [])]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"stopped after the {args.timeout} s time limit"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {"skipped": f"failed: {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def cells(case: Case, row: dict[str, Any] | None) -> list[str]:
    tiny = f" (tiny: {case.model_kwargs})" if case.model_kwargs else ""
    first = [f"`{case.preset}`{tiny}", str(case.img_size)]
    if row is None:
        return first + ["not run (the run was stopped before it)"] + [""] * (len(COLUMNS) - 3)
    numbers = [f"{row['params_m']:.1f}", f"{row['estimate_gib']:.1f}"] if "params_m" in row else ["", ""]
    if "skipped" in row:
        load = f"{row['load']:.1f}" if "load" in row else ""
        return first + numbers + [f"skipped: {row['skipped']}"] + [""] * 3 + [load]
    return first + numbers + [f"{row['build_s']:.3g}", f"{row['step_s']:.3g}", f"{row['peak_rss_mib']:,.0f}",
                              f"{row['step_increment_mib']:,.0f}", f"{row['load']:.1f}"]


METHOD = """\
`{command}` on {day}. Machine: a shared 2-core CPU ({cpu}) with other people's jobs running: the
last column is the machine's 1-minute load average when the configuration started (above 2, other
jobs competed for the two cores, so times are slower than on an idle machine; memory hardly
depends on it). torch {torch}, {threads} torch threads, OMP_NUM_THREADS={threads}, {precision}.

Each row is its own process, run one after the other: `medpeft.adapt(preset, medpeft.LoraSettings(),
num_classes=2)` offline at random init (MeLo LoRA: q and v of every block, rank 4), then ONE training
step (AdamW) on a random batch of {batch} at the input size. *params*: of the adapted model (backbone,
LoRA and head). *build*: wall time of `adapt`; *step*:
wall time of that one step (the first, so it includes one-off allocation; indicative, not a median);
*peak RSS*: the process's peak resident memory (`ru_maxrss`: the build, Python, torch and the
libraries included); *step increment*: the step's peak above the resident size after the build
(activations, gradients of the adapter, optimizer state). *estimate*: the guard's estimate before
building (parameters x 4 bytes x 3 + activations, fused attention assumed, + 0.5 GiB; with
`--low-memory` parameters x 2 bytes x 3 + a quarter of the activations);
configurations above {limit:g} GiB are skipped. Presets whose recommended input is 518 px are also
measured at 224 px (the input column).
"""


def render(cases: list[Case], rows: dict[str, dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    """The results page: how it was measured, then one table row per case."""
    method = METHOD.format(command=command, day=date.today().isoformat(),
                           cpu=platform.processor() or platform.machine(), torch=version("torch"),
                           threads=args.threads, batch=args.batch, limit=args.limit_gib,
                           precision=LOW_MEMORY if args.low_memory else "fp32")
    lines = ["# Foundation-model presets: build time and LoRA fine-tuning memory (CPU)", "", method,
             "| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    lines += ["| " + " | ".join(cells(case, rows.get(case.label))) + " |" for case in cases]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", nargs="+", metavar="PRESET", help="these presets (default: all)")
    parser.add_argument("--quick", action="store_true", help="one tiny timm ViT, for a smoke test")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit-gib", type=float, default=16.0)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    parser.add_argument("--low-memory", action="store_true",
                        help="activation checkpointing + bf16 frozen weights (docs/scale.md)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.worker:
        import medpeft  # noqa: F401  (torchvision shim before timm/transformers)

        case = Case(**json.loads(args.worker))
        print(json.dumps(measure(case, args.batch, args.threads, args.limit_gib, args.low_memory)))
        return
    cases = quick_cases() if args.quick else full_cases(args.only)
    command = "python benchmarks/presets.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows: dict[str, dict[str, Any]] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for case in cases:
        rows[case.label] = run_case(case, args)
        print(case.label, json.dumps(rows[case.label]), flush=True)
        args.out.write_text(render(cases, rows, args, command.strip()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
