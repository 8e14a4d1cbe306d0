"""Import LoRA-ViT/MeLo adapter files.

LoRA-ViT (the public MeLo code, arXiv 2311.08236) stores one safetensors file:
``w_a_{i:03d}`` ``(r, dim)`` and ``w_b_{i:03d}`` ``(dim, r)`` where even
``i = 2*block`` adapts q and odd ``i = 2*block+1`` adapts v, plus the head weight
``fc_{dim}in_{C}out`` ``(C, dim)`` without bias. Rank comes from the shapes,
alpha from the file name: ``..._lora_{r}_{alpha}.safetensors``, or the public
multi-adapter names split on ``_`` (field 0 the backbone, ``base`` = timm
``vit_base_patch16_224``; fields 3, 4, 5 rank, alpha and class count), else alpha = r.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from medpeft.adapters_io.config import CONFIG_NAME, WEIGHTS_NAME
from medpeft.adapters_io.folder import adapter_parameters, add_adapter_weights, save_adapter
from medpeft.backbones.weights import copy_weights, read_state_dict
from medpeft.errors import ConfigError, WeightsError
from medpeft.heads import HEAD_NAME
from medpeft.methods import LoraSettings, get_method
from medpeft.model import ModelSpec, build_model

_NAME_RANK_ALPHA = re.compile(r"_lora_(\d+)_(\d+(?:\.\d+)?)\.safetensors$")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
NAME_BACKBONES = {
    "tiny": "vit_tiny_patch16_224",
    "small": "vit_small_patch16_224",
    "base": "vit_base_patch16_224",
    "large": "vit_large_patch16_224",
    "huge": "vit_huge_patch14_224",
}
_HEAD_KEY = re.compile(r"fc_(\d+)in_(\d+)out")


def import_lora_vit(
    path: str | Path,
    model_or_spec: nn.Module | ModelSpec,
    adapter_name: str | None = None,
    weights: str | Path | None = None,
    pretrained: bool = False,
) -> nn.Module:
    """Load a LoRA-ViT/MeLo ``.safetensors`` adapter (q+v LoRA and head weight).

    Args:
        path: The adapter file, e.g. ``melo_lora_4_4.safetensors``.
        model_or_spec: A timm ViT to add the adapter to (multi-adapter), or a
            :class:`ModelSpec` of the backbone to build (LoRA settings come from
            the file; ``num_classes`` must match its head).
        adapter_name: Name of the adapter; defaults to the file's stem.
        weights: Backbone checkpoint when building from a spec.
        pretrained: Fetch hub weights when building from a spec.

    Returns:
        The model holding this adapter (given a model: routed by name with
        :func:`medpeft.routing.route`); the head bias is zero (not stored).
    """
    path = Path(path)
    state = read_state_dict(path)
    name = adapter_name or path.stem
    head_key, num_classes = _head_key(state, path)
    lora = lora_vit_settings(path, state)
    method = get_method("lora")
    if not isinstance(model_or_spec, ModelSpec):
        tensors = _to_medpeft(state, model_or_spec, head_key, path)
        add_adapter_weights(model_or_spec, name, method, lora, tensors, path)
        return model_or_spec
    if model_or_spec.num_classes != num_classes:
        raise WeightsError(
            f"{path}: head {head_key} has {num_classes} classes, spec {model_or_spec.num_classes}"
        )
    spec = dataclasses.replace(model_or_spec, method="lora", settings=lora)
    model = build_model(spec, pretrained=pretrained, weights=weights, adapter_name=name)
    tensors = _to_medpeft(state, model, head_key, path)
    copy_weights(adapter_parameters(model, name, method), tensors, path)
    return model


def convert_lora_vit(
    path: str | Path,
    backbone: str | None,
    out_dir: str | Path,
    img_size: int | None = None,
    labels: Sequence[str] | None = None,
    weights: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a LoRA-ViT/MeLo ``.safetensors`` file into a medpeft adapter folder.

    Args:
        path: The LoRA-ViT file (rank and alpha as in :func:`import_lora_vit`).
        backbone: timm model the file was trained on, e.g. ``vit_base_patch16_224``
            (None: field 0 of a public file name, else ``vit_base_patch16_224``).
        out_dir: Adapter folder to write (``multiclass`` task).
        img_size: Input resolution the adapter was trained at (default: the backbone's).
        labels: Class names in head order; default ``class_0 .. class_{C-1}``.
        weights: Backbone checkpoint to build the model from (checks that it fits).
        overwrite: Replace an adapter ``out_dir`` already holds.

    Raises:
        ConfigError: if the number of labels differs from the file's head classes, or
            ``out_dir`` holds an adapter and ``overwrite`` is False.
    """
    path = Path(path)
    check_free(out_dir, overwrite)
    state = read_state_dict(path)
    _, num_classes = _head_key(state, path)
    labels = list(labels) if labels else [f"class_{i}" for i in range(num_classes)]
    if len(labels) != num_classes:
        raise ConfigError(f"{len(labels)} labels given, but {path} has {num_classes} classes")
    backbone = backbone or name_fields(path).backbone or NAME_BACKBONES["base"]
    spec = ModelSpec(backbone, num_classes, img_size=img_size, settings=lora_vit_settings(path, state))
    model = import_lora_vit(path, spec, adapter_name="default", weights=weights)
    return save_adapter(model, out_dir, spec, labels, "multiclass", backbone_weights=weights)


