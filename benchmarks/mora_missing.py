"""MoRA trained with missing modalities vs LoRA trained on complete data (synthetic task).

The claim under test (MoRA, arXiv 2408.09064): at test missing rate eta = 0.7
("mixed": each chosen sample loses one of the two modalities), MoRA trained
under the same missing setting beats LoRA trained on complete data.

Task: two image modalities ``a`` and ``b`` (``make_synthetic_multimodal``, one
bit each, 4 classes; bit 0 is visible only in ``a``, bit 1 only in ``b``;
2,000 samples split 70/10/20). Every image gets a random global brightness
offset (``ExperimentConfig.jitter`` = 0.2), so a modality shows its bit with
~89 % Bayes accuracy: about 0.80 for a complete sample, 0.45 with one modality
missing. A missing image is the paper's all-ones tensor after normalisation.

Backbone: a tiny timm ViT (dim 64, depth 4, 4 heads, 32 px, patch 8) in the
token-concatenation fusion (``medpeft.fusion.concat``: both modalities' patch
tokens in one sequence). It is first pretrained once, with every parameter
trained (method ``full``, Adam lr 2e-3, 10 epochs), on a
*related* task: the same generator with two bits per modality (two bright/dark
bands per image, 16 classes), another data seed, complete data and no
brightness jitter; its validation accuracy is reported. Every method then
starts from these same frozen weights; besides its adapter it trains the head
and the (fresh) modality embeddings.

Methods (same recipe, epochs and seeds; the trainer's ``fit``): LoRA on q and v
of every block (r = 4, alpha = 4) and MoRA (paper defaults: r = 4, a branch
around block 0), each trained on complete data (eta = 0) and with missing data
(train/val eta = 0.7 mixed, the paper's protocol). Recipe (SPEC §2): AdamW
betas (0.9, 0.98), weight decay 0.02, lr 5e-3, 2 % warmup then linear decay,
best epoch by validation F1-macro; cross-entropy without label smoothing.

Every model is evaluated on the test split over eta x kind (seeded missing
tables). A seed sets the adapter/head init, the batch order and the missing
tables; the data and the pretrained backbone are the same for all seeds.

Run: ``python benchmarks/mora_missing.py [--seeds 0 1 2] [--epochs 8] [--out DIR] [--quick]``
(about 4 minutes on 2 busy CPU cores; one torch thread by default, see ``--threads``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader

import medpeft  # noqa: F401  (torchvision shim before timm)
from medpeft.atomic import atomic_write_text
from medpeft.data.collate import Collate
from medpeft.data.missing import (
    MissingSetting,
    MissingTable,
    make_missing_table,
    make_split_tables,
    split_seed,
    split_settings,
    test_grid,
)
from medpeft.data.synthetic_multimodal import (
    TINTS,
    SyntheticMultiModal,
    make_synthetic_multimodal,
)
from medpeft.errors import ConfigError
from medpeft.methods import LoraSettings, MoraSettings
from medpeft.methods.layers import count_parameters
from medpeft.model import ModelSpec, build_model
from medpeft.reports import (
    markdown_table,
    missing_grid_table,
    plot_missing_curves,
    plot_missing_heatmap,
)
from medpeft.train import TrainSettings, evaluate, fit, seed_everything

MODALITIES = ("a", "b")
TASK = "multiclass"
METRICS = ("accuracy", "f1_macro")
HEADLINE = ("mixed", 0.7)
GAIN_PAIRS = (
    ("mora-missing", "lora-complete"),
    ("mora-missing", "lora-missing"),
    ("lora-missing", "lora-complete"),
)
BACKBONE = dict(
    backbone="vit_tiny_patch16_224",
    img_size=32,
    model_kwargs=dict(patch_size=8, embed_dim=64, depth=4, num_heads=4),
)
SETTINGS = {  # adapter -> its settings (SPEC §2 / the papers' defaults)
    "lora": LoraSettings(targets=("q", "v"), rank=4, alpha=4.0),
    "mora": MoraSettings(rank=4, blocks=(0,)),
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPORT_NAME = "mora_missing"

Grid = dict[tuple[str, float], dict[str, float]]


@dataclass(frozen=True)
class Method:
    """One row: which adapter trains, and the missing rate (mixed) of its train/val data."""

    name: str
    adapter: str
    train_eta: float

    @property
    def train_setting(self) -> str:
        return "complete" if self.train_eta == 0 else f"mixed@{self.train_eta:g}"


METHODS = {
    m.name: m
    for m in (
        Method("lora-complete", "lora", 0.0),
        Method("mora-missing", "mora", 0.7),
        Method("lora-missing", "lora", 0.7),
        Method("mora-complete", "mora", 0.0),
    )
}


@dataclass
class ExperimentConfig:
    """Sizes and budget of one experiment (defaults: the full benchmark)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = tuple(METHODS)
    n: int = 2000
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    jitter: float = 0.2
    epochs: int = 8
    lr: float = 5e-3
    batch_size: int = 64
    pretrain_n: int = 2000
    pretrain_epochs: int = 10
    pretrain_lr: float = 2e-3
    pretrain_seed: int = 1000
    data_seed: int = 7
    test_etas: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.9)
    test_kinds: tuple[str, ...] = ("mixed", "a", "b")
    device: str = "auto"

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown methods {unknown}; expected some of {list(METHODS)}")
        kind, eta = HEADLINE
        if kind not in self.test_kinds or eta not in self.test_etas:
            raise ConfigError(f"the test grid must contain the headline setting {kind}@{eta:g}")


