"""Run a multimodal experiment (MoRA and baselines) from a :class:`MultiModalRunConfig`.

``train_multimodal`` is what ``medpeft train`` does with a ``run_type: multimodal``
config. The run folder holds:

* ``config.yaml``: the resolved config; ``missing_{train,val,test}.csv``: the
  seeded missing tables the splits were read with;
* ``metrics.csv``, ``best.safetensors``, ``checkpoint.pt``: the trainer's log,
  best weights and resume state;
* ``adapter/``: ``trainable.safetensors`` (every trained tensor) and
  ``model_spec.json`` (architecture, labels, task) to rebuild the model;
* ``test_metrics.json``: the test split under the test setting;
* ``grid.md``, ``grid.json``, ``grid_heatmap.png``, ``grid_curves.png``: the test
  split under every ``missing.grid`` setting (kind x eta).

``evaluate_multimodal_run`` re-evaluates a finished run (``medpeft eval``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medpeft.adapters.inject import ParameterCount, count_parameters
from medpeft.atomic import atomic_write_text
from medpeft.configtools import from_dict, to_dict
from medpeft.data.missing import MissingTable, save_tables
from medpeft.data.multimodal import MultiModalSource
from medpeft.errors import ConfigError
from medpeft.metrics import format_metrics_table
from medpeft.multimodal_config import (
    MultiModalModelSettings,
    MultiModalRunConfig,
    load_multimodal_config,
)
from medpeft.multimodal_data import (
    RunData,
    grid_tables,
    load_source,
    overall,
    run_data,
    split_tables,
    text_modality,
)
from medpeft.multimodal_model import MultiModalSpec, build_from_spec
from medpeft.reports import (
    Results,
    missing_grid_table,
    plot_missing_curves,
    plot_missing_heatmap,
)
from medpeft.runner import ADAPTER_DIR, CONFIG_NAME, start_run, write_metrics
from medpeft.train import evaluate, fit, load_trainable_file, save_trainable
from medpeft.train.settings import autocast_dtype, resolve_device

WEIGHTS_NAME = "trainable.safetensors"
SPEC_NAME = "model_spec.json"
DEFAULT_METRIC = "f1_macro"


@dataclass
class Evaluation:
    """Metrics of one split under its missing setting, and under every grid setting."""

    split: str
    metrics: dict[str, float]
    grid: dict[tuple[str, float], dict[str, float]] = field(default_factory=dict)
    metric: str = DEFAULT_METRIC


@dataclass
class MultiModalReport:
    """What a finished multimodal training run produced."""

    run_dir: Path
    adapter_dir: Path
    params: ParameterCount
    best_epoch: int | None
    val_metrics: dict[str, float]
    test: Evaluation


def model_spec(config: MultiModalRunConfig, source: MultiModalSource) -> MultiModalSpec:
    """The architecture a run config asks for, over the source's modalities and labels."""
    m = config.model
    kwargs = dict(m.kwargs)
    if m.kind == "timm":
        kwargs["img_size"] = m.img_size
    return MultiModalSpec(
        kind=m.kind,
        modalities=tuple(source.modalities),
        num_classes=len(source.label_names),
        method=config.method,
        backbone=m.backbone,
        text_modality=text_modality(source.kinds),
        missing_token=config.data.missing_image == "token",
        mora=config.mora,
        lora=config.lora,
        prompts=config.prompts,
        vilt_config=m.vilt_config,
        max_text_len=m.max_text_len,
        model_kwargs=kwargs,
    )


def build_run_model(
    spec: MultiModalSpec, settings: MultiModalModelSettings, seed: int
) -> nn.Module:
    """Build the model after seeding, so a random-init backbone is the same on every rebuild."""
    torch.manual_seed(seed)
    return build_from_spec(spec, pretrained=settings.pretrained, weights=settings.weights)


def save_run_model(
    model: nn.Module, spec: MultiModalSpec, source: MultiModalSource, folder: Path
) -> Path:
    """Write the trained tensors and what is needed to rebuild the model around them."""
    folder.mkdir(parents=True, exist_ok=True)
    save_trainable(model, folder / WEIGHTS_NAME, {"format": "medpeft-multimodal"})
    info = {"spec": to_dict(spec), "labels": source.label_names, "task": source.task}
    atomic_write_text(folder / SPEC_NAME, json.dumps(info, indent=2))
    return folder


def load_run_model(
    folder: str | Path, settings: MultiModalModelSettings, seed: int
) -> tuple[nn.Module, dict]:
    """Rebuild a saved model (backbone from ``settings``) and load its trained tensors.

    Returns:
        The model and the saved info (``spec``, ``labels``, ``task``).
    """
    folder = Path(folder)
    spec_path = folder / SPEC_NAME
    if not spec_path.is_file():
        raise ConfigError(f"{folder}: no {SPEC_NAME}; not the adapter folder of a multimodal run")
    info = json.loads(spec_path.read_text(encoding="utf-8"))
    spec = from_dict(MultiModalSpec, info["spec"], path=str(spec_path))
    model = build_run_model(spec, settings, seed)
    load_trainable_file(model, folder / WEIGHTS_NAME)
    return model, info


