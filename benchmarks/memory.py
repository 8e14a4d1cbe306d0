"""Memory of fine-tuning large ViTs: full fine-tuning, medpeft LoRA and HF PEFT LoRA, with
activation checkpointing and frozen weights in bf16.

Models (timm, random init, 224 px, ``--batch`` 8): ViT-B/16, ViT-L/16, ViT-H/14, ViT-g/14, on a
CUDA GPU when one is present, otherwise on the CPU (where a configuration whose estimated peak
exceeds ``--limit-gib`` is skipped with the reason printed: ViT-g full fine-tuning at 16 GiB).
Configurations (:data:`CONFIGS`):

- ``full``: full fine-tuning (``method: full``, every parameter in AdamW);
- ``lora``: medpeft LoRA, MeLo defaults (q and v of every block, rank 4, alpha 4);
- ``peft``: HF PEFT LoRA on the same fused ``attn.qkv`` Linear at rank 2r with scale 1 (as in
  ``bench_lora_vs_peft.py``: PEFT cannot target the q and v rows of timm's fused qkv alone;
  the same q/v update, plus the k rows and cross terms of B), head in ``modules_to_save``;
- ``+ckpt``: medpeft's activation checkpointing (`medpeft.checkpointing`); for PEFT timm's
  own ``set_grad_checkpointing`` (torch.utils.checkpoint around every block);
- ``+bf16``: medpeft's ``frozen_dtype=bfloat16`` (frozen Linear/Conv in bf16, built in it;
  activations, adapters, head and optimizer state fp32); for PEFT the usual way: the timm
  model cast to bf16 as a whole (activations and head bf16 too, adapters fp32 by PEFT's
  ``autocast_adapter_dtype``), a different numeric recipe, not a like-for-like peer;
- ``+int8``: medpeft's ``frozen_dtype=int8`` (torchao weight-only int8 Linear weights, one
  scale per row, matmuls in bf16; patch embedding bf16; the rest as ``+bf16``); for PEFT the
  timm model cast to bf16 and its Linears but the head quantized with the same torchao config,
  PEFT's ``TorchaoLoraLinear`` on top (activations bf16, as in ``+bf16``);
- ``+amp``: the forward under bf16 autocast (``train.amp: true, amp_dtype: bf16``): the
  adapters' and head's matmuls in bf16 too.

Every configuration runs in its own process; the configurations of a model are run in turn,
``--repeats`` times (interleaved: config 1, 2, ..., then again), one process at a time. Per
process: *peak*: the process's peak resident memory (``ru_maxrss``: build, steps, libraries)
or, on a GPU, ``torch.cuda.max_memory_allocated`` (build and steps); *step increment*: the
steps' peak above the memory after the build (``/proc/self/clear_refs`` resets ``VmHWM``);
*s/step*: the median of ``--steps`` AdamW steps after the first. The table holds the median
over the repeats. A configuration whose estimated peak exceeds ``--limit-gib`` is skipped.

Run: ``python benchmarks/memory.py`` (writes benchmarks/results/memory.md and its raw results,
memory.json, after every process); ``--models vit-b --configs lora peft --steps 2 --repeats 1``
for a quick run; ``--combine a.json b.json`` makes one page of several runs (models run side by
side, each with its own ``--out``); ``--notes FILE`` appends a markdown file's readings below
the table, so a rerun or a combine keeps them.
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
import time
from datetime import date
from importlib.metadata import version
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "memory.md"
GIB = 1024 ** 3
MODELS = {  # key -> timm name
    "vit-b": "vit_base_patch16_224",
    "vit-l": "vit_large_patch16_224",
    "vit-h": "vit_huge_patch14_224",
    "vit-g": "vit_giant_patch14_224",
}
CONFIGS = ("full", "lora", "peft", "lora+ckpt", "peft+ckpt", "lora+bf16", "peft+bf16", "lora+ckpt+bf16",
           "peft+ckpt+bf16", "lora+ckpt+int8", "peft+ckpt+int8", "lora+bf16+amp", "lora+ckpt+bf16+amp", "lora+ckpt+int8+amp")
NUM_CLASSES = 10
RANK = 4  # medpeft's rank; PEFT's is 2 * RANK on the fused qkv
OVERHEAD_BYTES = GIB // 2  # libraries and allocator, beyond weights and activations


# ---------------------------------------------------------------- worker (one configuration per process)


def build(name: str, config: str) -> Any:
    """The model of ``config`` (random init; call after seeding)."""

    from medpeft.checkpointing import enable_checkpointing
    from medpeft.methods import LoraSettings
    from medpeft.model import ModelSpec, build_model

    parts = set(config.split("+"))
    if "peft" in parts:
        return build_peft(name, "ckpt" in parts, frozen_dtype(parts))
    method = "full" if "full" in parts else "lora"
    settings = LoraSettings(targets=("q", "v"), rank=RANK, alpha=float(RANK)) if method == "lora" else None
    model = build_model(ModelSpec(name, NUM_CLASSES, method, settings, img_size=224),
                        frozen_dtype=frozen_dtype(parts))
    if "ckpt" in parts:
        enable_checkpointing(model)
    return model


def frozen_dtype(parts: set[str]) -> Any:
    """The frozen weights' dtype a configuration names (fp32 unless ``bf16`` or ``int8``)."""
    import torch

    return torch.int8 if "int8" in parts else torch.bfloat16 if "bf16" in parts else torch.float32


