"""Save and load task adapters: ``adapter_model.safetensors`` + ``adapter_config.json``.

Tensor keys never contain the adapter name (``blocks.0.attn.qkv.lora_A``,
``head.weight``), so a saved adapter loads under any name. LoRA tensors keep
:class:`~medpeft.adapters.lora.LoRALinear`'s layout: ``lora_A`` ``(segments, r, in)``,
``lora_B`` ``(segments, seg_out, r)``.

Many adapters on one frozen backbone: :func:`load_adapter` with ``model=...``
adds the adapter's LoRA weights under a new name and turns ``model.head`` into a
:class:`TaskHeads` (one head per adapter);
:func:`~medpeft.adapters.inject.set_active_adapter` switches LoRA layers and
head together. Adapters sharing a Linear must adapt the same segments of it
(e.g. all q+v on ``qkv``). Typical use::

    model, cfg = load_adapter("adapters/tb", weights="vit_b16.safetensors")
    load_adapter("adapters/blood", model)   # same backbone, second task
    set_active_adapter(model, "tb")
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medpeft.adapters.config import (
    WEIGHTS_NAME,
    AdapterConfig,
    Preprocessing,
    config_path,
    make_config,
    read_adapter_config,
    write_adapter_config,
)
from medpeft.adapters.heads import TaskHeads, head_of
from medpeft.adapters.inject import (
    adapter_names,
    add_lora,
    find_linears,
    lora_layers,
    set_active_adapter,
)
from medpeft.backbones.timm_vit import HEAD_NAME, build_vit, data_config
from medpeft.backbones.weights import copy_weights, read_state_dict, write_state_dict
from medpeft.errors import ConfigError, WeightsError
from medpeft.model import LoraSettings, ModelSpec, build_model

HUB = "hub"  # backbone_weights value: timm's pretrained weights from the hub
_WRAPPED = re.compile(r"\.base(?=\.)")


def adapter_parameters(model: nn.Module, adapter_name: str, method: str) -> dict[str, torch.Tensor]:
    """Name-independent keys -> live tensors of one adapter (what its file stores)."""
    params = {f"{HEAD_NAME}.{k}": v for k, v in head_of(model, adapter_name).named_parameters()}
    if method == "full":
        own = {_WRAPPED.sub("", k): v for k, v in model.state_dict().items()}
        params |= {k: v for k, v in own.items() if not k.startswith(HEAD_NAME + ".")}
    if method == "lora":
        for name, layer in lora_layers(model).items():
            if adapter_name in layer.lora_A:
                params[f"{name}.lora_A"] = layer.lora_A[adapter_name]
                params[f"{name}.lora_B"] = layer.lora_B[adapter_name]
    return params


def lora_values(model: nn.Module, adapter_name: str) -> tuple[int, float, float]:
    """``(rank, alpha, dropout)`` of a LoRA adapter, equal on all its layers."""
    values = set()
    for layer in lora_layers(model).values():
        if adapter_name in layer.lora_A:
            rank, dropout = layer.rank(adapter_name), layer.lora_dropout[adapter_name]
            values.add((rank, layer.scaling[adapter_name] * rank, getattr(dropout, "p", 0.0)))
    if len(values) != 1:
        found = f"differing {sorted(values)}" if values else "no layer"
        raise ConfigError(f"adapter {adapter_name!r}: need one (rank, alpha, dropout); {found}")
    return values.pop()


def default_preprocessing(model: nn.Module, img_size: int | None) -> Preprocessing:
    """The timm model's own preprocessing, at ``img_size`` when given."""
    cfg = data_config(model)
    return Preprocessing(
        size=img_size or cfg["input_size"][-1],
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg["interpolation"],
        crop=cfg["crop_pct"],
    )


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    spec: ModelSpec,
    labels: Sequence[str],
    task: str,
    preprocessing: Mapping[str, Any] | Preprocessing | None = None,
    adapter_name: str = "default",
    backbone_weights: str | Path | None = None,
) -> Path:
    """Write one adapter as ``adapter_model.safetensors`` + ``adapter_config.json``.

    Stored: LoRA A/B and head (``lora``), the head (``linear``) or all weights
    (``full``). Rank, alpha and dropout are read from the adapter itself.

    Args:
        model: Model holding the adapter.
        out_dir: Folder to write (created if needed).
        spec: The spec the model was built from (backbone, method, targets).
        labels: Names of the head's outputs.
        task: ``multiclass`` or ``multilabel``.
        preprocessing: ``size``/``mean``/``std``/``interpolation``/``crop``;
            defaults to the backbone's own at ``spec.img_size``.
        adapter_name: Which adapter to save.
        backbone_weights: The frozen backbone's checkpoint file, or ``"hub"`` for
            timm's pretrained weights; recorded so that loading finds them again.

    Returns:
        The output folder.
    """
    outputs = head_of(model, adapter_name).out_features
    if len(labels) != outputs:
        raise ConfigError(f"{len(labels)} labels, but head {adapter_name!r} has {outputs} outputs")
    values = None
    if spec.method == "lora":
        values = lora_values(model, adapter_name)
        _check_targets(model, spec, adapter_name)
    if preprocessing is None:
        preprocessing = default_preprocessing(model, spec.img_size)
    if backbone_weights not in (None, HUB):
        backbone_weights = str(Path(backbone_weights).resolve())
    config = make_config(spec, labels, task, preprocessing, values, backbone_weights)
    out_dir = Path(out_dir)
    write_state_dict(out_dir / WEIGHTS_NAME, adapter_parameters(model, adapter_name, spec.method))
    write_adapter_config(config, out_dir)
    return out_dir


