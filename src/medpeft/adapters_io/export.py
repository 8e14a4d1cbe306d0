"""Export one task as a plain model of its backbone's library, or as ONNX checked against onnxruntime.

The adapter is folded into the backbone (LoRA: ``W + scale * B @ A``; DoRA: the
rescaled rows) and medpeft's layers are taken out, so the export is the library's own
model with no medpeft code in it. :func:`export_merged` writes, by library:

- timm (ViT, EVA, Swin, ConvNeXt): a timm Hugging Face folder, ``model.safetensors`` +
  ``config.json`` with ``architecture``, ``model_args``, ``label_names`` and the
  preprocessing; a classifier of the task's labels::

      model = timm.create_model("local-dir:exported/", pretrained=True)

- transformers: the merged encoder's ``save_pretrained`` folder
  (``AutoModel.from_pretrained("exported/")`` gives the same features), and the task head
  beside it (``head.safetensors`` + ``head.json``, :mod:`medpeft.adapters_io.head_file`).
- open_clip: the merged vision tower's state dict, ``open_clip_visual.safetensors``
  (``open_clip.create_model(name).visual.load_state_dict(...)``), and the head files.

Adapters of methods whose layers do not fold into the weights (MoRA, MoR, prompts) are
refused; linear-probe and fully tuned adapters add no layers and export as they are.

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
from medpeft.adapters_io.folder import load_adapter, read_config
from medpeft.adapters_io.head_file import HEAD_WEIGHTS, task_linear, write_head
from medpeft.adapters_io.peft import native_view
from medpeft.atomic import atomic_folder, atomic_write, atomic_write_text
from medpeft.backbones.timm_build import build_vit, check_rebuilds, classifier_prefixes, config_layers
from medpeft.backbones.weights import write_state_dict
from medpeft.errors import ConfigError, WeightsError
from medpeft.fusion.pooled import PooledClassifier
from medpeft.heads import head_of
from medpeft.methods import get_method, method_names
from medpeft.methods.targets import replace_module
from medpeft.methods.wrapped import WrappedLinear

MERGED_WEIGHTS = "model.safetensors"  # the names timm's ``local-dir:`` loader reads
MERGED_CONFIG = "config.json"
OPEN_CLIP_WEIGHTS = "open_clip_visual.safetensors"
ONNX_TOLERANCE = 1e-4  # max abs logit difference between PyTorch and onnxruntime


def merged_model(
    adapter: str | Path,
    weights: str | Path | None = None,
    pretrained: bool = False,
    allow_random_backbone: bool = False,
    allow_other_weights: bool = False,
) -> tuple[nn.Module, AdapterConfig]:
    """The task as a plain model (adapter merged, medpeft layers taken out), in eval mode.

    A timm backbone gives a plain timm classifier of the task's labels; a transformers or
    open_clip one gives its library's encoder under ``backbone`` with the task's Linear
    ``head`` (a :class:`~medpeft.fusion.pooled.PooledClassifier` holding no adapter).

    Backbone arguments as :func:`medpeft.adapters_io.folder.load_adapter`.

    Raises:
        ConfigError: the adapter is not one of a single image backbone, or its method's
            layers do not fold into the backbone (MoRA, MoR, prompts).
    """
    check_mergeable(adapter, read_config(adapter))
    model, config = load_adapter(
        adapter, adapter_name="default", weights=weights, pretrained=pretrained,
        allow_random_backbone=allow_random_backbone, allow_other_weights=allow_other_weights,
    )
    method = get_method(config.method)
    if method.mergeable:
        method.merge(model, "default")
    take_out_wrappers(model)
    plain = plain_timm(model, config) if config.kind == "timm" else plain_pooled(model, config)
    return plain.eval(), config


def check_mergeable(adapter: str | Path, config: AdapterConfig) -> None:
    """ConfigError unless the adapter is one of a single image backbone whose method folds into it."""
    check_one_backbone(adapter, config)
    method = get_method(config.method)
    if method.markers and not method.mergeable:
        mergeable = [n for n in method_names() if get_method(n).mergeable]
        plain = [n for n in method_names() if not get_method(n).markers]
        raise ConfigError(
            f"{adapter}: method {config.method!r} is not mergeable (its layers do not fold into the "
            f"backbone's weights); merged and ONNX export take {', '.join(mergeable)} adapters and "
            f"those that add no layers ({', '.join(plain)})"
        )


def check_one_backbone(adapter: str | Path, config: AdapterConfig) -> None:
    """ConfigError unless the adapter's model is one image backbone and a head (what every export writes)."""
    if config.kind == "vilt" or len(config.modalities) != 1 or config.fusion != "auto" or config.missing_token:
        token = ", learned missing-image tokens" if config.missing_token else ""
        raise ConfigError(
            f"{adapter}: only adapters of one image backbone and a head export; this one is a "
            f"{config.kind} model over {list(config.modalities)} (fusion {config.fusion!r}{token})"
        )