def build_peft(name: str, checkpointing: bool, dtype: Any) -> Any:
    """HF PEFT LoRA (rank 2r, scale 1) on timm's fused qkv, as in bench_lora_vs_peft.py."""
    import peft
    import timm
    import torch

    model = timm.create_model(name, num_classes=NUM_CLASSES, img_size=224)
    if dtype != torch.float32:
        model.to(torch.bfloat16)
    if dtype == torch.int8:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig(set_inductor_config=False),
                  filter_fn=lambda module, fqn: isinstance(module, torch.nn.Linear) and not fqn.startswith("head"))
    if checkpointing:
        model.set_grad_checkpointing(True)
    config = peft.LoraConfig(r=2 * RANK, lora_alpha=2 * RANK, target_modules=["qkv"], modules_to_save=["head"])
    return peft.get_peft_model(model, config)


def status_kib(name: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {name}")


class Meter:
    """Peak memory of this process: resident (CPU) or allocated by torch (CUDA), in bytes."""

    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device == "cuda"
        self.torch = torch

    def now(self) -> int:
        return self.torch.cuda.memory_allocated() if self.cuda else status_kib("VmRSS") * 1024

    def peak(self) -> int:
        if self.cuda:
            return self.torch.cuda.max_memory_allocated()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)

    def peak_since_reset(self) -> int:
        return self.torch.cuda.max_memory_allocated() if self.cuda else status_kib("VmHWM") * 1024


def train_steps(model: Any, batch: int, steps: int, device: str, amp: bool = False) -> list[float]:
    """``steps`` AdamW steps on a fixed random batch (``amp``: forward under bf16 autocast); the
    seconds of each."""
    import torch

    from medpeft.mixed_precision import autocast

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    dtype = next(model.parameters()).dtype if "Peft" in type(model).__name__ else torch.float32
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    labels = (torch.arange(batch) % NUM_CLASSES).to(device)
    model.train()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with autocast(torch.device(device), torch.bfloat16 if amp else None):
            logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def measure(name: str, config: str, batch: int, steps: int, device: str) -> dict[str, Any]:
    """One configuration in this process: build, steps, memory."""
    import torch

    meter = Meter(device)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build(name, config).to(device)
    build_s = time.perf_counter() - start
    built, build_peak = meter.now(), meter.peak()
    meter.reset_peak()
    times = train_steps(model, batch, steps, device, amp="amp" in config.split("+"))
    increment = meter.peak_since_reset() - built
    return {"peak_gib": max(build_peak, meter.peak()) / GIB, "increment_gib": increment / GIB,
            "step_s": statistics.median(times[1:] or times), "build_s": build_s,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "load": os.getloadavg()[0]}


# ---------------------------------------------------------------- the estimate that skips a configuration


