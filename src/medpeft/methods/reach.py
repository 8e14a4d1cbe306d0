"""Check that adapter layers are really called by the model's forward.

An adapter wrapped around a Linear does nothing when the model reads the Linear's
weight directly instead of calling it (``nn.MultiheadAttention`` reads
``out_proj.weight``; timm EVA with q/v biases calls ``F.linear(x, qkv.weight)``):
training would see a zero gradient and merging would still change the weights.
:func:`check_on_first_forward` turns that silent defect into an error on the first
forward after an adapter is attached; it costs two hooks per layer for that one
call and nothing afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from medpeft.errors import ConfigError


def check_on_first_forward(model: nn.Module, layers: Iterable[str]) -> None:
    """After the next forward of ``model``, raise ConfigError if a layer in ``layers`` was not called.

    Args:
        model: The model whose forward must reach the layers.
        layers: Qualified names of the adapter layers inside ``model``.
    """
    names = list(dict.fromkeys(layers))
    if not names:
        return
    called: set[str] = set()
    handles = [
        model.get_submodule(name).register_forward_pre_hook(lambda *_, name=name: called.add(name))
        for name in names
    ]

    def verify(*_: object) -> None:
        for handle in handles:
            handle.remove()
        unreached = [name for name in names if name not in called]
        if unreached:
            raise ConfigError(
                f"{len(unreached)} adapter layers are never called by {type(model).__name__}'s "
                f"forward (e.g. {unreached[:3]}): the model reads their weights directly, so "
                "the adapter would have no effect; adapt other targets"
            )

    handles.append(model.register_forward_hook(verify))