def _check_targets(model: nn.Module, spec: ModelSpec, adapter_name: str) -> None:
    """Refuse to save a config whose targets/blocks do not describe the adapter."""
    adapted = sorted(n for n, layer in lora_layers(model).items() if adapter_name in layer.lora_A)
    described = sorted(find_linears(model, spec.lora.targets, spec.lora.blocks))
    if adapted != described:
        raise ConfigError(
            f"adapter {adapter_name!r} sits on {adapted}, but spec.lora (targets "
            f"{list(spec.lora.targets)}, blocks {spec.lora.blocks}) describes {described}"
        )


def load_adapter(
    path: str | Path,
    model: nn.Module | None = None,
    adapter_name: str | None = None,
    weights: str | Path | None = None,
    pretrained: bool = False,
) -> tuple[nn.Module, AdapterConfig]:
    """Load a saved adapter, building its model or adding it to a given one.

    Args:
        path: Adapter folder (or its ``adapter_config.json``).
        model: A model with the same backbone to add this LoRA adapter to; its
            other adapters stay. ``None`` builds a model from the config.
        adapter_name: Name for the adapter; defaults to the folder name.
        weights: Backbone checkpoint file when building the model; by default
            the one recorded at save time (see `AdapterConfig.backbone_weights`).
        pretrained: Fetch the backbone's hub weights when building the model.

    Returns:
        The model, with this adapter active, and the adapter's config.
    """
    folder = config_path(path).parent
    config = read_adapter_config(folder)
    source = folder / WEIGHTS_NAME
    state = read_state_dict(source)
    name = adapter_name or folder.resolve().name
    if model is None:
        if weights is None and not pretrained:
            weights, pretrained = recorded_backbone(config, folder)
        spec = config.to_spec()
        model = build_model(spec, pretrained=pretrained, weights=weights, adapter_name=name)
        copy_weights(adapter_parameters(model, name, config.method), state, source)
        return model, config
    if config.method != "lora":
        raise ConfigError(f"{folder}: only LoRA adapters join a given model, not {config.method!r}")
    check_backbone(model, config, folder)
    add_lora_weights(model, name, config.to_spec().lora, state, source)
    return model, config


def recorded_backbone(config: AdapterConfig, folder: Path) -> tuple[str | None, bool]:
    """``(weights, pretrained)`` the adapter was trained on, as recorded in its config.

    Raises:
        WeightsError: if the recorded checkpoint file is not on this machine, since
            the adapter on a random backbone would predict nonsense.
    """
    recorded = config.backbone_weights
    if config.method == "full":
        return None, False
    if recorded is None:
        warnings.warn(
            f"{folder} was trained on a randomly initialised backbone; on a new random "
            "backbone its outputs are meaningless (pass the backbone weights if you have them)",
            stacklevel=3,
        )
        return None, False
    if recorded == HUB:
        return None, True
    if not Path(recorded).is_file():
        raise WeightsError(
            f"{folder} was trained on the backbone weights in {recorded}, which is not here; "
            "pass that checkpoint with --weights (Python: weights=...)"
        )
    return recorded, False