def check_free(out_dir: str | Path, overwrite: bool) -> None:
    """ConfigError if ``out_dir`` holds an adapter (its config or tensors) and ``overwrite`` is False."""
    held = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if (Path(out_dir) / name).exists()]
    if held and not overwrite:
        raise ConfigError(
            f"--output: {out_dir} already holds an adapter ({', '.join(held)}); refusing to overwrite "
            "it. Choose another folder, or pass --force to replace it (Python: overwrite=True)"
        )


def lora_vit_settings(path: Path, state: dict[str, torch.Tensor]) -> LoraSettings:
    """q+v LoRA settings of a LoRA-ViT file: rank from ``w_a_000``, alpha from the file name."""
    rank = _lora_tensor(state, "w_a_000", path).shape[0]
    _, classes = _head_key(state, path)
    return LoraSettings(targets=("q", "v"), rank=rank, alpha=_alpha_from_name(path, rank, classes))


def _head_key(state: dict[str, torch.Tensor], path: Path) -> tuple[str, int]:
    keys = [k for k in state if _HEAD_KEY.fullmatch(k)]
    if len(keys) != 1:
        raise WeightsError(f"{path}: need one head tensor fc_<dim>in_<C>out, got {keys or 'none'}")
    return keys[0], int(_HEAD_KEY.fullmatch(keys[0]).group(2))


def _lora_tensor(state: dict[str, torch.Tensor], key: str, path: Path) -> torch.Tensor:
    if key not in state:
        raise WeightsError(f"{path}: missing tensor {key} (LoRA-ViT has w_a_/w_b_ 000..2*depth-1)")
    return state[key]


@dataclasses.dataclass(frozen=True)
class NameFields:
    """What a LoRA-ViT file name says: backbone, rank, alpha, class count (None: not said)."""

    backbone: str | None = None
    rank: int | None = None
    alpha: float | None = None
    classes: int | None = None


def name_fields(path: str | Path) -> NameFields:
    """Parse ``..._lora_{r}_{alpha}.safetensors`` or ``{backbone}_x_y_{r}_{alpha}_{C}...``."""
    path = Path(path)
    match = _NAME_RANK_ALPHA.search(path.name)
    if match:
        return NameFields(rank=int(match.group(1)), alpha=float(match.group(2)))
    fields = path.stem.split("_")
    if len(fields) >= 6 and all(_NUMBER.fullmatch(f) for f in fields[3:6]):
        rank, alpha, classes = fields[3:6]
        if rank.isdigit() and classes.isdigit():
            return NameFields(NAME_BACKBONES.get(fields[0]), int(rank), float(alpha), int(classes))
    return NameFields()


def _alpha_from_name(path: Path, rank: int, classes: int | None = None) -> float:
    """Alpha the file name gives (else ``rank``), after checking its rank and class count."""
    said = name_fields(path)
    if said.rank is not None and said.rank != rank:
        raise WeightsError(f"{path}: file name says rank {said.rank}, w_a_000 has rank {rank}")
    if said.classes is not None and classes is not None and said.classes != classes:
        raise WeightsError(f"{path}: file name says {said.classes} classes, the head has {classes}")
    return float(rank) if said.alpha is None else said.alpha


def _to_medpeft(
    state: dict[str, torch.Tensor], model: nn.Module, head_key: str, path: Path
) -> dict[str, torch.Tensor]:
    """Check a LoRA-ViT state against ``model`` and re-key it to medpeft's layout."""
    depth, dim = len(model.blocks), model.embed_dim
    rank = state["w_a_000"].shape[0]
    extra = sorted(k for k in state if k != head_key and k not in _lora_keys(depth))
    if extra:
        raise WeightsError(f"{path}: unexpected tensors {extra[:5]} for a model of depth {depth}")
    tensors = {}
    for block in range(depth):
        pair = [2 * block, 2 * block + 1]
        a = [_checked(state, f"w_a_{i:03d}", (rank, dim), path) for i in pair]
        b = [_checked(state, f"w_b_{i:03d}", (dim, rank), path) for i in pair]
        tensors[f"blocks.{block}.attn.qkv.lora_A"] = torch.stack(a)
        tensors[f"blocks.{block}.attn.qkv.lora_B"] = torch.stack(b)
    weight = _checked(state, head_key, (state[head_key].shape[0], dim), path)
    tensors[f"{HEAD_NAME}.weight"] = weight
    tensors[f"{HEAD_NAME}.bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype)
    return tensors


def _lora_keys(depth: int) -> set[str]:
    return {f"w_{ab}_{i:03d}" for ab in "ab" for i in range(2 * depth)}


def _checked(
    state: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], path: Path
) -> torch.Tensor:
    tensor = _lora_tensor(state, key, path)
    if tuple(tensor.shape) != shape:
        raise WeightsError(f"{path}: tensor {key} has shape {tuple(tensor.shape)}, not {shape}")
    return tensor