def estimate_gib(name: str, config: str, batch: int) -> float:
    """Weights (+ gradients and AdamW state under full fine-tuning) + stored activations
    (``batch x tokens x the in+out features of every Linear x bytes``, fused attention;
    with checkpointing one block's and every block's input) + 0.5 GiB, from a meta build."""
    import timm
    import torch
    from torch import nn

    with torch.device("meta"):
        model = timm.create_model(name, num_classes=NUM_CLASSES, img_size=224)
    params = sum(p.numel() for p in model.parameters())
    parts = set(config.split("+"))
    weight_bytes = 1 if "int8" in parts else 2 if "bf16" in parts else 4
    weights = params * (16 if "full" in parts else weight_bytes)
    tokens = (224 // model.patch_embed.patch_size[0]) ** 2 + 1
    linear = sum(m.in_features + m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    act_bytes = 2 if "peft" in parts and parts & {"bf16", "int8"} else 4
    activations = batch * tokens * linear * act_bytes
    if "ckpt" in parts:
        depth = len(model.blocks)
        activations = activations // depth + depth * batch * tokens * model.embed_dim * act_bytes
    return (weights + activations + OVERHEAD_BYTES) / GIB


# ---------------------------------------------------------------- parent: order, processes, table


def run_config(key: str, config: str, args: argparse.Namespace) -> dict[str, Any]:
    """The configuration's row from a fresh process (a skip, failure or timeout: its reason)."""
    name = MODELS[key]
    estimate = estimate_gib(name, config, args.batch)
    if args.device == "cpu" and estimate > args.limit_gib:
        return {"skipped": f"estimated {estimate:.1f} GiB > {args.limit_gib:g} GiB"}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, __file__, "--worker", key, config, "--batch", str(args.batch),
               "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"stopped after {args.timeout} s"}
    if done.returncode != 0:
        return {"skipped": "failed: " + (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def planned_skip(result: dict[str, Any]) -> bool:
    """A skip decided before running (over the limit), not a failure or a timeout."""
    return "skipped" in result and not result["skipped"].startswith(("stopped", "failed"))


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over the repeats of a configuration (the latest skip reason if none ran)."""
    done = [r for r in runs if "skipped" not in r]
    if not done:
        return runs[-1]
    return {k: statistics.median(r[k] for r in done) for k in done[0]} | {"repeats": len(done)}


def cells(row: dict[str, Any] | None, full: dict[str, Any] | None) -> list[str]:
    """peak, increment, s/step, ratio to the model's full fine-tuning peak."""
    if row is None:
        return ["not run", "", "", ""]
    if "skipped" in row:
        return [f"skipped: {row['skipped']}", "", "", ""]
    ratio = f"{row['peak_gib'] / full['peak_gib']:.2f}x" if full and "peak_gib" in full else "-"
    return [f"{row['peak_gib']:.2f}", f"{row['increment_gib']:.2f}", f"{row['step_s']:.1f}", ratio]


METHOD = """\
{command} on {day}: {device}, torch {torch}, timm {timm}, peft {peft}, {threads} torch thread(s),
OMP_NUM_THREADS={threads}, batch {batch}, 224 px, random init, fp32 compute but for `+amp`, AdamW. A shared machine
(other people's jobs ran at the same time): the range of the 1-minute load average at the end of
each model's configurations is in the notes; step times are indicative only, memory hardly
depends on the load.

Each configuration is its own process, run one at a time, the configurations of a model in turn
and the whole round repeated (the rounds of each model are in the notes below the table); each
cell is the median over the rounds. *peak*: the
process's peak {peak_what} (GiB; the build included); *incr.*: the training steps' peak above the
memory right after the build (GiB: activations, gradients, optimizer state); *s/step*: median of
{steps} steps after the first; *vs full*: peak / full fine-tuning's peak of the same model. Configurations:
medpeft `lora` = MeLo LoRA (q, v of every block, rank 4, alpha 4); `peft` = HF PEFT LoRA on the same
fused `attn.qkv` at rank 8, scale 1 (PEFT cannot target q and v of a fused qkv alone; see
`bench_lora_vs_peft.py`); `+ckpt` = medpeft's activation checkpointing (PEFT: timm's own
`set_grad_checkpointing`, torch.utils.checkpoint per block); `+bf16` = medpeft `frozen_dtype:
bfloat16` (frozen Linear/Conv in bf16, built in it; activations, adapters, head, optimizer
state fp32); for PEFT, the timm model cast to bf16 as a whole (activations and head bf16 too:
less memory for the activations, a different numeric recipe); `+int8` = medpeft `frozen_dtype: int8`
(torchao weight-only int8 Linear weights, bf16 matmuls; PEFT: the bf16 timm model's Linears but the
head quantized with the same torchao config, PEFT's TorchaoLoraLinear on top); `+amp` = the forward
under bf16 autocast (`train.amp: true, amp_dtype: bf16`). Estimated peaks above {limit:g} GiB
are skipped (weights x 4 bytes, x 16 under full fine-tuning, + stored activations + 0.5 GiB).
"""


def render(keys: list[str], configs: list[str], rows: dict[tuple[str, str], dict], notes: dict[str, str],
           args: argparse.Namespace, commands: list[str]) -> str:
    """The results page."""
    import peft
    import torch

    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    method = METHOD.format(command=", ".join(f"`{c}`" for c in commands), day=date.today().isoformat(), device=device,
                           torch=version("torch"), timm=version("timm"), peft=peft.__version__,
                           threads=args.threads, batch=args.batch, steps=args.steps - 1,
                           limit=args.limit_gib,
                           peak_what="GPU memory allocated by torch" if args.device == "cuda" else "resident memory")
    head = "| config | " + " | ".join(f"{k} peak | {k} incr. | {k} s/step | {k} vs full" for k in keys) + " |"
    lines = ["# Fine-tuning memory of large ViTs: full, medpeft LoRA, HF PEFT LoRA", "", method, head,
             "|---|" + "---:|" * (4 * len(keys))]
    for config in configs:
        row = [c for k in keys for c in cells(rows.get((k, config)), rows.get((k, "full")))]
        lines.append(f"| {config} | " + " | ".join(row) + " |")
    lines += ["", *(f"- {k} (`{MODELS[k]}`): {note}" for k, note in notes.items())]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["vit-b", "vit-l", "vit-h", "vit-g"])
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=3, help="training steps per process (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument("--limit-gib", type=float, default=16.0, help="skip CPU configurations estimated above")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per process")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--combine", nargs="+", type=Path, metavar="JSON", help="one page from earlier runs' .json")
    parser.add_argument("--notes", type=Path, metavar="MD", help="markdown appended below the table (readings kept "
                        "across reruns and --combine)")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv: list[str] | None = None) -> None:
    import medpeft  # noqa: F401  (torchvision shim before timm/peft)

    args = parse(argv)
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        key, config = args.worker
        print(json.dumps(measure(MODELS[key], config, args.batch, args.steps, args.device)))
        return
    if args.combine:
        combine(args)
        return
    command = "python benchmarks/memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record: dict[str, Any] = {"commands": [command.strip()], "runs": []}
    runs: dict[tuple[str, str], list[dict]] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for key in args.models:
        for _ in range(args.repeats):
            for config in args.configs:
                if any(planned_skip(r) for r in runs.get((key, config), [])):
                    continue  # the same every round
                result = run_config(key, config, args)
                runs.setdefault((key, config), []).append(result)
                record["runs"].append([key, config, result])
                print(key, config, json.dumps(result), flush=True)
                write(record, args.models, args.configs, args)
    print(args.out.read_text())


def write(record: dict[str, Any], keys: list[str], configs: list[str], args: argparse.Namespace) -> None:
    """The page and its raw results (``.json`` beside it, which ``--combine`` reads)."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for key, config, result in record["runs"]:
        runs.setdefault((key, config), []).append(result)
    rows = {pair: summary(results) for pair, results in runs.items()}
    page = render(keys, configs, rows, notes(runs), args, record["commands"])
    if args.notes:
        page += "\n" + args.notes.read_text()
    args.out.write_text(page)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1))


def notes(runs: dict[tuple[str, str], list[dict]]) -> dict[str, str]:
    """Per model: the rounds its configurations ran and the load averages when they ended."""
    out = {}
    for key in [k for k in MODELS if any(k == run_key for run_key, _ in runs)]:
        done = [[r for r in results if "load" in r] for (k, _), results in runs.items() if k == key]
        loads = [r["load"] for results in done for r in results]
        if loads:
            rounds = "-".join(str(n) for n in sorted({len(d) for d in done if d}))
            out[key] = f"{rounds} round(s); load average {min(loads):.1f} to {max(loads):.1f}"
    return out


def combine(args: argparse.Namespace) -> None:
    """One page from the ``.json`` files of several runs (e.g. one model each, run side by side)."""
    record: dict[str, Any] = {"commands": [], "runs": []}
    for path in args.combine:
        part = json.loads(path.read_text())
        record["commands"] += part["commands"]
        record["runs"] += part["runs"]
    notes_option = f" --notes {args.notes}" if args.notes else ""
    record["commands"].append("python benchmarks/memory.py --combine " + " ".join(str(p) for p in args.combine)
                              + notes_option)
    keys = [k for k in MODELS if any(run[0] == k for run in record["runs"])]
    configs = [c for c in CONFIGS if any(run[1] == c for run in record["runs"])]
    write(record, keys, configs, args)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
