"""Early intervention vs late fusion, and MoR vs LoRA at an equal budget (synthetic multi-view task).

The claims under test (EI, arXiv 2603.17514): on a task whose label is split across
views, early intervention (EI) beats fusion after unimodal embedding (late fusion),
and the mixture of low-varied ranks (MoR) beats plain LoRA with the same number of
trainable adapter parameters.

Task: three image views ``a``, ``b``, ``c`` (``make_synthetic_multimodal``), each showing
one bit of an 8-class label as a bright or dark band, so every view carries a third of
the label; every image's brightness is shifted by ``N(0, 0.2 * 255)`` (clamped), which
blurs the bands; 1,200 samples split 60/20/20. Backbone: a tiny timm ViT (dim 64, depth 2, 32 px, patch 8) "pretrained"
once with every parameter trained on a related task (two bits of one view, another
data seed), then frozen. Arms, all through ``medpeft train`` (stage 1 per view, then
stage 2), the same recipe and seeds:

* ``EI + MoR``: ``model.fusion: early_intervention``, ``method: mor`` (ranks 2/4/8 on
  mlp.fc1/fc2: 10,248 adapter parameters per block);
* ``late + MoR``: ``model.fusion: late``, the same adapter;
* ``EI + LoRA``: early intervention with LoRA on mlp.fc1/fc2, rank 16, alpha 32 (scale 2
  as MoR's experts): 10,240 adapter parameters per block.

Metric: test mAP (the paper's) and accuracy; mean ± std over seeds, and per seed.

Run: ``python benchmarks/ei_mor.py [--seeds 0 1 2] [--epochs 6] [--out DIR]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import medpeft  # noqa: F401  (torchvision shim before timm)
from medpeft.atomic import atomic_write_text
from medpeft.config import load_config
from medpeft.data.synthetic_multimodal import make_synthetic_multimodal
from medpeft.runs.train import train_run

JITTER = 0.2  # brightness shift (fraction of 255) per image
VIEWS = ("a", "b", "c")

TINY = [
    "model.backbone=vit_tiny_patch16_224", "model.img_size=32", "model.pretrained=false",
    "model.kwargs={patch_size: 8, embed_dim: 64, depth: 2, num_heads: 4}",
    "train.amp=false", "train.device=cpu", "data.num_workers=0", "data.batch_size=32",
    "missing.train.eta=0.0", "missing.test={eta: 0.0, kind: both}", "missing.grid.etas=[0.5]",
    "missing.grid.kinds=[both]",
]
ARMS = {
    "EI + MoR": ["model.fusion=early_intervention", "method=mor"],
    "late + MoR": ["model.fusion=late", "method=mor"],
    "EI + LoRA": [
        "model.fusion=early_intervention", "method=lora", "lora.targets=[mlp.fc1, mlp.fc2]",
        "lora.rank=16", "lora.alpha=32",
    ],
}


def pretrain(work: Path, epochs: int) -> Path:
    """The frozen backbone every arm starts from: full training on a related task."""
    overrides = [
        f"output_dir={work / 'pretrain'}", *TINY, "method=full", "data.modalities={a: image}",
        "data.bits_per_modality=2", "data.num_samples=800", f"train.epochs={epochs}",
        "train.seed=100", "train.lr=2e-3",
    ]
    report = train_run(load_config(_synthetic(), overrides), progress=False)
    return report.adapter_dir / "adapter_model.safetensors"


def _synthetic() -> Path:
    from medpeft.cli import builtin_configs

    return builtin_configs()["mora_synthetic"]


def write_task(folder: Path, samples: int) -> Path:
    """The jittered three-view task as PNGs + manifest (the same data for every arm and seed)."""
    data = make_synthetic_multimodal(samples, VIEWS, img_size=32, split_fractions=(0.6, 0.2, 0.2), seed=7)
    rng = np.random.default_rng(8)
    for m, images in data.images.items():
        offsets = torch.from_numpy(rng.normal(0.0, JITTER * 255, (len(images), 1, 1, 1)))
        data.images[m] = (images.double() + offsets).clamp(0, 255).round().to(torch.uint8)
    return data.write(folder)


def run_arm(arm: str, seed: int, weights: Path, manifest: Path, work: Path, epochs: int) -> dict:
    overrides = [
        f"output_dir={work / arm.replace(' ', '').replace('+', '_')}-{seed}", *TINY, *ARMS[arm],
        "data.source=csv", f"data.manifest={manifest}", "data.modalities={a: image, b: image, c: image}",
        "data.label_cols=null", "data.task=multiclass",
        f"model.weights={weights}", f"train.seed={seed}", f"train.epochs={epochs}", "train.monitor=map",
    ]
    report = train_run(load_config(_synthetic(), overrides), progress=False)
    return {"map": report.test.metrics["map"], "accuracy": report.test.metrics["accuracy"],
            "trainable": report.params.trainable}


def _pm(values: Sequence[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def render(results: dict[str, list[dict]], seeds: Sequence[int]) -> str:
    lines = ["| arm | trainable | test mAP | accuracy | mAP per seed |", "|---|---:|---:|---:|---|"]
    for arm, rows in results.items():
        per_seed = " / ".join(f"{r['map']:.3f}" for r in rows)
        lines.append(
            f"| {arm} | {rows[0]['trainable']:,} | {_pm([r['map'] for r in rows])} | "
            f"{_pm([r['accuracy'] for r in rows])} | {per_seed} |"
        )
    gains = {
        "EI vs late fusion (MoR)": ("EI + MoR", "late + MoR"),
        "MoR vs LoRA (EI, equal budget)": ("EI + MoR", "EI + LoRA"),
    }
    lines += ["", "| comparison | mAP gain | per seed |", "|---|---:|---|"]
    for name, (a, b) in gains.items():
        diffs = [x["map"] - y["map"] for x, y in zip(results[a], results[b])]
        lines.append(f"| {name} | {_pm(diffs)} | {' / '.join(f'{d:+.3f}' for d in diffs)} |")
    return "\n".join(lines) + f"\n\nseeds: {list(seeds)}\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--samples", type=int, default=1200)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = pretrain(work, args.epochs * 2)
        manifest = write_task(work / "task", args.samples)
        results = {
            arm: [run_arm(arm, s, weights, manifest, work, args.epochs) for s in args.seeds]
            for arm in ARMS
        }
    table = render(results, args.seeds)
    atomic_write_text(Path(args.out) / "ei_mor.md", "# EI vs late fusion, MoR vs LoRA\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
