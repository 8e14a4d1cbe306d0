"""The ``transformers`` family: Hugging Face vision encoders (Phikon, RAD-DINO, CLIP).

Reads the module layout of transformers 5.x (``q_proj``/``k_proj``/``v_proj`` Linears,
which 4.x called ``attention.attention.query`` ...); nothing here imports transformers,
so timm-only installs pay nothing for registering the family.

=============================  ==================  ==========================  ==============
class                          blocks              attention q/k/v, out        pooled features
=============================  ==================  ==========================  ==============
``ViTModel`` (Phikon)          ``layers.{i}``      ``attention.q_proj`` ...,   CLS of
                                                   ``attention.o_proj``        ``last_hidden_state``
``Dinov2Model`` (RAD-DINO),    ``encoder.layer``   ``attention.q_proj`` ...,   ``pooler_output``
``Dinov2WithRegistersModel``   ``.{i}``            ``attention.o_proj``        (normed CLS)
``CLIPVisionModel``            ``encoder.layers``  ``self_attn.q_proj`` ...,   ``pooler_output``
                               ``.{i}``            ``self_attn.out_proj``      (normed CLS)
=============================  ==================  ==========================  ==============

MLP: ``mlp.fc1``/``mlp.fc2``; DINOv2's SwiGLU (``use_swiglu_ffn``) has separate
``gate_proj``, ``up_proj`` and ``down_proj``, given as ``fc1_gate``, ``fc1`` and ``fc2``.

``ViTModel``'s ``pooler_output`` is a tanh dense layer trained for BERT-style next
sentence objectives, which ViT checkpoints such as Phikon do not train or use (Phikon's
features are the normed CLS token); the family therefore pools the CLS token of
``last_hidden_state`` (after the final layernorm), like DINOv2 and CLIP do.

Preprocessing (:meth:`TransformersBackbone.preprocessing`): the model's own
``preprocessor_config.json`` when its folder, or the hub cache for its hub id, holds one
(``medpeft`` fetches it with a pretrained model); else the defaults of the class's image
processor: ``ViTImageProcessor`` (mean/std 0.5, bilinear), that of ``facebook/dinov2-*``
(ImageNet mean/std, bicubic, a centre crop of 224 from 256), ``CLIPImageProcessor`` (CLIP
mean/std, bicubic), at the config's ``image_size``.

Images of any size multiple of the patch go through: the position embeddings are
interpolated (``interpolate_pos_encoding=True``; DINOv2 always interpolates). Attention
weights are read per block with eager attention (:meth:`TransformersBackbone.attention_weights`:
``model.set_attn_implementation("eager")``, the attention modules' second output).
A key mask (:meth:`TransformersBackbone.run_block`, early intervention) becomes the mask
``create_bidirectional_mask`` builds from a padding mask for the model's attention
implementation, so a masked token is as if absent for every other token.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medpeft.backbones.base import (
    CLIP_MEAN_STD,
    IMAGENET_MEAN_STD,
    Backbone,
    Capabilities,
    ImageInput,
    PatchEdit,
    Projection,
    Role,
    edit_conv_patches,
    patch_problem,
    preset_input,
    register_family,
)
from medpeft.errors import ConfigError

LIBRARY_PREFIX = "transformers."
PROCESSOR_FILE = "preprocessor_config.json"
HALF_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # the filters medpeft's transforms apply


@dataclass(frozen=True)
class Layout:
    """Where a transformers vision encoder keeps its parts.

    Attributes:
        layers: The ``nn.ModuleList`` of blocks.
        attention: The attention module inside a block.
        out: The attention output Linear inside ``attention``.
        final_norm: The layernorm after the last block.
        pre_norm: A layernorm between the embeddings and block 0 (CLIP's ``pre_layrnorm``).
        cls_pooled: Features are the CLS token of ``last_hidden_state`` rather than ``pooler_output``.
        interpolation_flag: ``forward`` and the embeddings take ``interpolate_pos_encoding``.
        patches: The patch embedding module; ``patch_conv``: it is a bare convolution
            (``[B, width, h, w]`` output) rather than a module giving ``[B, P, width]``.
        mean_std: Normalisation of the class's image processor by default.
        resample: Resize filter of that image processor.
        crop: Its centre crop as a fraction of the resized shorter side.
    """

    layers: str
    attention: str
    out: str
    final_norm: str = "layernorm"
    pre_norm: str | None = None
    cls_pooled: bool = False
    interpolation_flag: bool = False
    patches: str = "embeddings.patch_embeddings"
    patch_conv: bool = False
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] = IMAGENET_MEAN_STD
    resample: str = "bicubic"
    crop: float = 1.0


_DINOV2 = Layout(layers="encoder.layer", attention="attention", out="o_proj", crop=224 / 256)
LAYOUTS: dict[str, Layout] = {
    "ViTModel": Layout(
        layers="layers", attention="attention", out="o_proj", cls_pooled=True, interpolation_flag=True,
        mean_std=HALF_MEAN_STD, resample="bilinear",
    ),
    "Dinov2Model": _DINOV2,
    "Dinov2WithRegistersModel": _DINOV2,
    "CLIPVisionModel": Layout(
        layers="encoder.layers",
        attention="self_attn",
        out="out_proj",
        final_norm="post_layernorm",
        pre_norm="pre_layrnorm",
        interpolation_flag=True,
        patches="embeddings.patch_embedding",
        patch_conv=True,
        mean_std=CLIP_MEAN_STD,
    ),
}
SWIGLU_MLP = {"fc1_gate": "gate_proj", "fc1": "up_proj", "fc2": "down_proj"}
PLAIN_MLP = {"fc1": "fc1", "fc2": "fc2"}


@register_family
class TransformersBackbone(Backbone):
    """A transformers ``ViTModel``, ``Dinov2Model``, ``Dinov2WithRegistersModel`` or ``CLIPVisionModel``."""

    family = "transformers"
    library = "transformers"

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        self.layout = LAYOUTS[type(module).__name__]
        self._check_layout()

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        kind = type(module)
        return kind.__module__.startswith(LIBRARY_PREFIX) and kind.__name__ in LAYOUTS

    @property
    def width(self) -> int:
        return self.module.config.hidden_size

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            token_stream=True, cls_token=True, patch_grid=True, attention_maps=True, feature_map=True,
            masked_stream=True,
        )

    @property
    def num_prefix_tokens(self) -> int:
        """The CLS token and DINOv2's register tokens."""
        return 1 + getattr(self.module.config, "num_register_tokens", 0)

    @property
    def pools_class_token(self) -> bool:
        return True

    @contextlib.contextmanager
    def attention_weights(self) -> Iterator[list[torch.Tensor]]:
        """The model runs eager attention (restored on exit), whose attention modules return
        their weights as the second output; those are recorded."""
        weights: list[torch.Tensor] = []
        layers = [self.module.get_submodule(f"{name}.{self.layout.attention}") for name in self.block_names()]
        handles = [layer.register_forward_hook(lambda _m, _i, out: weights.append(out[1]))
                   for layer in layers]
        previous = self.module.config._attn_implementation
        self.module.set_attn_implementation("eager")
        try:
            yield weights
        finally:
            for handle in handles:
                handle.remove()
            self.module.set_attn_implementation(previous)

    def block_names(self) -> list[str]:
        count = len(self.module.get_submodule(self.layout.layers))
        return [f"{self.layout.layers}.{i}" for i in range(count)]

    def attention(self, index: int) -> dict[Role, Projection]:
        prefix = f"{self.block_names()[index]}.{self.layout.attention}"
        names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": self.layout.out}
        return {role: Projection(f"{prefix}.{name}") for role, name in names.items()}

    def mlp(self, index: int) -> dict[str, Projection]:
        prefix = f"{self.block_names()[index]}.mlp"
        mlp = self.module.get_submodule(prefix)
        names = SWIGLU_MLP if hasattr(mlp, "gate_proj") else PLAIN_MLP
        return {key: Projection(f"{prefix}.{name}") for key, name in names.items()}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        output = self.module(pixel_values=images, **self._interpolation())
        return output.last_hidden_state[:, 0] if self.layout.cls_pooled else output.pooler_output

    def preprocessing(self) -> ImageInput:
        """A preset's preprocessing, else the model's ``preprocessor_config.json`` if found, else
        its class's processor defaults."""
        preset = preset_input(self.module)
        if preset is not None:
            return preset
        layout = self.layout
        defaults = ImageInput(
            size=self.module.config.image_size, mean=layout.mean_std[0], std=layout.mean_std[1],
            interpolation=layout.resample, crop=layout.crop,
        )
        file = processor_file(self.module.config._name_or_path)
        if file is None:
            return defaults
        try:
            processor = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{file}: invalid JSON: {error}") from error
        return processor_input(processor, defaults)


    def size_problem(self, size: int) -> str | None:
        """Any multiple of the patch size (position embeddings are interpolated)."""
        return patch_problem(self.describe(), size, self.module.config.patch_size)


    @property
    def features_call(self) -> str:
        flag = ", interpolate_pos_encoding=True" if self.layout.interpolation_flag else ""
        output = "last_hidden_state[:, 0]" if self.layout.cls_pooled else "pooler_output"
        return f"model(pixel_values=images{flag}).{output}"

    def embed(
        self, images: torch.Tensor, patches: PatchEdit | None = None, positioned: PatchEdit | None = None
    ) -> torch.Tensor:
        """Patch tokens after CLS (and registers), positions interpolated to the image size."""
        pixels = images.to(self.module.dtype)
        hook = None
        if patches is not None:
            edit = edit_conv_patches(patches) if self.layout.patch_conv else lambda _m, _i, out: patches(out)
            hook = self.module.get_submodule(self.layout.patches).register_forward_hook(edit)
        try:
            tokens = self.module.embeddings(pixels, **self._interpolation())
        finally:
            if hook is not None:
                hook.remove()
        tokens = tokens if positioned is None else positioned(tokens)
        if self.layout.pre_norm is not None:
            tokens = self.module.get_submodule(self.layout.pre_norm)(tokens)
        return tokens

    def run_block(self, index: int, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One layer (transformers 5.x layers return the tensor); ``key_mask`` becomes the mask the
        model's attention implementation reads (eager: additive, sdpa: boolean), as the model's
        own forward builds it from a padding mask."""
        mask = None if key_mask is None else self._attention_mask(tokens, key_mask)
        return self.module.get_submodule(self.layout.layers)[index](tokens, mask)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final layernorm of the CLS token (a layernorm is per token, so norm-then-CLS is the same)."""
        return self.module.get_submodule(self.layout.final_norm)(tokens[:, 0])

    def _check_layout(self) -> None:
        """ConfigError unless the module has the transformers 5.x layout (4.x names differ)."""
        first = f"{self.layout.layers}.0.{self.layout.attention}.q_proj"
        try:
            self.module.get_submodule(first)
        except AttributeError:
            raise ConfigError(
                f"{self.describe()} has no module {first}: medpeft reads the module layout of "
                "transformers 5 (pip install 'transformers>=5')"
            ) from None

    def _attention_mask(self, tokens: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor | None:
        """transformers' bidirectional mask of ``key_mask`` for the model's attention implementation."""
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(self.module.config, tokens, key_mask.to(tokens.device))

    def _interpolation(self) -> dict[str, bool]:
        return {"interpolate_pos_encoding": True} if self.layout.interpolation_flag else {}


def processor_file(name_or_path: str) -> Path | None:
    """The ``preprocessor_config.json`` of a model folder, or of a hub id in the local hub cache."""
    if not name_or_path:
        return None
    folder = Path(name_or_path)
    if folder.is_dir():
        file = folder / PROCESSOR_FILE
        return file if file.is_file() else None
    from huggingface_hub import try_to_load_from_cache  # a dependency of transformers

    cached = try_to_load_from_cache(name_or_path, PROCESSOR_FILE)
    return Path(cached) if isinstance(cached, str) else None


def processor_input(processor: dict, defaults: ImageInput) -> ImageInput:
    """``defaults`` updated by an image processor's settings (``image_mean``, ``resample``, ``size``...)."""
    found = ImageInput(**defaults)
    if "image_mean" in processor and "image_std" in processor:
        found["mean"], found["std"] = tuple(processor["image_mean"]), tuple(processor["image_std"])
    found["interpolation"] = PIL_RESAMPLE.get(processor.get("resample"), defaults["interpolation"])
    resize, crop = processor.get("size"), processor.get("crop_size")
    side = _side(resize)
    if processor.get("do_center_crop") and _side(crop):
        found["size"] = _side(crop)
        found["crop"] = min(1.0, _side(crop) / side) if side else 1.0
    elif side:
        found["size"], found["crop"] = side, 1.0
    return found


def _side(size: object) -> int | None:
    """The side of an image processor's ``size`` or ``crop_size`` (``shortest_edge``, ``height``, a number)."""
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        return size.get("shortest_edge") or size.get("height")
    return None