def quick_config() -> ExperimentConfig:
    """A < 1 minute smoke run: small data, one seed, few epochs."""
    return ExperimentConfig(seeds=(0,), n=400, epochs=2, pretrain_n=400, pretrain_epochs=2)


def make_task(
    n: int, bits_per_modality: int, jitter: float, seed: int, split: Sequence[float]
) -> SyntheticMultiModal:
    """The synthetic task; each image's grey plane is shifted by ``N(0, jitter)`` before tinting.

    A band's bit shows as its brightness (0.75 vs 0.25), so the shift makes a
    single bit ambiguous: Bayes error ``Phi(-0.25 / jitter)`` per bit (~11 % at 0.2).
    """
    data = make_synthetic_multimodal(
        n,
        MODALITIES,
        bits_per_modality=bits_per_modality,
        img_size=32,
        split_fractions=split,
        seed=seed,
    )
    rng = np.random.default_rng(seed + 1)
    for m, images in data.images.items():
        index = data.modalities.index(m) % len(TINTS)
        tint = torch.tensor(TINTS[index], dtype=torch.float64).reshape(1, 3, 1, 1)
        offsets = torch.from_numpy(rng.normal(0.0, jitter * 255, (len(images), 1, 1, 1)))
        shifted = images.double() + offsets * tint  # as if the grey plane were shifted
        data.images[m] = shifted.clamp(0, 255).round().to(torch.uint8)
    return data


def bit_accuracy(jitter: float) -> float:
    """Bayes accuracy of reading one bit under the brightness jitter: ``Phi(0.25 / jitter)``."""
    if jitter == 0:
        return 1.0
    return 0.5 * (1 + math.erf(0.25 / (jitter * math.sqrt(2))))


def make_loader(
    data: SyntheticMultiModal,
    split: str,
    table: MissingTable | None,
    batch_size: int,
    shuffle: bool = False,
) -> DataLoader:
    """In-memory batches of one split with a missing table applied."""
    dataset = data.dataset(split, table)
    return DataLoader(dataset, batch_size, shuffle=shuffle, collate_fn=Collate())


def recipe(cfg: ExperimentConfig, seed: int) -> TrainSettings:
    """MoRA's recipe (SPEC §2) at the experiment's budget."""
    return TrainSettings(
        epochs=cfg.epochs,
        optimizer="adamw",
        lr=cfg.lr,
        min_lr=0.0,
        weight_decay=0.02,
        betas=(0.9, 0.98),
        warmup_fraction=0.02,
        schedule="linear",
        label_smoothing=0.0,
        amp=False,
        monitor="f1_macro",
        seed=seed,
        log_every=10_000,
        device=cfg.device,
    )


def pretrain_backbone(cfg: ExperimentConfig, work: Path) -> tuple[Path, float]:
    """Fully train the tiny ViT on the related 2-bits-per-modality task.

    Returns:
        The saved backbone weights (``model.vit``, no head) and the best validation accuracy.
    """
    data = make_task(cfg.pretrain_n, 2, 0.0, cfg.pretrain_seed, cfg.split)
    seed_everything(cfg.pretrain_seed)
    spec = ModelSpec(num_classes=len(data.label_names), method="full", modalities=MODALITIES, **BACKBONE)
    model = build_model(spec)  # every parameter trains
    settings = TrainSettings(
        epochs=cfg.pretrain_epochs,
        lr=cfg.pretrain_lr,
        label_smoothing=0.0,
        amp=False,
        monitor="accuracy",
        seed=cfg.pretrain_seed,
        log_every=10_000,
        device=cfg.device,
    )
    train = make_loader(data, "train", None, cfg.batch_size, shuffle=True)
    val = make_loader(data, "val", None, cfg.batch_size)
    out = work / "pretrain"
    fitted = fit(model, train, val, TASK, settings, out, data.label_names, False, False)
    path = work / "backbone.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.vit.state_dict().items()}, path)
    return path, fitted.best_metrics["accuracy"]


