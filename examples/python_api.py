"""The medpeft Python API in one script: two task adapters on one frozen backbone.

Offline, about 10 seconds on 2 CPU cores::

    python examples/python_api.py                 # writes under runs/example
    python examples/python_api.py /tmp/example    # or any folder

What it does:

1. Writes two small synthetic chest-X-ray-like datasets (PNG files + CSV
   manifest): task ``lesion`` (2 classes) and task ``zone`` (4 classes).
2. Saves a tiny random-init ViT as a local checkpoint: the stand-in for a
   foundation model (a real run passes e.g. ``vit_base_patch16_224.safetensors``).
3. For each task: builds the backbone + LoRA (q/v, r=4, alpha=4) + a new head
   with ``ModelSpec``/``build_model``, trains it with ``medpeft.train.fit`` and
   saves the adapter (``adapter_model.safetensors`` + ``adapter_config.json``).
4. Loads both adapters onto ONE frozen backbone with ``load_adapter(...,
   model=...)``, switches between them with ``set_active_adapter`` and checks
   that each reproduces the predictions of the model it was trained in.

``main()`` returns a dict of what it built (used by ``tests/test_examples.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import medpeft  # noqa: F401  (import before timm/torchvision, see docs/CONTRIBUTING-INTERFACES.md)
from medpeft.adapters.inject import (
    adapter_names,
    count_adapter_parameters,
    count_parameters,
    set_active_adapter,
)
from medpeft.adapters.io import load_adapter, save_adapter
from medpeft.backbones import build_vit
from medpeft.data import (
    ImageClassificationDataset,
    build_loader,
    build_transform,
    make_synthetic_dataset,
    read_csv_manifest,
)
from medpeft.model import LoraSettings, ModelSpec, build_model
from medpeft.train import TrainSettings, evaluate, fit, predict

IMG_SIZE = 32
BACKBONE = "vit_tiny_patch16_224"  # any timm ViT name; shrunk below so the example runs on CPU
TINY = {"patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4}
TASKS = {  # adapter name -> (classes, images per class, data seed)
    "lesion": (("normal", "lesion"), 30, 0),
    "zone": (("normal", "upper", "middle", "lower"), 20, 1),
}


def make_backbone_checkpoint(path: Path) -> Path:
    """Save a tiny random-init ViT as the "pretrained" backbone both tasks share."""
    torch.manual_seed(0)
    vit = build_vit(BACKBONE, num_classes=1, img_size=IMG_SIZE, **TINY)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path


def loaders(manifest, batch_size: int = 16) -> dict:
    """Train/val/test loaders with ImageNet normalisation (timm's default for this ViT)."""
    out = {}
    for split in ("train", "val", "test"):
        train = split == "train"
        transform = build_transform(IMG_SIZE, train=train, hflip=0.5 if train else 0.0)
        dataset = ImageClassificationDataset.from_manifest(manifest, split, transform)
        out[split] = build_loader(dataset, batch_size, train=train, num_workers=0, seed=0)
    return out


def train_task(name: str, out: Path, backbone: Path, epochs: int) -> dict:
    """Build backbone + LoRA + head, train it, save the adapter; return what was made."""
    classes, per_class, seed = TASKS[name]
    csv = make_synthetic_dataset(out / "data" / name, classes, per_class, IMG_SIZE, seed=seed)
    manifest = read_csv_manifest(csv)
    data = loaders(manifest)

    spec = ModelSpec(
        BACKBONE,
        num_classes=manifest.num_classes,
        method="lora",
        img_size=IMG_SIZE,
        lora=LoraSettings(targets=("q", "v"), rank=4, alpha=4),  # MeLo defaults
        model_kwargs=dict(TINY),
    )
    torch.manual_seed(seed)
    model = build_model(spec, weights=backbone)  # backbone frozen; LoRA A/B + head train
    params = count_parameters(model)
    print(f"[{name}] {manifest.num_classes} classes; {params}; "
          f"LoRA {count_adapter_parameters(model):,}")

    settings = TrainSettings(epochs=epochs, lr=3e-3, warmup=1, amp=False, device="cpu", seed=0)
    result = fit(model, data["train"], data["val"], manifest.task, settings, out / "runs" / name,
                 class_names=manifest.classes, progress=False)
    test = evaluate(model, data["test"], manifest.task, manifest.classes).metrics
    print(f"[{name}] best epoch {result.best_epoch}: val AUROC "
          f"{result.best_metrics.get('auroc', float('nan')):.3f}, test AUROC {test['auroc']:.3f}")

    adapter_dir = save_adapter(
        model, out / "adapters" / name, spec, manifest.classes, manifest.task
    )
    size = sum(f.stat().st_size for f in adapter_dir.iterdir())
    print(f"[{name}] adapter saved to {adapter_dir} ({size / 1024:.1f} KiB)")
    return {
        "model": model,
        "manifest": manifest,
        "loaders": data,
        "params": params,
        "test_metrics": test,
        "adapter_dir": adapter_dir,
        "adapter_bytes": size,
    }


def main(out_dir: str | Path = "runs/example", epochs: int = 4, threads: int | None = 1) -> dict:
    """Run the example under ``out_dir``; return the trained tasks and the shared model.

    ``threads``: torch CPU threads while it runs (a model this small runs fastest
    on one; ``None`` keeps torch's setting).
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return run(Path(out_dir), epochs)
    finally:
        torch.set_num_threads(previous)


def run(out: Path, epochs: int) -> dict:
    """The body of :func:`main`."""
    out.mkdir(parents=True, exist_ok=True)
    backbone = make_backbone_checkpoint(out / "backbone.safetensors")
    tasks = {name: train_task(name, out, backbone, epochs) for name in TASKS}

    # One frozen backbone, two task adapters: the first load builds the model,
    # the second adds its LoRA weights and head to that same model.
    shared, _ = load_adapter(
        tasks["lesion"]["adapter_dir"], weights=backbone, adapter_name="lesion"
    )
    _, zone_config = load_adapter(tasks["zone"]["adapter_dir"], model=shared, adapter_name="zone")
    shared.eval()
    print(f"\nshared model: adapters {adapter_names(shared)}; {count_parameters(shared)}")

    # The same images through each adapter: switching changes LoRA weights and head.
    images, targets = next(iter(tasks["zone"]["loaders"]["test"]))
    zone_labels = tasks["zone"]["manifest"].classes
    print(f"  zone test images (true): {[zone_labels[t] for t in targets[::4]]}")
    outputs, matches = {}, {}
    for name, task in tasks.items():
        set_active_adapter(shared, name)
        labels = task["manifest"].classes
        with torch.no_grad():
            outputs[name] = shared(images)
            own = task["model"].eval()(images)  # the model the adapter was trained in
        matches[name] = torch.allclose(outputs[name], own, atol=1e-5)
        scores = predict(shared, [images], task["manifest"].task)
        top = [labels[i] for i in scores.argmax(1)[::4]]  # one test image per zone class
        print(f"  active {name!r}: logits {tuple(outputs[name].shape)}, predicted {top}, "
              f"same as in its training model: {matches[name]}")
    return {
        "tasks": tasks,
        "shared": shared,
        "outputs": outputs,
        "matches": matches,
        "zone_config": zone_config,
        "params": count_parameters(shared),
    }


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/example")
