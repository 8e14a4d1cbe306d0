"""Evaluate a model on a split of a run's data, and on the missing-modality grid.

``medpeft eval RUN`` re-evaluates a finished run (any method, any number of
modalities, run folders of medpeft 0.1 included): the split under its missing
setting, then, when the data has several modalities, every grid setting
(``grid.md``, ``grid.json``, heatmap and curves PNGs). The split's per-sample scores go
to ``predictions_{split}.csv`` (read by ``medpeft report``); ``{split}_metrics.json``
names the positive class of a two-class task (``positive_class``). Only the run's own
adapter on its own, unchanged data writes into the run folder; anything else into
``RUN/evals/<name>/``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medpeft.adapters_io.config import AdapterConfig
from medpeft.adapters_io.folder import load_adapter
from medpeft.atomic import atomic_write_text
from medpeft.config import DataSettings, RunConfig, load_config, save_config
from medpeft.config.paths import PATH_KEYS
from medpeft.data.missing import MissingTable
from medpeft.data.records import Source
from medpeft.errors import ConfigError
from medpeft.frozen_dtype import FROZEN_DTYPES
from medpeft.metrics import format_metrics_table
from medpeft.reports import Results, missing_grid_table, plot_missing_curves, plot_missing_heatmap
from medpeft.reports.scores import SplitScores, path_columns
from medpeft.run_layout import ADAPTER_DIR, RunLayout
from medpeft.runs.data import (
    RunData,
    grid_tables,
    load_source,
    positive_index,
    run_data,
    run_positive_class,
    saved_or_new_tables,
)
from medpeft.runs.fingerprint import Fingerprint, check_fingerprint, data_fingerprint
from medpeft.runs.resume import FREE_KEYS, changed_keys
from medpeft.train import EvalResult, evaluate
from medpeft.train.settings import autocast_dtype, resolve_device

log = logging.getLogger(__name__)
DEFAULT_METRIC = "f1_macro"
EVAL_FREE_KEYS = (*FREE_KEYS, "data.batch_size", "data.check_images")  # change no scores


@dataclass
class Evaluation:
    """Metrics of one split under its missing setting, and under every grid setting."""

    split: str
    metrics: dict[str, float]
    grid: dict[tuple[str, float], dict[str, float]] = field(default_factory=dict)
    metric: str = DEFAULT_METRIC
    folder: Path | None = None


def evaluate_split(
    model: nn.Module,
    data: RunData,
    config: RunConfig,
    split: str,
    table: MissingTable | None,
    layout: RunLayout,
    progress: bool = False,
) -> Evaluation:
    """Metrics of ``split`` (and of every grid setting), written into the run folder."""
    task, labels = data.source.task, data.source.labels
    dtype = autocast_dtype(config.train)
    positive = run_positive_class(config, data.source)

    def run(split_table: MissingTable | None) -> EvalResult:
        loader = data.loader(split, split_table)
        return evaluate(model, loader, task, labels, progress, dtype, positive_index(data.source, positive))

    result = run(table)
    metrics = result.metrics
    named = {"positive_class": positive} if positive is not None else {}
    atomic_write_text(layout.split_metrics(split), json.dumps({**named, **metrics}, indent=2))
    ids, paths = sample_columns(data.source, split, data.skipped, len(result.scores))
    SplitScores(labels, task, result.scores, result.targets, ids, paths).write_csv(layout.predictions(split))
    grid = {
        key: overall(run(t).metrics) for key, t in grid_tables(data.source, config.missing, split).items()
    }
    metric = config.train.monitor if config.train.monitor in metrics else DEFAULT_METRIC
    if grid:
        write_grid_report(grid, layout.grid_stem(split), metric)
    return Evaluation(split, metrics, grid, metric, layout.root)


def sample_columns(
    source: Source, split: str, skipped: Iterable[str], rows: int
) -> tuple[list[str] | None, dict[str, list[str]] | None]:
    """Ids and input files (per image modality, ``|``-joined) of the evaluated samples of ``split``:
    its records but those skipped as unreadable (their messages start with the record's origin).

    (None, None) when they do not match the ``rows`` scores one for one.
    """
    skipped = list(skipped)
    records = [r for r in source.split(split) if not any(m.startswith(f"{r.where or r.id} ") for m in skipped)]
    if len(records) != rows:
        return None, None
    images = [m for m in source.modalities if source.kinds[m] == "image"]
    paths = {
        column: ["|".join(r.values.get(m) or ()) for r in records]
        for column, m in zip(path_columns(images), images)
    }
    return [r.id for r in records], paths


def evaluate_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    adapter: str | Path | None = None,
    split: str = "test",
    weights: str | Path | None = None,
    progress: bool = False,
    data: str | Path | None = None,
    allow_other_weights: bool = False,
) -> Evaluation:
    """Evaluate a finished run's adapter on ``split`` (and the grid); write the reports.

    The run's own adapter on its own data with its own settings writes into the run
    folder, after checking that the data are those it was trained on (`check_fingerprint`).
    Anything else (another adapter or backbone checkpoint, data named by ``data`` or a
    ``data.*`` override, other settings, ``allow_other_weights``) writes into a new
    ``RUN/evals/<name>/`` folder, never over the run's own results. Backbone weights other
    than those the adapter records (another sha256) are refused unless ``allow_other_weights``.
    The backbone's frozen layers are held in the run's ``model.frozen_dtype``, as in training
    (``model.frozen_dtype=float32`` evaluates the same adapter on fp32 ones, into a new folder).

    Args:
        run_dir: Run folder (``config.yaml``, ``adapter/``).
        overrides: ``key=value`` changes to the run's config (``missing.grid.etas``...).
        adapter: Adapter folder (default ``run_dir/adapter``).
        split: ``train``, ``val`` or ``test``.
        weights: Backbone checkpoint (default: the run's ``model.weights``).
        progress: Show progress bars.
        data: Other data: a CSV manifest (``data.manifest``) or a folder (``data.root``).
        allow_other_weights: Evaluate on other backbone weights than the adapter's (a warning).
    """
    layout = RunLayout.at(run_dir)
    overrides = [*overrides, *named_inputs(data, weights)]
    keys = override_keys(overrides)
    config = load_config(layout.config, overrides, saved_run=True)
    other_data = any(key.startswith("data.") and key not in EVAL_FREE_KEYS for key in keys)
    source = load_source(config, layout)
    if not other_data:
        check_own_data(layout, data_fingerprint(config.data, source))
    tables = saved_or_new_tables(source, config.missing, layout)
    if split not in tables:
        raise ConfigError(f"split {split!r} is empty; have {sorted(tables)}")
    adapter = Path(adapter or layout.adapter)
    backbone = config.model.weights
    torch.manual_seed(config.train.seed)  # a 0.1 adapter's random backbone, rebuilt as in training
    model, adapter_config = load_adapter(
        adapter, weights=backbone, pretrained=config.model.pretrained and not backbone,
        allow_random_backbone=not backbone and not config.model.pretrained,
        allow_other_weights=allow_other_weights, frozen_dtype=FROZEN_DTYPES[config.model.frozen_dtype],
    )
    model.to(resolve_device(config.train.device, "train.device"))
    run = run_data(config, source, model)
    check_adapter_fits(adapter, adapter_config, source, run.pre.size)
    other_adapter = adapter.resolve() != layout.adapter.resolve()
    out = layout
    if other_data or other_adapter or allow_other_weights or settings_changed(layout, config, keys):
        record = {"adapter": str(adapter.resolve()), "split": split, "overrides": overrides,
                  "allow_other_weights": allow_other_weights}
        name = eval_name(adapter if other_adapter else None, config.data if other_data else None)
        out = new_eval_folder(layout, name, config, record)
    return evaluate_split(model, run, config, split, tables[split], out, progress)


def named_inputs(data: str | Path | None, weights: str | Path | None) -> list[str]:
    """``--data`` and ``--weights`` as overrides (``data.manifest``/``data.root``, ``model.weights``)."""
    items = []
    if data is not None:
        key = "data.root" if Path(data).is_dir() else "data.manifest"
        items.append(f"{key}={json.dumps(str(data))}")  # a JSON string is a YAML string
    if weights is not None:
        items.append(f"model.weights={json.dumps(str(weights))}")
    return items


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The keys of ``key=value`` overrides."""
    return [item.partition("=")[0] for item in overrides]


def check_own_data(layout: RunLayout, fingerprint: Fingerprint | None) -> None:
    """DataError if the run's data changed since training; a warning if the run recorded none."""
    if fingerprint is not None and not layout.data_fingerprint.is_file():
        log.warning(
            "warning: %s records no data fingerprint (trained by an older medpeft); the data "
            "cannot be checked against those it was trained on", layout.root,
        )
    advice = (
        f"to evaluate the data as they are now, name them: medpeft eval {layout.root} --data "
        f"MANIFEST_OR_FOLDER (results go to {layout.evals}/)"
    )
    check_fingerprint(layout, fingerprint, advice)


def check_adapter_fits(folder: Path, adapter: AdapterConfig, source: Source, size: int) -> None:
    """ConfigError unless the adapter's labels, modalities and input size are the data's."""
    if adapter.labels != source.labels:
        raise ConfigError(f"the data's labels {source.labels} differ from the adapter's {adapter.labels}")
    if adapter.modalities != source.kinds:
        raise ConfigError(
            f"{folder}: the adapter reads modalities {adapter.modalities}, the data hold {source.kinds}"
        )
    if adapter.preprocessing.size != size:
        wanted = adapter.preprocessing.size
        raise ConfigError(
            f"{folder}: the adapter takes {wanted} px inputs, the run's are {size} px "
            f"(model.img_size); evaluate it with model.img_size={wanted}"
        )


def settings_changed(layout: RunLayout, config: RunConfig, keys: Sequence[str]) -> bool:
    """Whether ``config`` differs from the run's own in a key that changes results (a file
    path given anew counts as changed)."""
    if set(keys) & set(PATH_KEYS):
        return True
    return bool(changed_keys(load_config(layout.config, saved_run=True), config, EVAL_FREE_KEYS))


def eval_name(adapter: Path | None, data: DataSettings | None) -> str:
    """``evals/`` sub-folder name from another adapter (its run folder's name) and other data
    (the manifest's or folder's name); ``eval`` for other settings only."""
    parts = []
    if adapter is not None:
        folder = adapter.resolve()
        parts.append((folder.parent if folder.name == ADAPTER_DIR else folder).name)
    if data is not None:
        parts.append(Path(data.manifest or data.root or data.source).stem)
    return "-".join(parts) or "eval"


def new_eval_folder(layout: RunLayout, name: str, config: RunConfig, record: dict) -> RunLayout:
    """A new ``evals/<name>`` (``<name>-2``... if taken) holding the eval's config and ``record``."""
    folder, number = layout.evals / name, 1
    layout.evals.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            folder.mkdir()
            break
        except FileExistsError:
            number += 1
            folder = layout.evals / f"{name}-{number}"
    out = RunLayout.at(folder)
    save_config(config, out.config)
    atomic_write_text(out.eval_record, json.dumps(record, indent=2))
    return out


def write_grid_report(results: Results, stem: Path, metric: str) -> None:
    """``{stem}.md`` (pivot of ``metric`` + every metric), ``.json``, heatmap and curves PNGs."""
    text = (
        f"# Missing-modality grid ({metric})\n\n{missing_grid_table(results, metric)}\n"
        f"## All metrics\n\n{missing_grid_table(results)}"
    )
    atomic_write_text(stem.with_suffix(".md"), text)
    rows = [{"kind": kind, "eta": eta, **values} for (kind, eta), values in results.items()]
    atomic_write_text(stem.with_suffix(".json"), json.dumps(rows, indent=2))
    plot_missing_heatmap(results, stem.parent / f"{stem.name}_heatmap.png", metric)
    plot_missing_curves(results, stem.parent / f"{stem.name}_curves.png", metric)


def format_evaluation(evaluation: Evaluation) -> str:
    """An evaluation as console text: the split's metrics, then the grid pivot."""
    text = f"{evaluation.split} split:\n{format_metrics_table(evaluation.metrics)}"
    if evaluation.grid:
        text += f"\n\n{missing_grid_table(evaluation.grid, evaluation.metric)}"
    return text


def overall(metrics: Mapping[str, float]) -> dict[str, float]:
    """Summary metrics only (no per-class ``metric/class`` keys)."""
    return {k: v for k, v in metrics.items() if "/" not in k}
