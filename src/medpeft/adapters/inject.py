"""Find target Linears by name, wrap them with adapters, freeze, and count parameters.

Target names:
    ``q``, ``k``, ``v``: segments of a fused ``qkv`` Linear (timm ViTs), so
    ``["q", "v"]`` is MeLo's default. Any other name (``qkv``, ``attn.proj``,
    ``mlp.fc1``, ``mlp.fc2``, or a Hugging Face name such as
    ``attention.query``) matches every Linear whose qualified name ends with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from medpeft.adapters.lora import LoRALinear, Segment
from medpeft.errors import ConfigError
from medpeft.routing import current

QKV_PARTS = {"q": 0, "k": 1, "v": 2}
FUSED_QKV_NAME = "qkv"
BLOCK_LIST_NAMES = ("blocks", "layer", "layers")  # timm, Hugging Face encoders
_BLOCK_INDEX = re.compile(rf"(?:^|\.)(?:{'|'.join(BLOCK_LIST_NAMES)})\.(\d+)\.")


def block_index(module_name: str) -> int | None:
    """The transformer block a module belongs to (``blocks.3.attn.qkv`` -> 3)."""
    match = _BLOCK_INDEX.search(module_name)
    return int(match.group(1)) if match else None


def has_suffix(name: str, suffix: str) -> bool:
    """Whether a qualified module name is ``suffix`` or ends with ``.suffix``."""
    return name == suffix or name.endswith("." + suffix)


def candidate_linears(
    model: nn.Module, wrapper: type[nn.Module], blocks: Iterable[int] | None = None
) -> Iterator[tuple[str, nn.Module]]:
    """Plain Linears and ``wrapper``-wrapped ones (not their ``.base``) in the chosen blocks."""
    wanted = None if blocks is None else set(blocks)
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, wrapper)) or name.endswith(".base"):
            continue
        if wanted is None or block_index(name) in wanted:
            yield name, module


def find_linears(
    model: nn.Module, targets: Sequence[str], blocks: Iterable[int] | None = None
) -> dict[str, list[Segment] | None]:
    """Map each target Linear's qualified name to the output segments to adapt.

    Raises:
        ConfigError: if a target name matches no Linear in the model.
    """
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
    check_hits(hits, "LoRA targets", model, blocks, "q/k/v (fused qkv) or a Linear name suffix such as attn.proj, mlp.fc1")
    return found


def check_hits(
    hits: Mapping[str, int], what: str, model: nn.Module, blocks: Sequence[int] | None, hint: str
) -> None:
    """Raise ConfigError naming the targets that matched no Linear (``hits[target] == 0``)."""
    missing = [t for t, n in hits.items() if n == 0]
    if missing:
        raise ConfigError(
            f"{what} {missing} match no Linear in {type(model).__name__}"
            + (f" within blocks {list(blocks)}" if blocks is not None else "")
            + f"; use {hint}"
        )


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` is."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def add_lora(
    model: nn.Module,
    targets: Sequence[str] = ("q", "v"),
    rank: int = 4,
    alpha: float = 4.0,
    dropout: float = 0.0,
    blocks: Iterable[int] | None = None,
    adapter_name: str = "default",
) -> list[str]:
    """Add a LoRA adapter called ``adapter_name`` to the target Linears of ``model``.

    Linears already wrapped keep their wrapper and get one more named adapter,
    so many task adapters can share one backbone. Returns the wrapped names.

    Raises:
        ConfigError: if a target matches nothing, already holds ``adapter_name``,
            or is already adapted on other segments; the model is left unchanged.
    """
    targets_found = find_linears(model, targets, blocks)
    for name, segments in targets_found.items():
        layer = model.get_submodule(name)
        if not isinstance(layer, LoRALinear):
            continue
        if adapter_name in layer.lora_A:
            raise ConfigError(f"{name} already has a LoRA adapter named {adapter_name!r}")
        if (segments or [(0, layer.out_features)]) != layer.segments:
            raise ConfigError(f"{name} is already adapted on segments {layer.segments}, not {segments}")
    for name, segments in targets_found.items():
        layer = model.get_submodule(name)
        if not isinstance(layer, LoRALinear):
            layer = LoRALinear(layer, segments)
            replace_module(model, name, layer)
        layer.add_adapter(adapter_name, rank=rank, alpha=alpha, dropout=dropout)
    return list(targets_found)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """All LoRA-wrapped layers of a model by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def keyed_layers(model: nn.Module) -> list[nn.Module]:
    """Layers that hold named adapters (LoRA, MoRA: ``adapter_names`` + ``active_adapter``)."""
    return [m for m in model.modules() if hasattr(m, "adapter_names") and hasattr(m, "active_adapter")]


