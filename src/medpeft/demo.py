"""``medpeft demo``: the whole MeLo workflow offline, in one to two minutes on 2 CPU cores.

(About 50 CPU-seconds: 48 at ``--threads 1``, 61 at 2; wall times on a shared 2-core
machine are in benchmarks/results/threads.md.)

1. Writes a synthetic chest-X-ray-like dataset (PNG files + CSV manifest) whose
   label is a spatial relation: no blob, one blob, a pair of blobs at the same
   height or at different heights (`medpeft.data.synthetic.make_pairs_dataset`);
   a rerun reuses it, as its finished runs recorded it.
2. "Pretrains" a tiny ViT on a different synthetic task (which of six mirrored
   blob pairs are present) and saves it as a local checkpoint: the stand-in for a
   foundation model, loaded like a real one through ``model.weights``.
3. Adapts it to the target task three ways on the same trainer: linear probe,
   LoRA (q/v, r=4) and full fine-tuning; saves each adapter. The pretrained [CLS]
   feature does not expose the relation linearly, so the three methods differ.
4. Writes a report page per method (``<method>/report/index.html``), a
   comparison page (``index.html``) and ``summary.md``, and prints the table.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from medpeft.atomic import atomic_write_text
from medpeft.config import DataSettings, ModelSettings, RunConfig
from medpeft.data.synthetic import PAIR_CLASSES, make_pairs_dataset, make_synthetic_dataset
from medpeft.methods import LoraSettings
from medpeft.reports import markdown_table, summary_header, summary_row
from medpeft.reports.compare import write_comparison_page
from medpeft.reports.page import write_report_page
from medpeft.run_layout import ADAPTER_DIR
from medpeft.runs.train import RunReport, train_run
from medpeft.train.settings import TrainSettings

TARGET_CLASSES = PAIR_CLASSES
SOURCE_FINDINGS = ("f0", "f1", "f2", "f3", "f4", "f5")
IMG_SIZE = 32
TINY_VIT = ModelSettings(
    backbone="vit_tiny_patch16_224",
    img_size=IMG_SIZE,
    pretrained=False,
    kwargs={"patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4},
)
METHODS = ("linear", "lora", "full")
LEARNING_RATES = {"linear": 3e-3, "lora": 3e-3, "full": 5e-4, "pretrain": 1e-3}
PRETRAIN_EPOCHS = 20
PRETRAIN_SAMPLES = 100  # per label: 600 images
EPOCHS = 25
SAMPLES_PER_CLASS = 150
COMPARISON_PAGE = "index.html"
MANIFEST = "manifest.csv"


def demo_config(name: str, out: Path, method: str, data_dir: Path, epochs: int, lr: float, **model) -> RunConfig:
    """Run config of one demo stage (tiny ViT, CPU, no AMP)."""
    return RunConfig(
        name=name,
        output_dir=str(out / name),
        method=method,
        model=dataclasses.replace(TINY_VIT, **model),
        settings={"lora": LoraSettings(targets=("q", "v"), rank=4, alpha=4)},
        data=DataSettings(source="csv", manifest=str(data_dir / MANIFEST), batch_size=32, num_workers=0),
        train=TrainSettings(
            epochs=epochs, lr=lr, amp=False, device="cpu", warmup=1,
            monitor="f1_macro", label_smoothing=0.1, seed=0,
        ),
    )


def pretrain_backbone(out: Path, epochs: int, progress: bool, samples_per_label: int = PRETRAIN_SAMPLES) -> Path:
    """Train the stand-in foundation model (full training, multi-label task); return its checkpoint."""
    data = out / "pretrain-data"
    if not (data / MANIFEST).is_file():  # a rerun keeps the data its finished runs recorded
        make_synthetic_dataset(
            data, SOURCE_FINDINGS, n_per_class=samples_per_label, img_size=IMG_SIZE, seed=1,
            task="multilabel",
        )
    config = demo_config("pretrain", out, "full", data, epochs, LEARNING_RATES["pretrain"])
    report = train_run(config, progress=progress)
    return report.adapter_dir / "adapter_model.safetensors"


def run_demo(
    out: Path,
    epochs: int = EPOCHS,
    progress: bool = True,
    pretrain_epochs: int = PRETRAIN_EPOCHS,
    samples_per_class: int = SAMPLES_PER_CLASS,
    pretrain_samples: int = PRETRAIN_SAMPLES,
) -> dict[str, RunReport]:
    """Run the demo under ``out``; return the report of each method (sizes shrink for tests)."""
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/4] writing synthetic data under {out}")
    data = out / "data"
    if not (data / MANIFEST).is_file():
        make_pairs_dataset(data, n_per_class=samples_per_class, img_size=IMG_SIZE, seed=0)
    print("[2/4] pretraining a tiny ViT (stand-in for a foundation model)")
    backbone = pretrain_backbone(out, pretrain_epochs, progress, pretrain_samples)
    print(f"[3/4] adapting {backbone} with {', '.join(METHODS)}")
    reports = {
        method: train_run(
            demo_config(method, out, method, data, epochs, LEARNING_RATES[method], weights=str(backbone)),
            progress=progress,
        )
        for method in METHODS
    }
    print("[4/4] writing the report pages")
    pages = {method: write_report_page(report.run_dir).page.parent for method, report in reports.items()}
    lead = (f"Synthetic blob-configuration task ({', '.join(TARGET_CLASSES)}); tiny ViT pretrained "
            "on another synthetic task, adapted three ways.")
    comparison = write_comparison_page(pages, out / COMPARISON_PAGE, lead)
    table = markdown_table(summary_header(), [summary_row(m, r) for m, r in reports.items()])
    atomic_write_text(out / "summary.md", table + "\n")
    print("\nTest-set results (synthetic data, tiny ViT):\n" + table)
    adapter = reports["lora"].run_dir / ADAPTER_DIR
    print(f"\nReport pages: {comparison} (one per method under {out}/<method>/report/)")
    print(f"LoRA adapter: {adapter} (it records its backbone checkpoint {backbone})")
    print(f"Try: medpeft predict {adapter} {data / 'images' / '00000.png'}")
    pair = data / "images" / f"{(len(TARGET_CLASSES) - 1) * samples_per_class:05d}.png"  # asymmetric
    print(f"     medpeft explain {adapter} {pair} --out {out / 'explain'}")
    return reports