def add_lora_weights(
    model: nn.Module,
    name: str,
    lora: LoraSettings,
    state: Mapping[str, torch.Tensor],
    source: str | Path,
) -> None:
    """Add LoRA adapter ``name`` with its own head, fill it from ``state`` and activate it.

    On any error the model is left as it was.
    """
    if name in adapter_names(model):
        raise ConfigError(f"the model already has an adapter named {name!r}; choose another name")
    head_weight = state.get(f"{HEAD_NAME}.weight")
    if head_weight is None:
        raise WeightsError(f"{source}: missing tensor {HEAD_NAME}.weight")
    try:
        add_lora(model, lora.targets, lora.rank, lora.alpha, lora.dropout, lora.blocks, name)
        _add_head(model, name, head_weight.shape[0])
        copy_weights(adapter_parameters(model, name, "lora"), state, source)
    except (ConfigError, WeightsError):
        _discard_adapter(model, name)
        raise
    set_active_adapter(model, name)


def _add_head(model: nn.Module, name: str, outputs: int) -> None:
    """Give adapter ``name`` a fresh head, turning ``model.head`` into :class:`TaskHeads`."""
    heads = model.get_submodule(HEAD_NAME)
    if not isinstance(heads, TaskHeads):
        owner = next((a for a in _active_adapters(model) if a != name), "base")
        heads = TaskHeads({owner: heads}, owner)
        setattr(model, HEAD_NAME, heads)
    ref = next(iter(heads.heads.values())).weight
    heads.heads[name] = nn.Linear(ref.shape[1], outputs, device=ref.device, dtype=ref.dtype)


def _active_adapters(model: nn.Module) -> list[str]:
    return [layer.active_adapter for layer in lora_layers(model).values() if layer.active_adapter]


def _discard_adapter(model: nn.Module, name: str) -> None:
    """Undo a partly added adapter that was never activated."""
    for layer in lora_layers(model).values():
        if name in layer.lora_A:
            layer.delete_adapter(name)
    heads = model.get_submodule(HEAD_NAME)
    if isinstance(heads, TaskHeads) and name in heads.heads:
        del heads.heads[name]


def check_backbone(model: nn.Module, config: AdapterConfig, source: str | Path) -> None:
    """Raise :class:`WeightsError` unless ``model``'s backbone is the config's.

    Compares the timm architecture name, depth and every backbone tensor shape
    (embedding dim, MLP width, patch grid from ``img_size``).
    """
    arch = getattr(model, "pretrained_cfg", {}).get("architecture")
    wanted = config.backbone.split(".")[0]
    problems = [f"architecture: expected {wanted}, got {arch}"] if arch and arch != wanted else []
    kwargs = {"weight_init": "skip", **config.model_kwargs}  # shapes only: no init, no memory
    with torch.device("meta"):
        ref = build_vit(config.backbone, config.num_classes, config.img_size, **kwargs)
    if len(model.blocks) != len(ref.blocks):
        problems.append(f"depth: expected {len(ref.blocks)}, got {len(model.blocks)}")
    own = {_WRAPPED.sub("", k): v.shape for k, v in model.state_dict().items()}
    for key, value in ref.state_dict().items():
        if not key.startswith(HEAD_NAME + ".") and own.get(key) != value.shape:
            got = tuple(own[key]) if key in own else "missing"
            problems.append(f"{key}: expected {tuple(value.shape)}, got {got}")
    if problems:
        raise WeightsError(
            f"{source}: adapter was trained on {config.backbone} (img_size {config.img_size}, "
            f"{config.model_kwargs or 'default dims'}), the given model differs: "
            f"{'; '.join(problems[:4])}. Load it without model= to build its own backbone."
        )
