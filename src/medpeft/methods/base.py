"""The interface every tuning method implements, and the checks its settings share.

A method is one package under :mod:`medpeft.methods` with a settings dataclass
(defaults = its paper's), its layers, how it attaches to a model, which parameters
train, what it can do (the registry metadata below: merge, mix tasks in a batch...)
and an optional auxiliary loss the trainer adds. The model builder, adapter files,
bank, config and CLI only talk to this interface, so a new method is one package
plus one line in :mod:`medpeft.methods`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from medpeft.errors import ConfigError


class Method:
    """Base class of a tuning method.

    Class attributes:
        name: registry name (the config's ``method:`` value and settings section).
        settings_type: dataclass of the hyper-parameters.
        markers: fragments of parameter names that train (``".lora_"``).
        adapter_dicts: names of the ``ParameterDict``s keyed by adapter name; an
            adapter file stores their entries under keys without the name.
        trains_everything: every parameter trains (full fine-tuning).
        identity_at_init: a fresh adapter leaves the base model's output unchanged.
        reads_frozen_weights: its layers compute with the frozen weights' values (DoRA's row
            norms), so they cannot be held as int8 (``model.frozen_dtype``).

    Registry metadata (what the rest of medpeft asks instead of keeping lists of names):
        mergeable: the update folds into the frozen weights (``merge``/``unmerge``;
            merged and ONNX export).
        mixable: one batch can route each sample to another adapter of this method
            (``route(adapters=[...])``; the adapter bank serves these).
        needs_tokens: the method acts on a transformer's token stream (blocks of
            tokens, prompt tokens), not only on Linear layers.
        per_modality: every adapter keeps weights per modality (or per presence
            pattern), chosen by each sample's presence mask.
        only_kind: the one ``model.kind`` whose fusion the method needs (prompts: ``vilt``).
    """

    name: ClassVar[str]
    settings_type: ClassVar[type]
    markers: ClassVar[tuple[str, ...]] = ()
    adapter_dicts: ClassVar[tuple[str, ...]] = ()
    trains_everything: ClassVar[bool] = False
    identity_at_init: ClassVar[bool] = True
    reads_frozen_weights: ClassVar[bool] = False
    mergeable: ClassVar[bool] = False
    mixable: ClassVar[bool] = False
    needs_tokens: ClassVar[bool] = False
    per_modality: ClassVar[bool] = False
    only_kind: ClassVar[str | None] = None

    def attach(self, model: nn.Module, settings: Any, adapter_name: str = "default") -> None:
        """Add this method's adapter called ``adapter_name`` to a fusion model (default: nothing)."""

    def is_trainable(self, param_name: str) -> bool:
        """Whether a backbone parameter trains under this method (heads train anyway)."""
        return self.trains_everything or any(m in "." + param_name for m in self.markers)

    def aux_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A loss the trainer adds to the task loss after each forward (default: none)."""
        return None

    def merge(self, model: nn.Module, adapter_name: str = "default") -> None:
        """Fold the adapter into the frozen weights."""
        raise ConfigError(f"method {self.name!r} cannot be merged into the backbone weights")

    def unmerge(self, model: nn.Module, adapter_name: str = "default") -> None:
        """Undo :meth:`merge`."""
        raise ConfigError(f"method {self.name!r} cannot be merged into the backbone weights")


def require(condition: bool, key: str, expected: str, value: object) -> None:
    """Raise ConfigError ``key: expected ..., got value`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def is_int(value: object) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_blocks(key: str, blocks: object) -> None:
    """``blocks``: None (all) or a list of block indices >= 0."""
    ok = blocks is None or all(is_int(b) and b >= 0 for b in blocks)
    require(ok, key, "null (all blocks) or a list of block indices >= 0", blocks)
