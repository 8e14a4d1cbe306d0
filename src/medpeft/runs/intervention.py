"""Two-stage fusion runs (``model.fusion: early_intervention`` or ``late``, SPEC section 3).

Stage 1: for every image modality ``m``, the samples that have ``m``, read as a
one-modality task, train ``<run>/stage1/<m>``: a run folder of its own, so it
resumes after an interruption and is not retrained once finished. Stage 2: every
copy of modality ``m`` (EI: its target and reference; late fusion: its encoder)
starts from ``m``'s stage-1 model (backbone, adapter and head), and the fused model
trains in the run folder on every sample; EI with
:func:`~medpeft.fusion.intervention.ei_loss`, late fusion with the task loss.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import torch
from torch import nn

from medpeft.adapters_io.folder import load_adapter
from medpeft.config import RunConfig, save_config
from medpeft.data.records import Source
from medpeft.errors import ConfigError
from medpeft.fusion.intervention import ei_loss
from medpeft.model import ModelSpec, build_model
from medpeft.run_layout import RunLayout
from medpeft.runs.resume import check_resume, finished_report
from medpeft.train.trainer import Objective

STAGE1_DIR = "stage1"


def two_stage_model(
    config: RunConfig, layout: RunLayout, source: Source, resume: bool, progress: bool
) -> tuple[ModelSpec, nn.Module, Objective | None]:
    """Run (or reuse) stage 1, then build the stage-2 model from it, and its objective
    (the modalities checked by :func:`check_two_stage`)."""
    from medpeft.runs.train import model_spec, train_source

    stage1 = {}
    for m in source.modalities:
        sub_config, sub_source = stage1_config(config, layout, m), single_modality(source, m)
        sub_layout = RunLayout.at(sub_config.output_dir)
        if not (resume and finished_report(sub_config, sub_layout)):
            if resume:
                check_resume(sub_config, sub_layout)
            sub_layout.root.mkdir(parents=True, exist_ok=True)
            save_config(sub_config, sub_layout.config)
            sub_spec = model_spec(sub_config, sub_source)
            sub_model = _build(sub_spec, config)
            train_source(sub_config, sub_layout, sub_source, sub_spec, sub_model, resume, progress)
        stage1[m] = sub_layout.adapter
    spec = model_spec(config, source)
    model = _build(spec, config)
    copies = ("encoders",) if config.model.fusion == "late" else ("targets", "references")
    for m, adapter in stage1.items():
        single, _ = load_adapter(adapter, adapter_name="default", weights=config.model.weights)
        for name in copies:
            getattr(model, name)[m].load_state_dict(single.state_dict())
    if config.model.fusion == "late":
        return spec, model, None
    ei = config.intervention
    objective = partial(
        ei_loss, task=source.task, priors=ei.priors, weights=ei.loss_weights, public_gate=ei.public_gate
    )
    return spec, model, objective


def check_two_stage(config: RunConfig, source: Source) -> None:
    """ConfigError unless the data has the >= 2 image modalities a two-stage fusion reads."""
    if set(source.kinds.values()) != {"image"} or len(source.modalities) < 2:
        raise ConfigError(
            f"model.fusion: {config.model.fusion} needs >= 2 image modalities, got {source.kinds}"
        )


def _build(spec: ModelSpec, config: RunConfig) -> nn.Module:
    torch.manual_seed(config.train.seed)  # a random-init backbone is the same on every rebuild
    return build_model(spec, pretrained=config.model.pretrained, weights=config.model.weights)


def stage1_config(config: RunConfig, layout: RunLayout, modality: str) -> RunConfig:
    """The config of modality ``modality``'s stage-1 run (one modality, ``stage1_epochs``)."""
    epochs = config.intervention.stage1_epochs or config.train.epochs
    return dataclasses.replace(
        config,
        name=f"{config.name}-{modality}",
        output_dir=str(layout.root / STAGE1_DIR / modality),
        model=dataclasses.replace(config.model, fusion="auto"),
        data=dataclasses.replace(config.data, modalities={modality: "image"}),
        train=dataclasses.replace(config.train, epochs=epochs),
    )


def single_modality(source: Source, modality: str) -> Source:
    """The samples that have ``modality``, as a one-modality source (splits kept)."""
    records = [
        dataclasses.replace(r, values={modality: r.values[modality]})
        for r in source.records
        if r.available((modality,))[0]
    ]
    combine = {modality: source.combine[modality]} if modality in source.combine else {}
    return Source(records, (modality,), {modality: "image"}, source.labels, source.task, combine)