def take_out_wrappers(model: nn.Module) -> None:
    """Put every wrapped Linear's base Linear back in its place (merged adapters stay in its weights)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, WrappedLinear):
            replace_module(model, name, module.base)


def plain_timm(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """A fresh timm model of the adapter's backbone holding ``model``'s weights and task head."""
    native = native_view(model).module
    drop = classifier_prefixes(native)
    state = {k: v for k, v in native.state_dict().items() if not k.startswith(drop)}
    plain = build_vit(config.backbone, config.num_classes, config.img_size, **config.model_kwargs)
    classifier = classifier_prefixes(plain)[0]
    head = task_linear(head_of(model, "default"))
    state.update({classifier + k: v for k, v in head.state_dict().items()})
    plain.load_state_dict(state)
    return plain


def plain_pooled(model: nn.Module, config: AdapterConfig) -> PooledClassifier:
    """``model``'s native encoder (no wrappers left) and task head in a new PooledClassifier
    (``model`` may still hold the check of its adapters' first forward)."""
    plain = PooledClassifier(native_view(model).module, config.num_classes, next(iter(config.modalities)))
    plain.head.load_state_dict(task_linear(head_of(model, "default")).state_dict())
    return plain


def export_merged(
    adapter: str | Path,
    out_dir: str | Path,
    weights: str | Path | None = None,
    pretrained: bool = False,
    allow_random_backbone: bool = False,
    allow_other_weights: bool = False,
) -> Path:
    """Write the merged task in its backbone library's format into ``out_dir`` (see the module
    doc): all its files or none (`medpeft.atomic.atomic_folder`)."""
    model, config = merged_model(adapter, weights, pretrained, allow_random_backbone, allow_other_weights)
    saved = None
    if config.kind == "timm":
        try:
            saved = timm_config(model, config)
        except ConfigError as error:
            raise ConfigError(f"{adapter}: {error}; export with --onnx or --output (PEFT) instead") from None
    with atomic_folder(out_dir) as folder:
        if saved is not None:
            write_state_dict(folder / MERGED_WEIGHTS, model.state_dict())
            atomic_write_text(folder / MERGED_CONFIG, json.dumps(saved, indent=2) + "\n")
            return Path(out_dir)
        if config.kind == "transformers":
            model.backbone.save_pretrained(folder)
        else:
            write_state_dict(folder / OPEN_CLIP_WEIGHTS, model.backbone.state_dict())
        source = {"library": config.kind, "backbone": config.backbone, "model_kwargs": config.model_kwargs}
        write_head(folder, model.head, model.view, config.labels, config.task, config.preprocessing, source)
    return Path(out_dir)


def how_to_load(config: AdapterConfig, out_dir: str | Path) -> str:
    """How the library loads a folder written by :func:`export_merged` (for the CLI's message)."""
    if config.kind == "timm":
        return f'timm: timm.create_model("local-dir:{out_dir}", pretrained=True)'
    head = Path(out_dir) / HEAD_WEIGHTS
    if config.kind == "transformers":
        return f'transformers: AutoModel.from_pretrained("{out_dir}"); task head {head}'
    tower = Path(out_dir) / OPEN_CLIP_WEIGHTS
    return f'open_clip: create_model("{config.backbone}").visual loads {tower}; task head {head}'


def timm_config(model: nn.Module, config: AdapterConfig) -> dict:
    """timm's Hugging Face ``config.json`` of the merged model, plus the task type.

    ``model_args`` are what plain timm needs to build ``model``: a ``hf-hub:`` model's own
    arguments, the input size (architectures of a fixed input size) and the adapter's model
    arguments (activations by timm's name); checked by building the architecture from them
    on the meta device.

    Raises:
        ConfigError: an argument a timm config cannot hold (``mlp_layer`` classes), or
            timm would build another model from them.
    """
    pre = config.preprocessing
    architecture = model.pretrained_cfg.get("architecture") or config.backbone.split(".")[0]
    hub_args = {k: v for k, v in getattr(model, "pretrained_model_args", {}).items() if k != "num_classes"}
    fixed = bool(model.pretrained_cfg.get("fixed_input_size"))  # the architecture takes img_size
    size = {"img_size": config.img_size or pre.size} if fixed else {}
    model_args = {**hub_args, **size, **config_layers(config.model_kwargs)}
    check_rebuilds(architecture, {**model_args, "num_classes": config.num_classes}, model)
    return {
        "architecture": architecture,
        "num_classes": config.num_classes,
        "num_features": model.num_features,
        "label_names": list(config.labels),
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [3, pre.size, pre.size],
            "fixed_input_size": fixed,
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
        ConfigError: torch.onnx cannot export this backbone.
        WeightsError: onnxruntime's logits differ by more than ``tolerance``.
    """
    model, config = merged_model(adapter, weights, pretrained, allow_random_backbone, allow_other_weights)
    size = config.preprocessing.size
    example, check = (torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n)) for n in (2, 3))
    out = Path(out_file)
    try:
        atomic_write(out, lambda tmp: write_onnx(model, example, tmp, opset))
    except OSError:
        raise
    except Exception as error:  # the tracer and exporter raise TypeError, RuntimeError, their own errors...
        backbone = type(model.backbone if isinstance(model, PooledClassifier) else model).__name__
        reason = (str(error).splitlines() or [""])[0]
        raise ConfigError(
            f"{adapter}: torch.onnx cannot export the {backbone} ({config.kind}) backbone "
            f"({type(error).__name__}: {reason}); export the merged model (--merged) instead"
        ) from error
    difference = onnx_difference(model, out, check)  # another batch size than traced: the axis is dynamic
    if difference > tolerance:
        raise WeightsError(
            f"{out}: onnxruntime logits differ from PyTorch by {difference:.2e} (> {tolerance:g})"
        )
    return difference


def write_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int) -> None:
    """``torch.onnx.export`` of ``model`` traced on ``example``: input ``image``, output ``logits``, dynamic batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter notices
        torch.onnx.export(
            model, (example,), str(path), input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
            dynamo=False,
        )


def onnx_difference(model: nn.Module, path: str | Path, images: torch.Tensor) -> float:
    """Max abs difference between ``model``'s logits and the ONNX file's under onnxruntime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": images.numpy()})
    with torch.no_grad():
        expected = model(images)
    return float((torch.from_numpy(logits) - expected).abs().max())
