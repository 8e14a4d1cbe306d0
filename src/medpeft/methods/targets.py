"""Find the modules an adapter wraps: by role through the backbone interface, or by name.

Models with backbone views (every family of :mod:`medpeft.backbones`) resolve
targets with :func:`resolve_targets`: roles ``q``, ``k``, ``v``, ``out``, ``fc1``,
``fc2`` name the same layer in every family, any other target is a module-name
pattern (a regex when it has regex characters, else a name suffix, like PEFT's
``target_modules``). Models without views (ViLT) match name suffixes below.

Without views, any target name (``qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``, or a Hugging Face
name such as ``attention.query``) matches every Linear whose qualified name ends
with it; methods add their own names on top (LoRA: ``q``/``k``/``v`` segments of a
fused ``qkv``, :mod:`medpeft.methods.lora.attach`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

from torch import nn

from medpeft.backbones.base import Backbone
from medpeft.errors import ConfigError, did_you_mean
from medpeft.routing import note_adapters_changed

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
    """Put ``new`` where the submodule called ``name`` is (an adapter layer in or out)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    note_adapters_changed()


ROLE_TARGETS = ("q", "k", "v", "out", "fc1", "fc2")
_PATTERN_CHARS = set("*?[]()|^$\\+{}")


def backbone_views(model: nn.Module) -> dict[str, Backbone]:
    """The backbone views of a fusion model by module prefix (none for ViLT)."""
    views = getattr(model, "backbone_views", None)
    return views() if views is not None else {}


def matches(name: str, target: str) -> bool:
    """Whether a qualified module name matches a target: a regex (full match) if the
    target has regex characters, else a name suffix (PEFT's ``target_modules``)."""
    if _PATTERN_CHARS & set(target):
        return re.fullmatch(target, name) is not None
    return has_suffix(name, target)


def resolve_targets(
    model: nn.Module,
    targets: Sequence[str],
    blocks: Iterable[int] | None,
    wrapper: type[nn.Module],
    what: str,
) -> dict[str, list[tuple[int, int]] | None]:
    """Qualified names of the Linears to adapt -> their output segments (None: all outputs).

    Roles (``q``, ``k``, ``v``, ``out``, ``fc1``, ``fc2``) come from the model's
    backbone views, so they name the same layer in every family (a slice of a fused
    ``qkv``, a separate ``query`` Linear, ...); any other target is a module-name
    pattern matched within the chosen blocks. Block ``i`` is the ``i``-th block in
    forward order (stages of hierarchical models flattened).

    Raises:
        ConfigError: a target matches nothing (naming the closest layer names), or a
            block index is out of range.
    """
    found: dict[str, list[tuple[int, int]] | None] = {}
    hits = {t: 0 for t in targets}
    seen: set[str] = set()
    for prefix, view in backbone_views(model).items():
        view.prepare()
        names = view.block_names()
        for i in chosen_blocks(blocks, len(names), view.describe(), what):
            roles = dict(view.projections(i))
            block = join(prefix, names[i])
            for target in targets:
                if target in roles:
                    _add(found, join(prefix, roles[target].module), roles[target].segment)
                    hits[target] += 1
            for name, _ in candidate_linears(model.get_submodule(block), wrapper):
                seen.add(name)
                for target in targets:
                    if target not in ROLE_TARGETS and matches(join(block, name), target):
                        _add(found, join(block, name), None)
                        hits[target] += 1
    missing = [t for t, n in hits.items() if n == 0]
    if missing:
        close = "".join(did_you_mean(t, sorted(seen)) for t in missing[:1])
        raise ConfigError(
            f"{what} {missing} match no layer of {type(model).__name__}"
            + (f" within blocks {list(blocks)}" if blocks is not None else "")
            + f"; use the roles {list(ROLE_TARGETS)} or names such as {sorted(seen)[:4]}{close}"
        )
    return found


def chosen_blocks(blocks: Iterable[int] | None, count: int, backbone: str, what: str) -> list[int]:
    """The block indices to adapt; ConfigError naming the range if one is beyond the model."""
    chosen = list(range(count)) if blocks is None else sorted(set(blocks))
    beyond = [b for b in chosen if b >= count]
    if beyond:
        raise ConfigError(f"{what}: blocks {beyond} do not exist; {backbone} has blocks 0..{count - 1}")
    return chosen


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _add(found: dict, name: str, segment: tuple[int, int] | None) -> None:
    if segment is None or found.get(name, []) is None:
        found[name] = None
    else:
        found[name] = sorted({*found.get(name, []), segment})
