"""Export one task as a plain model: merged timm weights, or ONNX checked against onnxruntime.

The adapter is folded into the backbone (LoRA: ``W + scale * B @ A``), so the
export is an ordinary timm classifier of the task's labels with no medpeft
layers. :func:`export_merged` writes the layout of a timm Hugging Face folder
(``model.safetensors`` + ``config.json`` with ``architecture``, ``model_args``,
``label_names`` and the preprocessing), which plain timm loads::

    model = timm.create_model("local-dir:exported/", pretrained=True)

:func:`export_onnx` writes an ONNX graph (dynamic batch; input ``image``
``[B, 3, S, S]`` normalised as in training, output ``logits``) and compares it
with the PyTorch model under onnxruntime.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from medpeft.adapters_io.config import AdapterConfig
from medpeft.adapters_io.folder import load_adapter
from medpeft.atomic import atomic_folder, atomic_write_text
from medpeft.backbones.timm_vit import build_vit
from medpeft.backbones.weights import write_state_dict
from medpeft.errors import ConfigError, WeightsError
from medpeft.methods import get_method

MERGED_WEIGHTS = "model.safetensors"  # the names timm's ``local-dir:`` loader reads
MERGED_CONFIG = "config.json"
ONNX_TOLERANCE = 1e-4  # max abs logit difference between PyTorch and onnxruntime
_WRAPPED = ".base."


def merged_model(
    adapter: str | Path,
    weights: str | Path | None = None,
    pretrained: bool = False,
    allow_random_backbone: bool = False,
    allow_other_weights: bool = False,
) -> tuple[nn.Module, AdapterConfig]:
    """The task as a plain timm model (adapter merged into the backbone), in eval mode.

    Backbone arguments as :func:`medpeft.adapters_io.folder.load_adapter`.

    Raises:
        ConfigError: the adapter is not a single-image timm adapter, or its method adds
            parameters that do not fold into the backbone (MoRA, prompts, MoR).
    """
    model, config = load_adapter(
        adapter, adapter_name="default", weights=weights, pretrained=pretrained,
        allow_random_backbone=allow_random_backbone, allow_other_weights=allow_other_weights,
    )
    if config.kind != "timm" or len(config.modalities) != 1 or config.fusion != "auto" or config.missing_token:
        raise ConfigError(f"{adapter}: only single-image timm adapters export as a plain timm model")
    method = get_method(config.method)
    if method.mergeable:
        method.merge(model, "default")
    state = {k.replace(_WRAPPED, "."): v for k, v in model.state_dict().items()}
    kwargs = dict(config.model_kwargs)
    plain = build_vit(config.backbone, config.num_classes, config.img_size, **kwargs)
    extra = sorted(
        k for k in state.keys() - plain.state_dict().keys()
        if not (method.mergeable and method.is_trainable(k))
    )
    if extra:
        raise ConfigError(
            f"{adapter}: method {config.method!r} adds parameters that do not fold into the "
            f"timm weights ({extra[:3]}); only merged LoRA, linear-probe and fully tuned "
            "adapters export"
        )
    plain.load_state_dict({k: state[k] for k in plain.state_dict()})
    return plain.eval(), config


def export_merged(
    adapter: str | Path,
    out_dir: str | Path,
    weights: str | Path | None = None,
    pretrained: bool = False,
    allow_random_backbone: bool = False,
    allow_other_weights: bool = False,
) -> Path:
    """Write the merged task as ``model.safetensors`` + timm ``config.json`` into ``out_dir``
    (both or neither: `medpeft.atomic.atomic_folder`)."""
    model, config = merged_model(adapter, weights, pretrained, allow_random_backbone, allow_other_weights)
    with atomic_folder(out_dir) as folder:
        write_state_dict(folder / MERGED_WEIGHTS, model.state_dict())
        atomic_write_text(folder / MERGED_CONFIG, json.dumps(timm_config(model, config), indent=2) + "\n")
    return Path(out_dir)


def timm_config(model: nn.Module, config: AdapterConfig) -> dict:
    """timm's Hugging Face ``config.json`` of the merged model, plus the task type."""
    pre = config.preprocessing
    size = [3, pre.size, pre.size]
    return {
        "architecture": config.backbone.split(".")[0],
        "num_classes": config.num_classes,
        "num_features": model.num_features,
        "label_names": list(config.labels),
        "model_args": {"img_size": config.img_size or pre.size, **config.model_kwargs},
        "pretrained_cfg": {
            "input_size": size,
            "fixed_input_size": True,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "interpolation": pre.interpolation,
            "crop_pct": pre.crop,
            "num_classes": config.num_classes,
        },
        "medpeft_task": config.task,
    }


def export_onnx(
    adapter: str | Path,
    out_file: str | Path,
    weights: str | Path | None = None,
    pretrained: bool = False,
    allow_random_backbone: bool = False,
    allow_other_weights: bool = False,
    opset: int = 17,
    tolerance: float = ONNX_TOLERANCE,
) -> float:
    """Write the merged task as ONNX and return its max abs logit difference to PyTorch.

    Raises:
        WeightsError: onnxruntime's logits differ by more than ``tolerance``.
    """
    model, config = merged_model(adapter, weights, pretrained, allow_random_backbone, allow_other_weights)
    size = config.preprocessing.size
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter notices
        torch.onnx.export(
            model, (example,), str(out), input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
            dynamo=False,
        )
    difference = onnx_difference(model, out, example)
    if difference > tolerance:
        raise WeightsError(
            f"{out}: onnxruntime logits differ from PyTorch by {difference:.2e} (> {tolerance:g})"
        )
    return difference


def onnx_difference(model: nn.Module, path: str | Path, images: torch.Tensor) -> float:
    """Max abs difference between ``model``'s logits and the ONNX file's under onnxruntime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": images.numpy()})
    with torch.no_grad():
        expected = model(images)
    return float((torch.from_numpy(logits) - expected).abs().max())
