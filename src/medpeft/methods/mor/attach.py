"""Attach MoR to a model: wrap the target Linears, add a named adapter, count its parameters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

from medpeft.errors import ConfigError
from medpeft.methods.mor.layer import DEFAULT_RANKS, DEFAULT_SCALE, MoRLinear
from medpeft.methods.reach import check_on_first_forward
from medpeft.methods.targets import (
    backbone_views,
    candidate_linears,
    check_hits,
    has_suffix,
    replace_module,
    resolve_targets,
)


def mor_layers(model: nn.Module) -> dict[str, MoRLinear]:
    """All MoR-wrapped layers of a model by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MoRLinear)}


def add_mor(
    model: nn.Module,
    targets: Sequence[str] = ("fc1", "fc2"),
    ranks: Sequence[int] = DEFAULT_RANKS,
    blocks: Iterable[int] | None = None,
    adapter_name: str = "default",
    scale: float = DEFAULT_SCALE,
    modalities: Sequence[str] | None = None,
) -> list[str]:
    """Add a MoR adapter called ``adapter_name`` to every target Linear; return their names.

    ``modalities``: per-modality up-projections (see the module docstring).

    Linears already wrapped keep their wrapper and get one more named adapter.

    Raises:
        ConfigError: if a target matches no Linear (within ``blocks``) or a matched
            layer already holds ``adapter_name``; the model is then left unchanged.
    """
    found = {name: model.get_submodule(name) for name in _target_linears(model, targets, blocks)}
    for name, module in found.items():
        if isinstance(module, MoRLinear) and adapter_name in module.mor_A:
            raise ConfigError(f"{name} already has a MoR adapter named {adapter_name!r}")
    for name, module in found.items():
        if not isinstance(module, MoRLinear):
            module = MoRLinear(module)
            replace_module(model, name, module)
        module.add_adapter(adapter_name, ranks, scale, modalities)
    check_on_first_forward(model, found)
    return list(found)


def _target_linears(model: nn.Module, targets: Sequence[str], blocks: Iterable[int] | None) -> list[str]:
    """Qualified names of the whole Linears MoR wraps (roles through backbone views, or names)."""
    if backbone_views(model):
        found = resolve_targets(model, targets, blocks, MoRLinear, "mor.targets")
        sliced = sorted(name for name, segments in found.items() if segments is not None)
        if sliced:
            raise ConfigError(
                f"mor.targets: MoR adapts whole Linears, but {sliced[0]} would be adapted on a slice "
                "(q/k/v of a fused qkv); target the Linear itself (e.g. attn.qkv) or fc1/fc2"
            )
        return list(found)
    blocks = None if blocks is None else sorted(set(blocks))
    names = []
    hits = dict.fromkeys(targets, 0)
    for name, _ in candidate_linears(model, MoRLinear, blocks):
        for target in targets:
            if has_suffix(name, target):
                names.append(name)
                hits[target] += 1
    check_hits(hits, "mor.targets", model, blocks, "Linear name suffixes such as mlp.fc1, mlp.fc2, attn.proj")
    return list(dict.fromkeys(names))


def count_mor_parameters(model: nn.Module, adapter_name: str = "default") -> int:
    """MoR parameters of one adapter (ViT-B, fc1 + fc2 of 12 blocks, ranks 2/4/8: 1,474,656)."""
    return sum(
        layer.num_adapter_parameters(adapter_name)
        for layer in mor_layers(model).values()
        if adapter_name in layer.mor_A
    )