def build_method(method: Method, num_classes: int, weights: Path) -> nn.Module:
    """The two-modality model of ``method`` on the pretrained, frozen backbone."""
    spec = ModelSpec(
        num_classes=num_classes,
        method=method.adapter,
        settings=SETTINGS[method.adapter],
        modalities=MODALITIES,
        **BACKBONE,
    )
    return build_model(spec, weights=weights)


def train_method(
    method: Method,
    cfg: ExperimentConfig,
    data: SyntheticMultiModal,
    weights: Path,
    seed: int,
    work: Path,
) -> nn.Module:
    """Train one method for one seed under its train/val missing setting; return the best model."""
    seed_everything(seed)
    model = build_method(method, len(data.label_names), weights)
    settings = split_settings(MissingSetting(method.train_eta, "mixed"))
    split_ids = {split: data.ids(split) for split in ("train", "val")}
    tables = make_split_tables(split_ids, MODALITIES, settings, seed)
    train = make_loader(data, "train", tables["train"], cfg.batch_size, shuffle=True)
    val = make_loader(data, "val", tables["val"], cfg.batch_size)
    out = work / f"{method.name}_seed{seed}"
    fit(model, train, val, TASK, recipe(cfg, seed), out, data.label_names, False, False)
    return model


def evaluate_grid(
    model: nn.Module, cfg: ExperimentConfig, data: SyntheticMultiModal, seed: int
) -> Grid:
    """Test metrics for every (kind, eta) of the grid, with seeded test missing tables."""
    grid: Grid = {}
    for setting in test_grid(cfg.test_etas, cfg.test_kinds):
        table = make_missing_table(
            data.ids("test"), MODALITIES, setting.eta, setting.kind, split_seed(seed, "test")
        )
        loader = make_loader(data, "test", table, 256)
        result = evaluate(model, loader, TASK, data.label_names, amp_dtype=None)
        grid[setting.kind, setting.eta] = {k: float(result.metrics[k]) for k in METRICS}
    return grid


def aggregate(grids: Sequence[Grid]) -> tuple[Grid, Grid]:
    """Per-cell mean and (sample) standard deviation over seeds (std 0 for one seed)."""
    mean: Grid = {}
    std: Grid = {}
    for cell in grids[0]:
        values = {k: [g[cell][k] for g in grids] for k in METRICS}
        mean[cell] = {k: statistics.fmean(v) for k, v in values.items()}
        std[cell] = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in values.items()}
    return mean, std


def paired_gains(per_seed: dict[str, list[Grid]]) -> dict[tuple[str, str], list[float]]:
    """Per-seed ``better - baseline`` F1-macro at the headline for the pairs that ran."""
    gains = {}
    for better, baseline in GAIN_PAIRS:
        if better in per_seed and baseline in per_seed:
            gains[better, baseline] = [
                b[HEADLINE]["f1_macro"] - a[HEADLINE]["f1_macro"]
                for a, b in zip(per_seed[baseline], per_seed[better])
            ]
    return gains


def by_method(grids: dict[str, Grid]) -> Grid:
    """One grid whose rows are ``method: kind`` (for a side-by-side table)."""
    return {
        (f"{name}: {kind}", eta): metrics
        for name, grid in grids.items()
        for (kind, eta), metrics in grid.items()
    }