def train_multimodal(
    config: MultiModalRunConfig, resume: bool = True, progress: bool = True
) -> MultiModalReport:
    """Train, keep the best epoch, save the model, evaluate on the test split and the grid."""
    run_dir = start_run(config)
    source = load_source(config, run_dir)
    tables = split_tables(source, config.missing)
    save_tables(tables, run_dir)
    spec = model_spec(config, source)
    model = build_run_model(spec, config.model, config.train.seed)
    data = run_data(config, source, model)
    result = fit(
        model, data.loader("train", tables["train"], train=True), data.loader("val", tables["val"]),
        source.task, config.train, run_dir, class_names=source.label_names, resume=resume,
        progress=progress,
    )
    adapter_dir = save_run_model(model, spec, source, run_dir / ADAPTER_DIR)
    test = Evaluation("test", {})
    if "test" in tables:
        test = evaluate_split(model, data, config, "test", tables["test"], run_dir, progress)
    return MultiModalReport(
        run_dir, adapter_dir, count_parameters(model), result.best_epoch, result.best_metrics, test
    )


def evaluate_multimodal_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    adapter: str | Path | None = None,
    split: str = "test",
    progress: bool = False,
) -> Evaluation:
    """Evaluate a finished run on ``split`` and its missing grid; write the reports to ``run_dir``.

    Args:
        run_dir: Run folder (``config.yaml``, ``adapter/``).
        overrides: ``key=value`` changes to the run's config (``data.root``,
            ``missing.grid.etas``, ``model.weights``...).
        adapter: Folder of ``trainable.safetensors`` + ``model_spec.json``
            (default ``run_dir/adapter``).
        split: ``train``, ``val`` or ``test``.
        progress: Show progress bars.
    """
    run_dir = Path(run_dir)
    config = load_multimodal_config(run_dir / CONFIG_NAME, overrides)
    source = load_source(config, run_dir)
    tables = split_tables(source, config.missing)
    if split not in tables:
        raise ConfigError(f"split {split!r} is empty; have {sorted(tables)}")
    model, info = load_run_model(adapter or run_dir / ADAPTER_DIR, config.model, config.train.seed)
    if info["labels"] != source.label_names:
        raise ConfigError(
            f"the data's labels {source.label_names} differ from the run's {info['labels']}"
        )
    model.to(resolve_device(config.train.device))
    data = run_data(config, source, model)
    return evaluate_split(model, data, config, split, tables[split], run_dir, progress)


def evaluate_split(
    model: nn.Module,
    data: RunData,
    config: MultiModalRunConfig,
    split: str,
    table: MissingTable,
    out_dir: Path,
    progress: bool = False,
) -> Evaluation:
    """Metrics of ``split`` under ``table`` and under every grid setting, written to ``out_dir``."""
    task, labels = data.source.task, data.source.label_names
    dtype = autocast_dtype(config.train)

    def run(split_table: MissingTable) -> dict[str, float]:
        loader = data.loader(split, split_table)
        return evaluate(model, loader, task, labels, progress, dtype).metrics

    metrics = run(table)
    write_metrics(out_dir, split, metrics)
    tables = grid_tables(data.source, config.missing, split)
    grid = {key: overall(run(grid_table)) for key, grid_table in tables.items()}
    metric = config.train.monitor if config.train.monitor in metrics else DEFAULT_METRIC
    if grid:
        write_grid_report(grid, out_dir, "grid" if split == "test" else f"grid_{split}", metric)
    return Evaluation(split, metrics, grid, metric)


def write_grid_report(results: Results, out_dir: Path, stem: str, metric: str) -> None:
    """``{stem}.md`` (pivot of ``metric`` + every metric), ``.json``, heatmap and curves PNGs."""
    text = (
        f"# Missing-modality grid ({metric})\n\n{missing_grid_table(results, metric)}\n"
        f"## All metrics\n\n{missing_grid_table(results)}"
    )
    atomic_write_text(out_dir / f"{stem}.md", text)
    rows = [{"kind": kind, "eta": eta, **values} for (kind, eta), values in results.items()]
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(rows, indent=2))
    plot_missing_heatmap(results, out_dir / f"{stem}_heatmap.png", metric)
    plot_missing_curves(results, out_dir / f"{stem}_curves.png", metric)


def format_evaluation(evaluation: Evaluation) -> str:
    """An evaluation as console text: the split's metrics, then the grid pivot."""
    text = f"{evaluation.split} split:\n{format_metrics_table(overall(evaluation.metrics))}"
    if evaluation.grid:
        text += f"\n\n{missing_grid_table(evaluation.grid, evaluation.metric)}"
    return text


def format_report(report: MultiModalReport) -> str:
    """A training run as console text: parameters, best epoch, test metrics and grid, files."""
    test = format_evaluation(report.test) if report.test.metrics else "no test split"
    return (
        f"{report.params}; best epoch {report.best_epoch}\n{test}\n"
        f"run folder: {report.run_dir} (adapter/, metrics.csv, grid.md)"
    )
