"""The backbone interface: what fusion models and methods may ask of a vision foundation model.

A :class:`Backbone` is a *view* over a model built by its own library (timm,
transformers, open_clip): it owns nothing and renames nothing, so the native module
keeps its parameter names, its checkpoints and its forward. Methods find the layers
to adapt through it (attention projections by role, MLP linears, blocks in forward
order); fusion models ask it for tokens, one block at a time and pooled features.

One module per family implements it (``timm_vit``, ``timm_hier``, ``hf``,
``open_clip``) and registers itself with :func:`register_family`;
:func:`describe` picks the family of a module. A family whose forward reads a
weight directly instead of calling the Linear that holds it (``nn.MultiheadAttention``'s
packed ``in_proj_weight``, timm EVA's ``F.linear(x, qkv.weight, ...)``) rewrites that
call in :meth:`Backbone.prepare` so an adapter wrapped around the Linear reaches the
output; parameter names and outputs stay those of the library.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal, TypedDict

import torch
from torch import nn

from medpeft.errors import ConfigError

Role = Literal["q", "k", "v", "out"]
ROLES: tuple[Role, ...] = ("q", "k", "v", "out")
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


class ImageInput(TypedDict):
    """How a backbone's library prepares images for it (its pretraining preprocessing).

    Keys: ``size`` (square side in pixels), ``mean`` and ``std`` (RGB normalisation),
    ``interpolation`` (``bicubic``, ``bilinear`` or ``nearest``), ``crop`` (centre-crop
    fraction of the resized shorter side; 1.0: none).
    """

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop: float


@dataclass(frozen=True)
class Projection:
    """A Linear the model really calls, or a slice of its outputs.

    Attributes:
        module: Qualified name of the ``nn.Linear`` inside the backbone module.
        segment: ``(start, stop)`` output rows of that Linear (q, k or v of a fused
            ``qkv``); ``None`` for all of them.
    """

    module: str
    segment: tuple[int, int] | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a backbone offers beyond pooled features.

    Attributes:
        token_stream: One ``[B, N, width]`` sequence goes through every block
            (:meth:`Backbone.embed`, :meth:`Backbone.run_block`, :meth:`Backbone.pool`);
            needed by token-level methods and fusions (MoRA, prompts, early
            intervention, several modalities in one stream).
        cls_token: The first token is a class token.
        patch_grid: The tokens after the prefix are the patches of a 2-D grid.
        attention_maps: Attention weights can be read per block (attention rollout).
    """

    token_stream: bool
    cls_token: bool
    patch_grid: bool
    attention_maps: bool


class CapabilityError(ConfigError):
    """A method or fusion needs something the backbone does not have."""


class Backbone(ABC):
    """A vision foundation model seen through the operations medpeft needs.

    Args:
        module: The native model (a timm model, a transformers ``*Model``, an
            open_clip vision tower).
    """

    family: ClassVar[str]
    """Registry name of the family, e.g. ``timm_vit``."""
    library: ClassVar[str]
    """The library that builds and loads the module: ``timm``, ``transformers``, ``open_clip``."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @classmethod
    @abstractmethod
    def accepts(cls, module: nn.Module) -> bool:
        """Whether this family knows how to read ``module``."""

    @property
    @abstractmethod
    def width(self) -> int:
        """Width of the pooled features (:meth:`features`)."""

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities:
        """What the backbone offers besides pooled features."""

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: class token and register tokens (0 without a stream)."""
        return 0

    @abstractmethod
    def block_names(self) -> list[str]:
        """Qualified names of the transformer (or ConvNeXt) blocks, in forward order.

        Block ``i`` of a method's ``blocks=`` setting is ``block_names()[i]``: stages of
        hierarchical models are flattened, so ``blocks=[1]`` is the second block.
        """

    @abstractmethod
    def attention(self, index: int) -> dict[Role, Projection]:
        """The attention projections of block ``index`` by role (empty without attention)."""

    @abstractmethod
    def mlp(self, index: int) -> dict[str, Projection]:
        """The MLP Linears of block ``index``: ``fc1`` (in, packed gate+up for SwiGLU), ``fc2`` (out)."""

    @abstractmethod
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, width]``, equal to the library's own pooled output."""

    @abstractmethod
    def preprocessing(self) -> ImageInput:
        """The image preprocessing the module was pretrained with, as its library records it."""

    def prepare(self) -> None:
        """Make every :class:`Projection` a Linear the forward really calls (idempotent).

        Families whose forward reads weights directly override this; names of
        parameters and outputs do not change.
        """
        return None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, N, width]`` entering block 0: prefix tokens, then patch tokens."""
        raise self.missing("token stream")

    def run_block(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        """Block ``index`` applied to ``tokens`` ``[B, N, width]``."""
        raise self.missing("token stream")

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, width]`` of the tokens after the last block (final norm included)."""
        raise self.missing("token stream")

    def blocks(self) -> list[nn.Module]:
        """The block modules, in forward order."""
        return [self.module.get_submodule(name) for name in self.block_names()]

    def projections(self, index: int) -> Iterator[tuple[str, Projection]]:
        """Every attention projection and MLP Linear of block ``index``, by role name."""
        yield from self.attention(index).items()
        yield from self.mlp(index).items()

    def require(self, capability: str, user: str) -> None:
        """Raise :class:`CapabilityError` unless ``capabilities.<capability>`` holds.

        Args:
            capability: A field of :class:`Capabilities`, e.g. ``token_stream``.
            user: Who needs it, for the message (``method 'mora'``).
        """
        if not getattr(self.capabilities, capability):
            words = capability.replace("_", " ")
            raise CapabilityError(
                f"{user} needs a backbone with a {words}; {self.describe()} has none "
                "(see the capability table in docs/methods.md)"
            )

    def missing(self, what: str) -> CapabilityError:
        """The error for an operation the family does not offer."""
        return CapabilityError(f"{self.describe()} has no {what}")

    def describe(self) -> str:
        """``ClassName (library)`` for messages."""
        return f"{type(self.module).__name__} ({self.library})"


_FAMILIES: list[type[Backbone]] = []


def register_family(family: type[Backbone]) -> type[Backbone]:
    """Add a family (usable as a class decorator); later registrations are tried first."""
    _FAMILIES.insert(0, family)
    return family


def families() -> list[type[Backbone]]:
    """Registered families, in the order :func:`describe` tries them."""
    return list(_FAMILIES)


def describe(module: nn.Module) -> Backbone:
    """The :class:`Backbone` view of ``module``.

    Raises:
        ConfigError: no registered family reads this kind of module.
    """
    if isinstance(module, Backbone):
        return module
    for family in _FAMILIES:
        if family.accepts(module):
            return family(module)
    known = ", ".join(sorted({f.family for f in _FAMILIES})) or "none registered"
    raise ConfigError(
        f"medpeft cannot adapt a {type(module).__module__}.{type(module).__name__}: "
        f"not a backbone family it knows ({known})"
    )