def set_active_adapter(model: nn.Module, name: str | None) -> None:
    """Make adapter ``name`` every layer's default (``None``: base model only).

    The default serves calls that do not route an adapter (:mod:`medpeft.routing`).
    A per-task head (:class:`medpeft.adapters.heads.TaskHeads`) switches as well.
    """
    layers = keyed_layers(model)  # one walk over the modules
    holds = [name is not None and name in layer.adapter_names for layer in layers]
    if name is not None and not any(holds):
        raise KeyError(f"no adapter named {name!r}; known: {adapter_names(model)}")
    head = getattr(model, "head", None)
    if name is not None and hasattr(head, "activate"):
        head.activate(name)
    for layer, held in zip(layers, holds):
        layer.active_adapter = name if held else None


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the adapters present in a model, in insertion order."""
    names: dict[str, None] = {}
    for layer in keyed_layers(model):
        names.update(dict.fromkeys(layer.adapter_names))
    return list(names)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` from every layer holding it, and its per-task head."""
    for layer in keyed_layers(model):
        if name in layer.adapter_names:
            layer.delete_adapter(name)
    heads = getattr(model, "head", None)
    if hasattr(heads, "heads") and name in heads.heads:
        del heads.heads[name]
        if heads.active == name:
            heads.active = next(iter(heads.heads))


def check_routed(model: nn.Module) -> None:
    """Raise ConfigError if the call in progress routes to adapters ``model`` does not hold.

    Layers without the routed adapter run their base weights (an adapter need not
    cover every layer), so a misspelt task name must be caught at the model.
    """
    routed = current().adapters
    if routed is None:
        return
    known = adapter_names(model)
    unknown = sorted(({routed} if isinstance(routed, str) else set(routed)) - set(known))
    if unknown:
        raise ConfigError(f"no adapter named {unknown}; the model has {known}")


def merge_lora(model: nn.Module, name: str | None = None) -> None:
    """Fold adapter ``name`` (default: each layer's active one) into the base weights."""
    for layer in lora_layers(model).values():
        layer.merge(name)


def unmerge_lora(model: nn.Module, name: str | None = None) -> None:
    """Undo :func:`merge_lora`."""
    for layer in lora_layers(model).values():
        layer.unmerge(name)


def freeze_except(model: nn.Module, trainable: Callable[[str], bool]) -> None:
    """Freeze every parameter whose qualified name does not satisfy ``trainable``."""
    for name, param in model.named_parameters():
        param.requires_grad_(trainable(name))


@dataclass(frozen=True)
class ParameterCount:
    """Trainable vs total parameters of a model."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"{self.trainable:,} trainable / {self.total:,} total ({self.percent:.3f}%)"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count trainable and total parameters (each shared tensor once)."""
    params = list(model.parameters())  # parameters() already skips repeats of a shared tensor
    return ParameterCount(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
    )


def count_adapter_parameters(model: nn.Module, adapter_name: str = "default") -> int:
    """Number of LoRA parameters of one adapter (MeLo ViT-B/16 r=4 q+v: 147,456)."""
    return sum(
        layer.lora_A[adapter_name].numel() + layer.lora_B[adapter_name].numel()
        for layer in lora_layers(model).values()
        if adapter_name in layer.lora_A
    )
