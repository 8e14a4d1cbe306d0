"""The medpeft Python API in one script: one model builder for every method, many adapters on one backbone.

Offline, about 15 seconds on 2 CPU cores::

    python examples/python_api.py                 # writes under runs/example
    python examples/python_api.py /tmp/example    # or any folder

What it does:

1. Data: writes two small synthetic chest-X-ray-like datasets (PNG files + CSV
   manifest), task ``lesion`` (2 classes) and task ``zone`` (4 classes), and reads
   each with ``csv_source`` into a ``Source`` (records, labels, task, splits).
   ``Dataset`` + ``Collate`` + ``build_loader`` batch them as the batch dict every
   model takes: ``{"images": {modality: Tensor[B, 3, H, W]}, "present": Bool[B, M]}``.
2. Saves a tiny random-init ViT as a local checkpoint: the stand-in for a
   foundation model (a real run passes e.g. ``vit_base_patch16_224.safetensors``).
3. One spec, one builder: ``ModelSpec(backbone, classes, method="lora",
   settings=LoraSettings(...))`` -> ``build_model`` freezes the backbone and adds
   LoRA (q/v, r=4, alpha=4) + a new head; ``medpeft.train.fit`` trains it and
   ``save_adapter`` writes ``adapter_model.safetensors`` + ``adapter_config.json``.
4. Loads both adapters onto ONE frozen backbone (``load_adapter(..., model=...)``).
   A call picks its task with ``route(adapters="zone")``, or one task per sample
   with ``route(adapters=[...])`` (one batched pass); a call that routes none gets
   the first adapter loaded. Each adapter reproduces the predictions of the model
   it was trained in.
5. Any method, same builder and adapter format: a MoRA model over two image
   modalities (``method="mora", modalities=("a", "b")``) trained while 70% of the
   samples miss one modality (seeded missing tables; the model routes each batch's
   ``present`` mask to its MoRA layers), saved, and reloaded with ``load_adapter``.

``medpeft train CONFIG`` (``medpeft.runs.train.train_run``) runs steps 1, 3 and 5
from a YAML config. ``main()`` returns a dict of what it built (used by
``tests/test_examples.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import medpeft  # noqa: F401  (import before timm/torchvision, see docs/CONTRIBUTING-INTERFACES.md)
from medpeft.adapters_io.config import Preprocessing
from medpeft.adapters_io.folder import default_preprocessing, load_adapter, save_adapter
from medpeft.backbones import build_vit
from medpeft.data import (
    SPLITS,
    Collate,
    Dataset,
    MissingSetting,
    MissingTable,
    Source,
    build_loader,
    csv_source,
    make_split_tables,
    make_synthetic_dataset,
    split_settings,
    synthetic_source,
)
from medpeft.methods import LoraSettings, MoraSettings
from medpeft.methods.layers import adapter_names, count_parameters
from medpeft.methods.lora.attach import count_adapter_parameters
from medpeft.model import ModelSpec, build_model
from medpeft.routing import route
from medpeft.runs.data import image_transforms
from medpeft.train import TrainSettings, evaluate, fit, predict

IMG_SIZE = 32
BACKBONE = "vit_tiny_patch16_224"  # any timm ViT name; shrunk below so the example runs on CPU
TINY = {"patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4}
TASKS = {  # adapter name -> (classes, images per class, data seed)
    "lesion": (("normal", "lesion"), 30, 0),
    "zone": (("normal", "upper", "middle", "lower"), 20, 1),
}
MORA_MODALITIES = {"a": "image", "b": "image"}  # each shows one bit of a 4-class label


def make_backbone_checkpoint(path: Path) -> Path:
    """Save a tiny random-init ViT as the "pretrained" backbone every model shares."""
    torch.manual_seed(0)
    vit = build_vit(BACKBONE, num_classes=1, img_size=IMG_SIZE, **TINY)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path


def loaders(
    source: Source,
    pre: Preprocessing,
    tables: dict[str, MissingTable | None] | None = None,
    batch_size: int = 16,
) -> dict:
    """Train/val/test loaders of batch dicts, preprocessed as the backbone expects.

    ``tables``: a missing-modality table per split (several modalities); None: only
    the modalities a record really lacks are missing.
    """
    out = {}
    for split in SPLITS:
        train = split == "train"
        transforms = image_transforms(source.kinds, source.combine, pre, augment=train)
        table = (tables or {}).get(split)
        dataset = Dataset.from_source(source, split, transforms, table)
        out[split] = build_loader(dataset, batch_size, train=train, seed=0, collate_fn=Collate())
    return out


def settings(epochs: int, lr: float = 3e-3) -> TrainSettings:
    return TrainSettings(epochs=epochs, lr=lr, warmup=1, amp=False, device="cpu", seed=0)


def train_task(name: str, out: Path, backbone: Path, epochs: int) -> dict:
    """Build backbone + LoRA + head, train it, save the adapter; return what was made."""
    classes, per_class, seed = TASKS[name]
    manifest = make_synthetic_dataset(out / "data" / name, classes, per_class, IMG_SIZE, seed=seed)
    source = csv_source(manifest)  # one image modality, named "image"; splits from the CSV

    spec = ModelSpec(
        BACKBONE,
        num_classes=source.num_classes,
        method="lora",
        settings=LoraSettings(targets=("q", "v"), rank=4, alpha=4),  # MeLo defaults
        img_size=IMG_SIZE,
        model_kwargs=dict(TINY),
    )
    torch.manual_seed(seed)
    model = build_model(spec, weights=backbone)  # backbone frozen; LoRA A/B + head train
    pre = default_preprocessing(model, IMG_SIZE)  # the backbone's own normalisation
    data = loaders(source, pre)
    params = count_parameters(model)
    print(f"[{name}] {source.num_classes} classes; {params}; "
          f"LoRA {count_adapter_parameters(model):,}")

    result = fit(model, data["train"], data["val"], source.task, settings(epochs),
                 out / "runs" / name, class_names=source.labels, progress=False)
    test = evaluate(model, data["test"], source.task, source.labels).metrics
    print(f"[{name}] best epoch {result.best_epoch}: val AUROC "
          f"{result.best_metrics.get('auroc', float('nan')):.3f}, test AUROC {test['auroc']:.3f}")

    adapter_dir = save_adapter(
        model, out / "adapters" / name, spec, source.labels, source.task, pre,
        backbone_weights=backbone,  # recorded, so load_adapter finds the backbone again
    )
    size = sum(f.stat().st_size for f in adapter_dir.iterdir())
    print(f"[{name}] adapter saved to {adapter_dir} ({size / 1024:.1f} KiB)")
    return {
        "model": model,
        "source": source,
        "loaders": data,
        "params": params,
        "test_metrics": test,
        "adapter_dir": adapter_dir,
        "adapter_bytes": size,
    }


def train_mora(out: Path, backbone: Path, epochs: int) -> dict:
    """The same builder for another method and two modalities: MoRA, trained with missing data."""
    source = synthetic_source(out / "data" / "mora", MORA_MODALITIES, num_samples=160,
                              img_size=IMG_SIZE, seed=0)
    spec = ModelSpec(
        BACKBONE,
        num_classes=source.num_classes,
        method="mora",
        settings=MoraSettings(rank=4, blocks=(0,)),  # paper defaults: one branch around block 0
        img_size=IMG_SIZE,
        modalities=source.modalities,  # ("a", "b"): one token stream with modality embeddings
        model_kwargs=dict(TINY),
    )
    torch.manual_seed(0)
    model = build_model(spec, weights=backbone)  # MoRA + modality embeddings + head train
    # 70% of every split misses one modality (half a, half b), the same samples every run.
    ids = {split: source.ids(split) for split in SPLITS}
    tables = make_split_tables(ids, source.modalities, split_settings(MissingSetting(0.7, "both")))
    pre = default_preprocessing(model, IMG_SIZE)
    data = loaders(source, pre, tables)
    fit(model, data["train"], data["val"], source.task, settings(epochs, lr=5e-3),
        out / "runs" / "mora", class_names=source.labels, progress=False)
    test = evaluate(model, data["test"], source.task, source.labels).metrics
    adapter_dir = save_adapter(model, out / "adapters" / "mora", spec, source.labels, source.task,
                               pre, backbone_weights=backbone, kinds=source.kinds)

    reloaded, config = load_adapter(adapter_dir)  # the recorded backbone checkpoint is found
    batch, _ = next(iter(data["test"]))  # batch["present"]: which modalities each sample has
    with torch.no_grad():
        same = torch.allclose(model.eval()(batch), reloaded.eval()(batch), atol=1e-5)
    print(f"\n[mora] modalities {list(config.modalities)}; {count_parameters(model)}; test F1-macro "
          f"{test['f1_macro']:.3f} with 70% missing; reloaded adapter gives the same logits: {same}")
    return {"model": model, "adapter_dir": adapter_dir, "config": config, "test_metrics": test,
            "reloaded_matches": same}


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


def per_sample_matches(shared: nn.Module, images: torch.Tensor, names: list[str]) -> bool:
    """One pass with a task per sample equals each sample run through its own task.

    Compared on the backbone features: the two tasks' heads differ in width, and
    per-sample heads need one width (LoRA layers route per sample regardless).
    """
    with torch.no_grad():
        with route(adapters=names):
            mixed = shared.forward_features(images)
        own = {}
        for name in dict.fromkeys(names):
            with route(adapters=name):
                own[name] = shared.forward_features(images)
    expected = torch.stack([own[name][i] for i, name in enumerate(names)])
    return torch.allclose(mixed, expected, atol=1e-5)


def run(out: Path, epochs: int) -> dict:
    """The body of :func:`main`."""
    out.mkdir(parents=True, exist_ok=True)
    backbone = make_backbone_checkpoint(out / "backbone.safetensors")
    tasks = {name: train_task(name, out, backbone, epochs) for name in TASKS}

    # One frozen backbone, two task adapters: the first load builds the model
    # (from the backbone checkpoint recorded in the adapter), the second adds its
    # LoRA weights and head to that same model.
    shared, _ = load_adapter(tasks["lesion"]["adapter_dir"], adapter_name="lesion")
    _, zone_config = load_adapter(tasks["zone"]["adapter_dir"], model=shared, adapter_name="zone")
    shared.eval()
    print(f"\nshared model: adapters {adapter_names(shared)}; {count_parameters(shared)}")

    # The same images through each adapter: routing a task switches LoRA weights and head.
    batch, targets = next(iter(tasks["zone"]["loaders"]["test"]))
    images = batch["images"]["image"]  # a plain image tensor works as well as the batch dict
    zone_labels = tasks["zone"]["source"].labels
    print(f"  zone test images (true): {[zone_labels[t] for t in targets[::4]]}")
    outputs, matches = {}, {}
    for name, task in tasks.items():
        with torch.no_grad(), route(adapters=name):
            outputs[name] = shared(images)
        with torch.no_grad():
            own = task["model"].eval()(images)  # the model the adapter was trained in
        matches[name] = torch.allclose(outputs[name], own, atol=1e-5)
        source = task["source"]
        with route(adapters=name):  # also around a whole prediction pass
            scores = predict(shared, [images], source.task)
        top = [source.labels[i] for i in scores.argmax(1)[::4]]  # one test image per zone class
        print(f"  task {name!r}: logits {tuple(outputs[name].shape)}, predicted {top}, "
              f"same as in its training model: {matches[name]}")
    names = [list(TASKS)[i % len(TASKS)] for i in range(len(images))]
    mixed = per_sample_matches(shared, images, names)
    print(f"  one task per sample in one pass == each task alone: {mixed}")

    return {
        "tasks": tasks,
        "shared": shared,
        "outputs": outputs,
        "matches": matches,
        "mixed_matches": mixed,
        "zone_config": zone_config,
        "params": count_parameters(shared),
        "mora": train_mora(out, backbone, epochs),
    }


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/example")
