"""The ``timm_hier`` family: hierarchical timm models (Swin Transformer, ConvNeXt).

Their stages change the width and resolution of the tokens, so there is no single
token stream: methods adapt their Linears and read pooled features only. Blocks are
numbered over all stages in forward order (``blocks=[1]`` is the second block).

Swin's window attention sees ``B * windows`` rows, a sample's windows one after
another (timm's ``window_partition``); :meth:`TimmHierarchical.prepare` gives each
``WindowAttention`` a subclass (:class:`WindowRouted`, names and outputs unchanged) that
repeats the call's per-sample routing for every window, so a mixed-task batch reaches
each sample's adapter there too.
"""

from __future__ import annotations

import torch
from timm.models.convnext import ConvNeXt
from timm.models.swin_transformer import SwinTransformer, WindowAttention
from torch import nn

from medpeft.backbones.base import Capabilities, Projection, Role, register_family
from medpeft.backbones.timm_vit import TimmBackbone, fused_qkv, mlp_linears
from medpeft.routing import Routing, current, route


class WindowRouted:
    """Mixin put in front of a Swin ``WindowAttention``'s class: per-sample routing per window."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        with route(**per_window(current(), x.shape[0])):
            return super().forward(x, mask)


def per_window(routing: Routing, rows: int) -> dict:
    """The per-sample fields of ``routing`` (adapters, presence) repeated for ``rows`` rows that hold
    each sample's windows one after another; fields of the whole batch stay as they are."""
    fields: dict = {}
    if isinstance(routing.adapters, tuple) and len(routing.adapters) != rows:
        windows = rows // len(routing.adapters)
        fields["adapters"] = tuple(name for name in routing.adapters for _ in range(windows))
    if routing.presence is not None and routing.presence.shape[0] != rows:
        fields["presence"] = routing.presence.repeat_interleave(rows // routing.presence.shape[0], 0)
    return fields


_ROUTED: dict[type, type] = {}


@register_family
class TimmHierarchical(TimmBackbone):
    """timm ``SwinTransformer`` and ``ConvNeXt``.

    Swin block ``layers.{s}.blocks.{b}``: q/k/v are thirds of the window attention's
    ``attn.qkv``, out is ``attn.proj``, the MLP Linears ``mlp.fc1``/``mlp.fc2``. ConvNeXt
    block ``stages.{s}.blocks.{b}``: no attention; ``mlp.fc1``/``mlp.fc2`` are Linears
    (channels-last blocks, timm's default) or 1x1 convolutions (``conv_mlp=True``),
    which no method adapts: such blocks have no MLP Linears.
    """

    family = "timm_hier"
    reads = (SwinTransformer, ConvNeXt)

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        if isinstance(module, SwinTransformer):
            return all(isinstance(getattr(stage.blocks[0], "attn", None), WindowAttention) for stage in module.layers)
        return isinstance(module, ConvNeXt)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            token_stream=False, cls_token=False, patch_grid=False, attention_maps=False, feature_map=True
        )

    def feature_map(self, activation: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """A block's output as it is (ConvNeXt: ``[B, C, h, w]``), or Swin's ``[B, h, w, C]`` channels first."""
        return activation.permute(0, 3, 1, 2) if isinstance(self.module, SwinTransformer) else activation

    def block_names(self) -> list[str]:
        stages = "layers" if isinstance(self.module, SwinTransformer) else "stages"
        return [
            f"{stages}.{s}.blocks.{b}"
            for s, stage in enumerate(getattr(self.module, stages))
            for b in range(len(stage.blocks))
        ]

    def attention(self, index: int) -> dict[Role, Projection]:
        if not isinstance(self.module, SwinTransformer):
            return {}
        name = f"{self.block_names()[index]}.attn"
        attn = self.module.get_submodule(name)
        return {**fused_qkv(f"{name}.qkv", attn.qkv), "out": Projection(f"{name}.proj")}

    def mlp(self, index: int) -> dict[str, Projection]:
        name = f"{self.block_names()[index]}.mlp"
        return mlp_linears(name, self.module.get_submodule(name))

    def prepare(self) -> None:
        """Give every Swin window attention the :class:`WindowRouted` subclass of its class."""
        for block in self.blocks() if isinstance(self.module, SwinTransformer) else ():
            base = type(block.attn)
            if not issubclass(base, WindowRouted):
                if base not in _ROUTED:
                    _ROUTED[base] = type(f"WindowRouted{base.__name__}", (WindowRouted, base), {})
                block.attn.__class__ = _ROUTED[base]
