"""``medpeft train``: one run from a :class:`~medpeft.config.RunConfig`, any number of modalities.

Read the data, build backbone + fusion + method, train with validation each
epoch (resumable), keep the best epoch, save the adapter, evaluate the test split
(and, for several modalities, the missing-modality grid).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medpeft.adapters_io.folder import HUB, save_adapter
from medpeft.backbones.checkpoints import backbone_identity
from medpeft.backbones.timm_build import check_backbone, patch_multiple
from medpeft.checkpointing import enable_checkpointing, wants_checkpointing
from medpeft.config import RunConfig, save_config
from medpeft.config.paths import with_absolute_paths
from medpeft.data.imageio import ReadOptions
from medpeft.data.records import Source
from medpeft.data.scan import check_images
from medpeft.errors import ConfigError
from medpeft.frozen_dtype import FROZEN_DTYPES, cast_frozen
from medpeft.methods import get_method
from medpeft.methods.layers import ParameterCount, count_parameters
from medpeft.model import (
    DEFAULT_BACKBONES,
    ModelSpec,
    build_model,
    check_architecture,
    check_frozen_dtype,
    set_backbone_dropout,
)
from medpeft.reports import markdown_table, summary_header, summary_row
from medpeft.run_layout import RunLayout
from medpeft.runs.backbone_record import check_backbone_record, write_backbone_record
from medpeft.runs.data import (
    describe_source,
    load_source,
    positive_index,
    run_data,
    run_positive_class,
    save_tables,
    split_tables,
)
from medpeft.runs.evaluate import Evaluation, evaluate_split, format_evaluation
from medpeft.runs.fingerprint import check_fingerprint, data_fingerprint, write_fingerprint
from medpeft.runs.intervention import check_two_stage, two_stage_model
from medpeft.runs.lock import run_lock
from medpeft.runs.resume import check_resume, finished_report, write_report
from medpeft.train import distributed, fit
from medpeft.train.files import METRICS_CSV
from medpeft.train.settings import check_monitor, training_device
from medpeft.train.trainer import Objective

log = logging.getLogger(__name__)
OTHER_DATA = "training on other data is a new run: give a new output_dir (or --no-resume to start over)"


@dataclass
class RunReport:
    """What a finished training run produced."""

    run_dir: Path
    adapter_dir: Path
    params: ParameterCount
    adapter_bytes: int
    best_epoch: int | None
    val_metrics: dict[str, float]
    test: Evaluation
    skipped: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    positive_class: str | None = None
    backbone: dict = field(default_factory=dict)  # weights, sha256, hub (None when unknown)

    @property
    def test_metrics(self) -> dict[str, float]:
        return self.test.metrics

    def to_dict(self) -> dict:
        """Plain data for ``report.json`` (paths are the run folder's)."""
        grid = [{"kind": k, "eta": e, **values} for (k, e), values in self.test.grid.items()]
        return {
            "params": {"trainable": self.params.trainable, "total": self.params.total},
            "adapter_bytes": self.adapter_bytes,
            "best_epoch": self.best_epoch,
            "positive_class": self.positive_class,
            "val_metrics": self.val_metrics,
            "test": {"split": self.test.split, "metrics": self.test.metrics, "grid": grid,
                     "metric": self.test.metric},
            "skipped_samples": {"count": len(self.skipped), "samples": self.skipped},
            "timing": {key: round(seconds, 3) for key, seconds in self.timing.items()},
            "backbone": self.backbone,
        }

    @classmethod
    def from_dict(cls, data: dict, layout: RunLayout) -> RunReport:
        """The report of a finished run, read back from ``report.json``."""
        test = data["test"]
        grid = {(row.pop("kind"), row.pop("eta")): row for row in test["grid"]}
        return cls(
            run_dir=layout.root,
            adapter_dir=layout.adapter,
            params=ParameterCount(**data["params"]),
            adapter_bytes=data["adapter_bytes"],
            best_epoch=data["best_epoch"],
            val_metrics=data["val_metrics"],
            test=Evaluation(test["split"], test["metrics"], grid, test["metric"]),
            skipped=data.get("skipped_samples", {}).get("samples", []),
            timing=data.get("timing", {}),
            positive_class=data.get("positive_class"),
            backbone=data.get("backbone", {}),
        )


def model_spec(config: RunConfig, source: Source) -> ModelSpec:
    """The architecture a run config asks for, over the source's modalities and labels."""
    m = config.model
    text = next((name for name, kind in source.kinds.items() if kind == "text"), "text")
    return ModelSpec(
        backbone=m.backbone,
        num_classes=source.num_classes,
        method=config.method,
        settings=config.method_settings(),
        img_size=m.img_size,
        modalities=source.modalities,
        kind=m.kind,
        text_modality=text,
        missing_token=config.data.missing_image == "token",
        vilt_config=m.vilt_config,
        max_text_len=m.max_text_len if m.kind == "vilt" else None,
        model_kwargs=dict(m.kwargs),
        fusion=m.fusion,
    )


def train_run(config: RunConfig, resume: bool = True, progress: bool = True) -> RunReport:
    """Train, keep the best epoch, save the adapter and evaluate on the test split.

    Rerunning into the same folder resumes an interrupted run and returns a finished
    one's report without rewriting anything; other settings or changed data are refused
    unless ``resume`` is False (start over). Relative file paths are taken from the
    working directory and recorded absolute. ``model.fusion: early_intervention`` (and ``late``)
    first trains one model per modality (``stage1/<modality>``, each a run of its own),
    then the fused model in the run folder (:mod:`medpeft.runs.intervention`).
    """
    distributed.setup()  # under `accelerate launch`: join the other processes
    config = with_absolute_paths(with_method_defaults(config))
    if config.train.repeats > 1:
        raise ConfigError(
            f"train.repeats: {config.train.repeats} runs go through medpeft.runs.repeats.train_repeats "
            "(medpeft train does so); train_run trains one"
        )
    layout = RunLayout.at(config.output_dir)
    if config.model.kind == "timm":
        check_backbone(config.model.backbone or DEFAULT_BACKBONES["timm"], **config.model.kwargs)
        config = with_patch_multiple(config)
    if resume:
        check_resume(config, layout)
        stored = finished_report(config, layout)
        if stored is not None:
            if layout.data_fingerprint.is_file():
                fingerprint = data_fingerprint(config.data, load_source(config, layout))
                check_fingerprint(layout, fingerprint, OTHER_DATA)
            return RunReport.from_dict(stored, layout)
    distributed.barrier()  # every process has read the folder before the main one writes
    with run_lock(layout.root) if distributed.is_main() else contextlib.nullcontext():
        return _train_unfinished(config, layout, resume, progress)


def _train_unfinished(config: RunConfig, layout: RunLayout, resume: bool, progress: bool) -> RunReport:
    """`train_run` of a run that has not finished, its folder locked: read, build, fit."""
    check_frozen_dtype(get_method(config.method), FROZEN_DTYPES[config.model.frozen_dtype])
    own = RunLayout.at(distributed.writable_folder(layout.root))
    own.root.mkdir(parents=True, exist_ok=True)
    source = load_source(config, own)
    two_stage = config.model.fusion in ("early_intervention", "late")
    if two_stage:
        check_two_stage(config, source)
    m = config.model
    spec = model_spec(config, source)
    check_architecture(spec, m.weights, m.pretrained)
    fingerprint = data_fingerprint(config.data, source)
    if resume:  # before anything is rewritten
        check_fingerprint(layout, fingerprint, OTHER_DATA)
        check_backbone_record(layout, backbone_identity(m.kind, spec.backbone, m.weights, m.pretrained))
    own.report.unlink(missing_ok=True)
    save_config(config, own.config)
    write_fingerprint(own, fingerprint)
    positive = run_positive_class(config, source)  # before anything is trained
    for line in describe_source(source, positive) if distributed.is_main() else ():
        (log.warning if line.startswith("warning") else log.info)(line)
    check_monitor(config.train.monitor, source.task, source.labels)
    if config.data.check_images != "none" and config.train.on_bad_sample == "stop":
        every = config.data.check_images == "all"
        records = source.records if every else source.split("test")
        what = "data" if every else "test split"
        check_images(records, source.kinds, what, progress, config.data.read_options())
    frozen_dtype = FROZEN_DTYPES[config.model.frozen_dtype]
    if two_stage:
        spec, model, objective = two_stage_model(config, layout, source, resume, progress)
        cast_frozen(model, frozen_dtype)
    else:
        objective = None
        torch.manual_seed(config.train.seed)  # a random-init backbone is the same on every rebuild
        model = build_model(spec, pretrained=config.model.pretrained, weights=config.model.weights,
                            frozen_dtype=frozen_dtype)  # built in it: no fp32 backbone at any time
    return train_source(config, layout, source, spec, model, resume, progress, objective)


def with_patch_multiple(config: RunConfig) -> RunConfig:
    """``config`` with ``model.img_size`` rounded to a multiple of the timm backbone's patch
    size (DINOv2's 14 px: 512 -> 518, 256 -> 252), for the model and the transforms alike."""
    m = config.model
    if m.img_size is None:
        return config
    size = patch_multiple(m.backbone or DEFAULT_BACKBONES["timm"], m.img_size, **m.kwargs)
    if size == m.img_size:
        return config
    log.warning(
        "warning: model.img_size %d is not a multiple of the backbone's patch size; using %d", m.img_size, size
    )
    return dataclasses.replace(config, model=dataclasses.replace(m, img_size=size))


def with_method_defaults(config: RunConfig) -> RunConfig:
    """``config`` with its method's settings section (defaults for a config built in Python)."""
    if config.method in config.settings:
        return config
    defaults = get_method(config.method).settings_type()
    return dataclasses.replace(config, settings={**config.settings, config.method: defaults})


def train_source(
    config: RunConfig,
    layout: RunLayout,
    source: Source,
    spec: ModelSpec,
    model: nn.Module,
    resume: bool = True,
    progress: bool = True,
    objective: Objective | None = None,
) -> RunReport:
    """Fit ``model`` on ``source``, save its adapter, evaluate the test split (and grid), report.

    Under several processes all train and evaluate; only the main one writes into
    ``layout`` (the others into a scratch copy, see `medpeft.train.distributed`).
    """
    own = RunLayout.at(distributed.writable_folder(layout.root))
    tables = split_tables(source, config.missing)
    save_tables(tables, own)
    if "val" not in tables:
        raise ConfigError("the data needs non-empty train and val splits (check the split column/fractions)")
    set_backbone_dropout(model, config.model.dropout)
    checkpoint_activations(model, config, spec)
    data = run_data(config, source, model)
    positive = run_positive_class(config, source)
    weights = config.model.weights or (HUB if config.model.pretrained else None)
    m = config.model
    backbone = backbone_identity(m.kind, spec.backbone, m.weights, m.pretrained, model)  # before training
    write_backbone_record(own, backbone)
    result = fit(
        model, data.loader("train", tables["train"], train=True), data.loader("val", tables["val"]),
        source.task, config.train, layout.root, class_names=source.labels, resume=resume,
        progress=progress, aux_loss=get_method(config.method).aux_loss, objective=objective,
        positive=positive_index(source, positive),
    )
    timing = dict(result.timing)
    start = time.perf_counter()
    adapter_dir = save_adapter(
        model, own.adapter, spec, source.labels, source.task, data.pre,
        backbone_weights=weights, kinds=source.kinds, inputs=_inputs(config, source),
        backbone_seed=config.train.seed, positive_class=positive, backbone=backbone,
    )
    timing["checkpoint_s"] = timing.get("checkpoint_s", 0.0) + time.perf_counter() - start
    start = time.perf_counter()
    test = Evaluation("test", {})
    if "test" in tables:
        test = evaluate_split(model, data, config, "test", tables["test"], own, progress)
    timing["test_s"] = time.perf_counter() - start
    report = RunReport(
        run_dir=layout.root,
        adapter_dir=adapter_dir,
        params=count_parameters(model),
        adapter_bytes=sum(f.stat().st_size for f in adapter_dir.iterdir()),
        best_epoch=result.best_epoch,
        val_metrics=result.best_metrics,
        test=test,
        skipped=list(data.skipped),
        timing=timing,
        positive_class=positive,
        backbone={"weights": weights, "sha256": backbone.sha256, "hub": backbone.hub},
    )
    write_report(own, {"epochs": config.train.epochs, **report.to_dict()})
    distributed.barrier()  # the run folder is complete for every process
    return report


def checkpoint_activations(model: nn.Module, config: RunConfig, spec: ModelSpec) -> None:
    """Checkpoint the backbone blocks when ``train.activation_checkpointing`` asks (``auto``: by estimate)."""
    train = config.train
    batch, device = config.data.batch_size, training_device(train)
    if wants_checkpointing(train.activation_checkpointing, model, batch, spec.img_size, device):
        blocks = enable_checkpointing(model)
        log.info("activation checkpointing: %d backbone blocks recompute their activations in backward", blocks)


def format_report(report: RunReport) -> str:
    """A finished run as console text: summary row, grid pivot (several modalities), files."""
    text = markdown_table(summary_header(), [summary_row(report.run_dir.name, report)])
    if report.test.grid:
        text += f"\n\n{format_evaluation(report.test)}"
    if report.skipped:
        text += f"\nskipped {len(report.skipped)} unreadable sample(s), listed in report.json"
    return (
        f"{text}\nbest epoch: {report.best_epoch}; adapter: {report.adapter_dir}; "
        f"log: {report.run_dir / METRICS_CSV}"
    )


def _inputs(config: RunConfig, source: Source) -> dict:
    """How samples were read, recorded in the adapter so ``predict`` reads them the same way."""
    inputs: dict = {"missing_image": config.data.missing_image, "combine": dict(source.combine)}
    read = config.data.read_options()
    if read != ReadOptions():  # recorded only when not the defaults
        inputs["read"] = dataclasses.asdict(read)
    if "text" in source.kinds.values():
        inputs["tokenizer"] = config.model.tokenizer
    return inputs
