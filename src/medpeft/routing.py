"""Per-call routing: which modalities each sample has and which adapter serves it.

Adapters never store per-batch state, and a model has no mutable "active adapter":
a call that routes none is served by the model's first adapter (the fusion models
route it in their ``forward``; a layer or head on its own uses the first added to it). A model enters :func:`route` around its
forward (the fusion models do so with the batch's ``present`` mask and, when the
batch names them, per-sample ``adapters``) and adapter layers read
:func:`current`. The routing lives in a :class:`contextvars.ContextVar`, which is
private to each thread and each asyncio task, so two requests running different
presence masks or tasks through one model concurrently give the same results as
running them one after the other.

Example::

    with route(adapters="blood"):           # one task for the whole batch
        logits = model(images)
    with route(adapters=["tb", "blood"]):   # one task per sample (LoRA layers)
        logits = model(images)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

Adapters = str | tuple[str, ...] | None


@dataclass(frozen=True)
class Routing:
    """The routing of one forward call.

    Attributes:
        presence: ``Bool[B, M]``, which of the model's ``M`` modalities each sample has
            (None: every modality present).
        adapters: one adapter name for the whole batch, one name per sample, or None
            (the model's first adapter; a layer or head on its own: the first added to it).
    """

    presence: torch.Tensor | None = None
    adapters: Adapters = None

    def batch_adapter(self) -> str | None:
        """The single adapter of the whole batch, or None when none or several are routed."""
        if isinstance(self.adapters, str):
            return self.adapters
        if self.adapters and len(set(self.adapters)) == 1:
            return self.adapters[0]
        return None

    def adapter_for(self, held: Iterable[str]) -> str | None:
        """The adapter a layer or head holding ``held`` serves the whole batch with: the
        routed one, else the first it holds (insertion order); None when it holds none."""
        return self.batch_adapter() or next(iter(held), None)

    def is_mixed(self) -> bool:
        """Whether the samples of the batch are routed to different adapters."""
        return isinstance(self.adapters, tuple) and len(set(self.adapters)) > 1


_adapter_changes = 0


def note_adapters_changed() -> None:
    """Record that some model gained or lost an adapter (a layer's or a head's), so caches of the
    adapter names a model holds (:func:`medpeft.methods.layers.adapter_names`) are rebuilt."""
    global _adapter_changes
    _adapter_changes += 1


def adapters_version() -> int:
    """How many adapter additions and removals :func:`note_adapters_changed` has recorded."""
    return _adapter_changes


_ROUTING: ContextVar[Routing] = ContextVar("medpeft_routing", default=Routing())  # noqa: B039 (frozen)


def current() -> Routing:
    """The routing of the call in progress (empty outside :func:`route`)."""
    return _ROUTING.get()


@contextmanager
def route(
    presence: torch.Tensor | None = None, adapters: str | Sequence[str] | None = None
) -> Iterator[Routing]:
    """Route the model calls inside the block; fields left None keep the enclosing routing.

    Args:
        presence: ``Bool[B, M]`` presence mask of the batch.
        adapters: an adapter name, or one name per sample.
    """
    outer = _ROUTING.get()
    if adapters is not None and not isinstance(adapters, str):
        adapters = tuple(adapters)
    routing = Routing(
        outer.presence if presence is None else presence,
        outer.adapters if adapters is None else adapters,
    )
    token = _ROUTING.set(routing)
    try:
        yield routing
    finally:
        _ROUTING.reset(token)
