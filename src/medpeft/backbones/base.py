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

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import ClassVar, Literal, TypedDict

import torch
from torch import nn

from medpeft.errors import ConfigError

Role = Literal["q", "k", "v", "out"]
PatchEdit = Callable[[torch.Tensor], torch.Tensor]
"""Maps tokens ``[B, N, width]`` to new ones of the same shape."""
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
        attention_maps: Attention weights can be read per block (attention rollout),
            :meth:`Backbone.attention_weights`.
        feature_map: A block's output lies on a 2-D grid over the image (the patches of
            a token stream, or a hierarchical model's feature map), :meth:`Backbone.feature_map`;
            Grad-CAM reads it.
        masked_stream: :meth:`Backbone.run_block` takes a key mask (tokens other tokens
            must not attend to; early intervention's missing references).
    """

    token_stream: bool
    cls_token: bool
    patch_grid: bool
    attention_maps: bool
    feature_map: bool = False
    masked_stream: bool = False


def preset_input(module: nn.Module) -> ImageInput | None:
    """The preprocessing a preset recorded on a transformers or open_clip module (timm's
    ``pretrained_cfg`` fields, :mod:`medpeft.backbones.presets`), or None."""
    cfg = getattr(module, "pretrained_cfg", None)
    if not cfg:
        return None
    return ImageInput(size=cfg["input_size"][-1], mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      interpolation=cfg["interpolation"], crop=cfg["crop_pct"])


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
    def token_width(self) -> int:
        """Width of the tokens of the stream (differs from :attr:`width` when pooling projects)."""
        return self.width

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

    @property
    def features_call(self) -> str:
        """The library's own expression whose value :meth:`features` is (written beside exported heads)."""
        return "model(images)"

    def size_problem(self, size: int) -> str | None:
        """Why the backbone cannot take square images of ``size`` px, starting with its name
        (``ViTModel (transformers) takes multiples of its 16 px patches``); None: it can."""
        return None

    @abstractmethod
    def preprocessing(self) -> ImageInput:
        """The image preprocessing the module was pretrained with, as its library records it."""

    def prepare(self) -> None:
        """Make every :class:`Projection` a Linear the forward really calls (idempotent).

        Families whose forward reads weights directly override this; names of
        parameters and outputs do not change.
        """
        return None

    def embed(
        self, images: torch.Tensor, patches: PatchEdit | None = None, positioned: PatchEdit | None = None
    ) -> torch.Tensor:
        """Tokens ``[B, N, width]`` entering block 0: prefix tokens, then patch tokens.

        Args:
            images: ``[B, 3, H, W]``.
            patches: Applied to the patch embeddings ``[B, P, width]`` before position
                embeddings are added (e.g. learned tokens replacing missing images).
            positioned: Applied to all tokens ``[B, N, width]`` once position embeddings are
                added, before the norm some models apply ahead of block 0 (e.g. CLIP's
                ``norm_pre``; modality embeddings).
        """
        raise self.missing("token stream")

    def run_block(self, index: int, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Block ``index`` applied to ``tokens`` ``[B, N, width]``.

        Args:
            index: Block index in forward order.
            tokens: The stream.
            key_mask: ``Bool[B, N]``, False for tokens no token may attend to (needs
                ``capabilities.masked_stream``).
        """
        raise self.missing("token stream")

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, width]`` of the tokens after the last block (final norm included)."""
        raise self.missing("token stream")

    @property
    def pools_class_token(self) -> bool:
        """The pooled features read the first token alone (not a mean or attention pooling of the tokens)."""
        return False

    def attention_weights(self) -> AbstractContextManager[list[torch.Tensor]]:
        """A context in which every forward appends each block's attention weights
        ``[B, heads, T, T]`` (softmax over the keys, in the autograd graph) to the list it yields.

        Outputs are the same as outside it; whatever the family switches (a fused kernel
        that hides the weights) is restored on exit.
        """
        raise self.missing("attention maps")

    def feature_map(self, activation: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """A block's input or output as a map ``[B, C, h, w]`` over an image of ``image_size``.

        Token streams with a patch grid: the patch tokens (prefix dropped) on the grid of
        the image's aspect ratio. Hierarchical families override this.
        """
        if not (self.capabilities.token_stream and self.capabilities.patch_grid):
            raise self.missing("feature map")
        patches = activation[:, self.num_prefix_tokens :]
        rows, cols = grid_shape(patches.shape[1], *image_size)
        return patches.transpose(1, 2).unflatten(2, (rows, cols))

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

    def refuse_mask(self, key_mask: torch.Tensor | None) -> None:
        """CapabilityError if a key mask is given to a family whose blocks take none."""
        if key_mask is not None:
            raise self.missing("masked token stream (its blocks take no attention mask)")

    def describe(self) -> str:
        """``ClassName (library)`` for messages: the library's class, also under medpeft's
        subclass of it (:func:`~medpeft.fusion.single.as_single_stream`)."""
        native = next(c for c in type(self.module).__mro__ if not c.__module__.startswith("medpeft."))
        return f"{native.__name__} ({self.library})"


def grid_shape(count: int, height: int, width: int) -> tuple[int, int]:
    """Rows and columns of ``count`` square patches tiling a ``height`` x ``width`` image.

    Raises:
        ConfigError: ``count`` patches do not tile an image of that aspect ratio.
    """
    rows = max(1, round(math.sqrt(count * height / width)))
    if count % rows:
        raise ConfigError(f"{count} patch tokens do not tile a {height}x{width} image in a grid")
    return rows, count // rows


def native_name(module: nn.Module) -> str | None:
    """The name a module's library knows it by: timm's architecture, a transformers ``name_or_path``."""
    cfg = getattr(module, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("architecture"):
        return cfg["architecture"]
    config = getattr(module, "config", None)
    return getattr(config, "_name_or_path", None) or None


def patch_problem(model: str, size: int, patch: int, pads: bool = False) -> str | None:
    """``model`` takes multiples of its ``patch`` px patches only (unless it ``pads`` the image)."""
    if size % patch == 0 or pads:
        return None
    return f"{model} takes multiples of its {patch} px patches (the rest of each row and column would be dropped)"


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


def edit_conv_patches(patches: PatchEdit) -> Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor]:
    """A forward hook applying ``patches`` to a patch convolution's ``[B, width, h, w]`` output."""

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        tokens = patches(output.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(output.shape)

    return hook
