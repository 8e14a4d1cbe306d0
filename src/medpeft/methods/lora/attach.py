"""Attach LoRA to a model: find target Linears, wrap them, merge, count.

Target names:
    ``q``, ``k``, ``v``: segments of a fused ``qkv`` Linear (timm ViTs), so
    ``["q", "v"]`` is MeLo's default. Any other name matches every Linear whose
    qualified name ends with it (:func:`medpeft.methods.targets.has_suffix`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

from medpeft.errors import ConfigError
from medpeft.frozen_dtype import is_quantized
from medpeft.methods.lora.layer import LoRALinear, Segment
from medpeft.methods.reach import check_on_first_forward
from medpeft.methods.targets import (
    backbone_views,
    candidate_linears,
    check_hits,
    has_suffix,
    replace_module,
    resolve_targets,
)

QKV_PARTS = {"q": 0, "k": 1, "v": 2}
FUSED_QKV_NAME = "qkv"


def find_linears(
    model: nn.Module, targets: Sequence[str], blocks: Iterable[int] | None = None, section: str = "lora"
) -> dict[str, list[Segment] | None]:
    """Map each target Linear's qualified name to the output segments to adapt.

    Through the model's backbone views when it has them (any family,
    :func:`~medpeft.methods.targets.resolve_targets`), else by name (ViLT).

    Raises:
        ConfigError: if a target name matches no Linear in the model (naming
            ``<section>.targets``).
    """
    if backbone_views(model):
        return resolve_targets(model, targets, blocks, LoRALinear, f"{section}.targets")
    blocks = None if blocks is None else sorted(set(blocks))
    qkv_parts = sorted(QKV_PARTS[t] for t in set(targets) & QKV_PARTS.keys())
    suffixes = [t for t in targets if t not in QKV_PARTS]
    found: dict[str, list[Segment] | None] = {}
    hits = {t: 0 for t in targets}
    for name, module in candidate_linears(model, LoRALinear, blocks):
        for suffix in suffixes:
            if has_suffix(name, suffix):
                found[name] = None
                hits[suffix] += 1
        if qkv_parts and name.split(".")[-1] == FUSED_QKV_NAME:
            dim = module.out_features // 3
            found[name] = [(p * dim, (p + 1) * dim) for p in qkv_parts]
            for t in targets:
                hits[t] += t in QKV_PARTS
    check_hits(hits, f"{section}.targets", model, blocks, "q/k/v (fused qkv) or a Linear name suffix such as attn.proj, mlp.fc1")
    return found


def add_lora(
    model: nn.Module,
    targets: Sequence[str] = ("q", "v"),
    rank: int = 4,
    alpha: float = 4.0,
    dropout: float = 0.0,
    blocks: Iterable[int] | None = None,
    adapter_name: str = "default",
    layer_type: type[LoRALinear] = LoRALinear,
    section: str = "lora",
) -> list[str]:
    """Add a LoRA adapter called ``adapter_name`` to the target Linears of ``model``.

    Linears already wrapped keep their wrapper and get one more named adapter,
    so many task adapters can share one backbone. Returns the wrapped names.
    ``layer_type`` is the wrapper (a LoRALinear subclass such as DoRA's), ``section``
    the config section that error messages name.

    Raises:
        ConfigError: if a target matches nothing, already holds ``adapter_name``,
            is already adapted on other segments or by another wrapper type, or is
            narrower than ``rank``; the model is left unchanged.
    """
    targets_found = find_linears(model, targets, blocks, section)
    check_rank(model, targets_found, rank, section)
    for name, segments in targets_found.items():
        layer = model.get_submodule(name)
        if not isinstance(layer, LoRALinear):
            continue
        if type(layer) is not layer_type:
            raise ConfigError(
                f"{name} already holds {type(layer).__name__} adapters; {section} adapters "
                f"need a {layer_type.__name__} (one method per layer)"
            )
        if adapter_name in layer.lora_A:
            raise ConfigError(f"{name} already has a LoRA adapter named {adapter_name!r}")
        if (segments or [(0, layer.out_features)]) != layer.segments:
            raise ConfigError(f"{name} is already adapted on segments {layer.segments}, not {segments}")
    for name, segments in targets_found.items():
        layer = model.get_submodule(name)
        if not isinstance(layer, LoRALinear):
            layer = layer_type(layer, segments)
            replace_module(model, name, layer)
        layer.add_adapter(adapter_name, rank=rank, alpha=alpha, dropout=dropout)
    check_on_first_forward(model, targets_found)
    return list(targets_found)


def check_rank(
    model: nn.Module, targets_found: dict[str, list[Segment] | None], rank: int, section: str = "lora"
) -> None:
    """ConfigError naming the narrowest target Linear if ``rank`` exceeds its width: the smaller of
    its inputs and the outputs of one adapted segment, the largest rank ``B @ A`` can have there."""
    widths = {name: _width(model.get_submodule(name), segments) for name, segments in targets_found.items()}
    if not widths:
        return
    name = min(widths, key=lambda n: widths[n][0])
    width, inputs, outputs = widths[name]
    if rank > width:
        raise ConfigError(
            f"{section}.rank: {rank} is larger than the layer {name} ({inputs} inputs, {outputs} adapted "
            f"outputs), so the update cannot have rank {rank}; use {section}.rank <= {width}"
        )


def _width(layer: nn.Module, segments: list[Segment] | None) -> tuple[int, int, int]:
    """``(width, inputs, outputs)`` of a target: outputs of one segment, else of the whole Linear."""
    outputs = segments[0][1] - segments[0][0] if segments else layer.out_features
    return min(layer.in_features, outputs), layer.in_features, outputs


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """All LoRA-wrapped layers of a model by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module, name: str | None = None) -> None:
    """Fold adapter ``name`` (default: each layer's first) into the base weights.

    Raises:
        ConfigError: the base weights are int8 (``model.frozen_dtype: int8``), which hold no update.
    """
    layers = lora_layers(model)
    quantized = next((n for n, layer in layers.items() if is_quantized(layer.base.weight)), None)
    if quantized is not None:
        raise ConfigError(
            f"{quantized}: cannot merge an adapter into int8 frozen weights (model.frozen_dtype: int8); "
            "build the model in float32 to merge (medpeft export does)"
        )
    for layer in layers.values():
        layer.merge(name)


def unmerge_lora(model: nn.Module, name: str | None = None) -> None:
    """Undo :func:`merge_lora`."""
    for layer in lora_layers(model).values():
        layer.unmerge(name)


def cache_merged_weights(model: nn.Module, enabled: bool = True) -> None:
    """Let the LoRA layers of ``model`` run single-adapter inference on a cached merged weight
    (the default; :meth:`LoRALinear.merged_for`), or not: a model serving many tasks in turn
    (the adapter bank) saves the rebuild at each switch and one copy of each adapted weight."""
    for layer in lora_layers(model).values():
        layer.set_cache_merged(enabled)


def count_adapter_parameters(model: nn.Module, adapter_name: str = "default") -> int:
    """Number of LoRA parameters of one adapter (MeLo ViT-B/16 r=4 q+v: 147,456)."""
    return sum(
        layer.lora_A[adapter_name].numel() + layer.lora_B[adapter_name].numel()
        for layer in lora_layers(model).values()
        if adapter_name in layer.lora_A
    )