def _pm(values: Sequence[float]) -> str:
    """``mean ± sample std`` (std 0 for a single value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {std:.4f}"


def _seeds(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def headline_table(result: dict) -> str:
    """Markdown: every method at the headline test setting, mean ± std and per-seed F1."""
    header = ["method", "train/val data", "trainable params", "accuracy", "F1-macro", "F1 per seed"]
    rows = []
    for name, info in result["methods"].items():
        cells = [grid[HEADLINE] for grid in result["per_seed"][name]]
        f1 = [c["f1_macro"] for c in cells]
        rows.append([
            name, info["train_setting"], f"{info['trainable_params']:,}",
            _pm([c["accuracy"] for c in cells]), _pm(f1), _seeds(f1),
        ])
    return markdown_table(header, rows) + "\n"


def gains_table(gains: dict[tuple[str, str], list[float]]) -> str:
    """Markdown: paired (same seed) F1-macro differences at the headline setting."""
    rows = [[f"{better} - {baseline}", _pm(diffs), _seeds(diffs)] for (better, baseline), diffs in gains.items()]
    return markdown_table(["comparison", "F1-macro gain", "per seed"], rows) + "\n"


def render_report(result: dict) -> str:
    """The markdown report: setup, headline, paired gains and the full test grids."""
    cfg = result["config"]
    kind, eta = HEADLINE
    bit = bit_accuracy(cfg["jitter"])
    headline_bayes = (1 - eta) * bit**2 + eta * bit / 2
    setup = (
        f"Synthetic task: two image modalities, 4 classes (one bit per modality), brightness "
        f"jitter {cfg['jitter']}: Bayes accuracy {bit**2:.3f} complete, {bit / 2:.3f} with one "
        f"modality missing, {headline_bayes:.3f} at the headline setting; n = {cfg['n']}, "
        f"train/val/test {list(cfg['split'])}. Tiny timm ViT "
        f"pretrained on a related task (validation accuracy {result['pretrain_accuracy']:.3f}) "
        f"and frozen. {cfg['epochs']} epochs, lr {cfg['lr']}, seeds {list(cfg['seeds'])}. "
        f"Runtime {result['seconds']:.0f} s ({result['device']}, "
        f"{result['threads']} thread(s)). Protocol: the docstring of "
        "`benchmarks/mora_missing.py`."
    )
    parts = [
        "# MoRA trained with missing data vs LoRA trained on complete data\n",
        setup + "\n",
        f"## Headline: test missing type {kind}, eta = {eta} "
        f"(mean ± std over {len(cfg['seeds'])} seed(s))\n",
        headline_table(result),
    ]
    if result["gains"]:
        parts += ["Paired differences (same seeds and tables):\n", gains_table(result["gains"])]
    combined = by_method(result["mean"])
    for metric in METRICS:
        parts += [f"## Test grid: {metric}, seed mean\n", missing_grid_table(combined, metric)]
    return "\n".join(parts)


def write_outputs(result: dict, out: Path) -> list[Path]:
    """The markdown report, and per method a kind x eta heatmap and curves of seed-mean F1."""
    out.mkdir(parents=True, exist_ok=True)
    files = [atomic_write_text(out / f"{REPORT_NAME}.md", render_report(result))]
    for name, grid in result["mean"].items():
        files.append(plot_missing_heatmap(grid, out / f"{REPORT_NAME}_heatmap_{name}.png"))
        files.append(plot_missing_curves(grid, out / f"{REPORT_NAME}_curves_{name}.png"))
    return files


def run_experiment(cfg: ExperimentConfig, out: str | Path | None = None) -> dict:
    """Pretrain, train every method for every seed, evaluate the grid; optionally write files.

    Returns:
        ``config``, ``device``, ``methods`` (adapter, train setting, trainable
        parameters), ``per_seed`` / ``mean`` / ``std`` (method -> ``(kind, eta)``
        -> metric), ``gains`` (``(better, baseline)`` -> per-seed F1-macro
        differences at the headline), ``seconds`` and ``files``.
    """
    start = time.perf_counter()
    data = make_task(cfg.n, 1, cfg.jitter, cfg.data_seed, cfg.split)
    per_seed: dict[str, list[Grid]] = {name: [] for name in cfg.methods}
    methods: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights, pretrain_accuracy = pretrain_backbone(cfg, work)
        for seed in cfg.seeds:
            for name in cfg.methods:
                method = METHODS[name]
                model = train_method(method, cfg, data, weights, seed, work)
                per_seed[name].append(evaluate_grid(model, cfg, data, seed))
                methods[name] = {
                    "adapter": method.adapter,
                    "train_setting": method.train_setting,
                    "trainable_params": count_parameters(model).trainable,
                }
    stats = {name: aggregate(grids) for name, grids in per_seed.items()}
    result = {
        "config": asdict(cfg),
        "device": str(next(model.parameters()).device),
        "threads": torch.get_num_threads(),
        "pretrain_accuracy": pretrain_accuracy,
        "methods": methods,
        "per_seed": per_seed,
        "mean": {name: s[0] for name, s in stats.items()},
        "std": {name: s[1] for name, s in stats.items()},
        "gains": paired_gains(per_seed),
        "seconds": time.perf_counter() - start,
        "files": [],
    }
    if out is not None:
        result["files"] = write_outputs(result, Path(out))
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="< 1 min smoke run (1 seed, tiny)")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2)")
    parser.add_argument("--epochs", type=int, help="epochs per method (default 8)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="rows to run")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared, busy CPU more threads thrash)",
    )
    parser.add_argument(
        "--out", type=Path, help=f"output folder (default {RESULTS_DIR}; --quick: a temp folder)"
    )
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The default (or quick) configuration with the command-line overrides."""
    cfg = quick_config() if args.quick else ExperimentConfig()
    overrides = {"seeds": args.seeds, "epochs": args.epochs, "methods": args.methods}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v}
    return replace(cfg, device=args.device, **overrides)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:  # tiny validation/test splits miss some classes; the metrics say so
        warnings.filterwarnings("ignore", "auroc|map|sensitivity|specificity", RuntimeWarning)
    cfg = config_from_args(args)
    quick_out = Path(tempfile.gettempdir()) / "mora_missing_quick"
    out = args.out or (quick_out if args.quick else RESULTS_DIR)
    result = run_experiment(cfg, out)
    print(render_report(result))
    print("wrote:", *result["files"], sep="\n  ")


if __name__ == "__main__":
    main()
