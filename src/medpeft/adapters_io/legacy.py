"""medpeft 0.1 multimodal adapter folders: ``trainable.safetensors`` + ``model_spec.json``.

0.1 saved MoRA / prompts / multimodal LoRA runs in a second format: every trained
tensor under its parameter name (adapter ``default``) and the architecture in
``model_spec.json``; the image size and preprocessing lived in the run's
``config.yaml`` one folder up. :func:`read_legacy_adapter` turns such a folder into
the current :class:`AdapterConfig` and name-independent tensors, so it loads with
identical logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from medpeft.adapters_io.config import AdapterConfig, Preprocessing
from medpeft.backbones.weights import read_state_dict
from medpeft.config import load_config
from medpeft.config.legacy import PROMPT_METHODS
from medpeft.errors import ConfigError
from medpeft.methods import get_method

LEGACY_SPEC_NAME = "model_spec.json"
LEGACY_WEIGHTS_NAME = "trainable.safetensors"
LEGACY_ADAPTER = "default"
VILT_MEAN_STD = (0.5, 0.5, 0.5)


def read_legacy_adapter(folder: Path) -> tuple[AdapterConfig, dict[str, torch.Tensor], Path]:
    """Config, name-independent tensors and tensor file of a 0.1 multimodal adapter folder."""
    spec_file = folder / LEGACY_SPEC_NAME
    try:
        info = json.loads(spec_file.read_text(encoding="utf-8"))
        spec = info["spec"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as error:
        raise ConfigError(f"{spec_file}: not a medpeft 0.1 model spec ({error})") from error
    run_config = folder.parent / "config.yaml"
    if not run_config.is_file():
        raise ConfigError(
            f"{folder} is a medpeft 0.1 multimodal adapter; it is read from its run folder, "
            f"but {run_config} is missing"
        )
    run = load_config(run_config)
    method, settings = spec["method"], {}
    if method in PROMPT_METHODS:
        method, settings = "prompts", {**spec["prompts"], "placement": PROMPT_METHODS[method]}
    elif method in spec:
        settings = spec[method]
    kwargs = dict(spec["model_kwargs"])
    img_size = kwargs.pop("img_size", run.model.img_size)
    text = spec["text_modality"]
    config = AdapterConfig(
        backbone=spec["backbone"],
        labels=list(info["labels"]),
        task=info["task"],
        preprocessing=_preprocessing(spec, img_size, kwargs),
        method=method,
        settings=settings,
        kind=spec["kind"],
        modalities={m: "text" if m == text else "image" for m in spec["modalities"]},
        img_size=img_size,
        model_kwargs=kwargs,
        missing_token=spec["missing_token"],
        vilt_config=spec["vilt_config"],
        inputs={"max_text_len": spec["max_text_len"], "missing_image": run.data.missing_image,
                "tokenizer": run.model.tokenizer},
        backbone_weights=run.model.weights or ("hub" if run.model.pretrained else None),
        backbone_seed=run.train.seed,  # 0.1 seeded before building a random backbone
    )
    source = folder / LEGACY_WEIGHTS_NAME
    dicts = get_method(method).adapter_dicts
    state = {_without_name(k, dicts): v for k, v in read_state_dict(source).items()}
    return config, state, source


def _without_name(key: str, dicts: tuple[str, ...]) -> str:
    """``vit.blocks.0.mora_A.default`` -> ``vit.blocks.0.mora_A``."""
    parts = key.split(".")
    if len(parts) > 1 and parts[-2] in dicts and parts[-1] == LEGACY_ADAPTER:
        parts.pop()
    return ".".join(parts)


def _preprocessing(spec: dict, img_size: int, kwargs: dict) -> Preprocessing:
    """0.1 multimodal preprocessing: ViLT's 0.5 mean/std, or the timm backbone's own."""
    if spec["kind"] == "vilt":
        return Preprocessing(img_size, VILT_MEAN_STD, VILT_MEAN_STD, "bicubic", resize="squash")
    from medpeft.backbones.timm_build import build_vit
    from medpeft.backbones.timm_vit import data_config

    with torch.device("meta"):
        vit = build_vit(spec["backbone"], spec["num_classes"], img_size, weight_init="skip", **kwargs)
    cfg = data_config(vit)
    return Preprocessing(
        img_size, tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"], resize="squash"
    )
