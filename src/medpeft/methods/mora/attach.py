"""Attach MoRA to a model: a branch around chosen blocks or around target Linears."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from medpeft.errors import ConfigError
from medpeft.methods.mora.layer import ModalityDelta, MoRABlockBranch, MoRALinear
from medpeft.methods.targets import (
    BLOCK_LIST_NAMES,
    backbone_views,
    candidate_linears,
    has_suffix,
    join,
    replace_module,
)


def mora_layers(model: nn.Module) -> dict[str, ModalityDelta]:
    """All MoRA-wrapped modules of a model by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ModalityDelta)}


def find_block_list(model: nn.Module) -> nn.ModuleList | nn.Sequential:
    """The transformer block list (``blocks``, ``layer`` or ``layers``) of a model."""
    for name, module in model.named_modules():
        is_list = isinstance(module, (nn.ModuleList, nn.Sequential))
        if is_list and name.split(".")[-1] in BLOCK_LIST_NAMES:
            return module
    raise ConfigError(f"{type(model).__name__} has no block list named one of {BLOCK_LIST_NAMES}")


def block_width(block: nn.Module) -> int:
    """Hidden width of a residual block: the input width of its first Linear."""
    first = next((m for m in block.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise ConfigError(f"cannot infer the width of {type(block).__name__}: it has no Linear")
    return first.in_features


def block_modules(model: nn.Module) -> list[str]:
    """Qualified names of a model's transformer blocks in forward order: through its backbone
    view when it has one (any family), else its block list (ViLT)."""
    views = backbone_views(model)
    if views:
        prefix, view = next(iter(views.items()))
        return [join(prefix, name) for name in view.block_names()]
    names = {id(m): n for n, m in model.named_modules()}
    block_list = find_block_list(model)
    return [names[id(block)] for block in block_list]


def _wrap_blocks(model: nn.Module, blocks: Sequence[int] | None) -> list[ModalityDelta]:
    names = block_modules(model)
    indices = range(len(names)) if blocks is None else list(blocks)
    bad = [i for i in indices if not 0 <= i < len(names)]
    if bad:
        raise ConfigError(f"MoRA blocks {bad} out of range: the model has {len(names)} blocks")
    for i in indices:
        block = model.get_submodule(names[i])
        if not isinstance(block, MoRABlockBranch):
            replace_module(model, names[i], MoRABlockBranch(block, block_width(block)))
    return [model.get_submodule(names[i]) for i in indices]


def _wrap_linears(
    model: nn.Module, targets: Sequence[str], blocks: Sequence[int] | None
) -> list[ModalityDelta]:
    found = {
        name: module
        for name, module in candidate_linears(model, MoRALinear, blocks)
        if any(has_suffix(name, t) for t in targets)
    }
    if not found:
        raise ConfigError(
            f"MoRA targets {list(targets)} match no Linear in {type(model).__name__}; use whole "
            "Linear name suffixes such as attention.query (ViLT) or attn.qkv, mlp.fc1 (timm)"
        )
    for name, module in found.items():
        if isinstance(module, nn.Linear):
            found[name] = MoRALinear(module)
            replace_module(model, name, found[name])
    return list(found.values())


def add_mora(
    model: nn.Module,
    modalities: Sequence[str],
    rank: int = 4,
    blocks: Sequence[int] | None = (0,),
    targets: Sequence[str] | None = None,
    adapter_name: str = "default",
) -> int:
    """Add a MoRA adapter called ``adapter_name``; return how many layers carry it.

    Args:
        model: Model with a block list; its ``modalities`` (if any) must equal ``modalities``.
        modalities: Names in presence-mask column order; one ``B_m`` each.
        rank: ``r``.
        blocks: Block indices (``None``: all). Without ``targets`` each chosen
            block gets a parallel branch (paper: ``(0,)``).
        targets: Linear name suffixes to adapt instead of whole blocks.
        adapter_name: Key of the adapter's weights.
    """
    own = getattr(model, "modalities", None)
    if own is not None and tuple(own) != tuple(modalities):
        raise ConfigError(
            f"MoRA modalities {tuple(modalities)} differ from the model's {tuple(own)}"
        )
    layers = _wrap_blocks(model, blocks) if targets is None else _wrap_linears(model, targets, blocks)
    for layer in layers:
        layer.add_adapter(adapter_name, modalities, rank)
    return len(layers)


def count_mora_parameters(model: nn.Module, adapter_name: str = "default") -> int:
    """MoRA parameters of one adapter (ViLT-B, first block, r=4, 2 modalities: 9,216)."""
    return sum(
        layer.mora_A[adapter_name].numel() + layer.mora_B[adapter_name].numel()
        for layer in mora_layers(model).values()
        if adapter_name in layer.mora_A
    )
