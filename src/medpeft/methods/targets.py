"""Find the modules an adapter wraps: target Linears by name suffix, within chosen blocks.

Any target name (``qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``, or a Hugging Face
name such as ``attention.query``) matches every Linear whose qualified name ends
with it; methods add their own names on top (LoRA: ``q``/``k``/``v`` segments of a
fused ``qkv``, :mod:`medpeft.methods.lora.attach`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

from torch import nn

from medpeft.errors import ConfigError

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
