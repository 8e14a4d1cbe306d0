"""Medical (and general) vision foundation models by name: ``uni``, ``rad-dino``, ``retfound``...

A :class:`Preset` is data: the library that builds the model (``kind``), the name that
library knows it by, the exact architecture arguments (so ``pretrained=False`` builds it
offline, at random), the hub repository its weights come from, its input size and
normalisation, the pooling its authors use, and where each fact was read. A preset name
works wherever a backbone name does (``medpeft.adapt("uni", ...)``, ``model.backbone: uni``);
:func:`resolve` turns it into the library's name and arguments, the user's own
``model.kwargs`` winning over the preset's.

timm presets carry ``pretrained_cfg_overlay``: timm's own record of the hub repository
(``hf_hub_id``) and preprocessing, so ``pretrained=True`` downloads through timm's hub code
and the adapter records the preset's input size, mean and std. Two poolings timm has no
``global_pool`` for are medpeft's ``pooling`` argument (see
:func:`medpeft.backbones.timm_build.apply_pooling`): ``cls_mean`` (Virchow) and ``mae_avg``
(RETFound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medpeft.errors import ConfigError, did_you_mean

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclass(frozen=True)
class Preset:
    """One foundation model, as its authors publish it.

    Attributes:
        name: The preset's name (``uni``).
        kind: Library that builds it: ``timm``, ``transformers`` or ``open_clip``.
        backbone: The library's name for it (timm architecture, transformers hub id,
            open_clip ``hf-hub:`` id).
        hub_id: Hugging Face repository of the weights.
        architecture: In words (``ViT-L/16``).
        model_kwargs: Library arguments of the exact architecture (timm ``create_model``
            arguments; transformers config fields with ``model_type``; open_clip
            ``vision_cfg``).
        img_size: Recommended input side in pixels.
        mean: Normalisation mean (RGB).
        std: Normalisation std (RGB).
        modality: What it was pretrained on / is meant for.
        licence: Licence and access terms.
        gated: The hub repository needs an accepted access request and a login.
        paper: Reference of the model.
        params_m: Published parameter count of the image encoder (millions), or None.
        params_source: Where ``params_m`` is published (or why there is none).
        pooling: The pooled features, in words.
        sources: Where the architecture, preprocessing and pooling facts were read.
        notes: Deviations and caveats.
    """

    name: str
    kind: str
    backbone: str
    hub_id: str
    architecture: str
    model_kwargs: dict[str, Any]
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    modality: str
    licence: str
    gated: bool
    paper: str
    params_m: float | None
    params_source: str
    pooling: str
    sources: tuple[str, ...]
    notes: str = ""
    interpolation: str = "bicubic"
    crop_pct: float = 1.0

    def library_kwargs(self) -> dict[str, Any]:
        """The preset's library arguments; timm's carry the hub repository and preprocessing."""
        kwargs = dict(self.model_kwargs)
        if self.kind == "timm":
            kwargs["pretrained_cfg_overlay"] = self.pretrained_cfg()
        return kwargs

    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's ``pretrained_cfg`` fields for this model (hub repository, input, normalisation)."""
        return {
            "hf_hub_id": self.hub_id,
            "input_size": [3, self.img_size, self.img_size],
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "num_classes": 0,
        }

    def access_hint(self) -> str:
        """How to get the weights (one sentence)."""
        page = f"https://huggingface.co/{self.hub_id}"
        if self.gated:
            return (f"{self.hub_id} is gated: request access at {page}, then log in "
                    "(`hf auth login` or HF_TOKEN)")
        return f"the weights are at {page}"


def _uni_kwargs() -> dict[str, Any]:
    return {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True}


def _virchow_kwargs(reg_tokens: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "mlp_layer": "SwiGLUPacked",
        "act_layer": "SiLU", "dynamic_img_size": True, "global_pool": "token", "pooling": "cls_mean",
    }
    if reg_tokens:
        kwargs["reg_tokens"] = reg_tokens
    return kwargs


def _dinov2(size: str, letter: str, params: float) -> Preset:
    arch = f"vit_{size}_patch14_dinov2"
    label = letter if letter == "g" else letter.upper()
    return Preset(
        name=f"dinov2-{letter}", kind="timm", backbone=arch, hub_id=f"timm/{arch}.lvd142m",
        architecture=f"ViT-{label}/14 (DINOv2)", model_kwargs={"img_size": 518}, img_size=518,
        mean=IMAGENET[0], std=IMAGENET[1], modality="general (natural images, LVD-142M)",
        licence="Apache-2.0 (timm's hub card says cc-by-nc-4.0 for older copies); not gated", gated=False,
        paper="Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, TMLR 2024, arXiv:2304.07193",
        params_m=params, params_source=f"timm model card, https://huggingface.co/timm/{arch}.lvd142m (Params (M))",
        pooling="CLS token after the final norm (timm global_pool token)",
        sources=(f"https://huggingface.co/timm/{arch}.lvd142m/blob/main/config.json",
                 "https://github.com/facebookresearch/dinov2 (README: 21M/86M/300M/1,100M, rounded)"),
        notes="The DINOv2 README rounds the counts (ViT-S 21M is 22.1M with position embeddings at 518 px).",
    )


_PRESETS: tuple[Preset, ...] = (
    Preset(
        name="rad-dino", kind="transformers", backbone="microsoft/rad-dino", hub_id="microsoft/rad-dino",
        architecture="ViT-B/14 (DINOv2), transformers Dinov2Model",
        model_kwargs={"model_type": "dinov2", "hidden_size": 768, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "patch_size": 14, "image_size": 518, "mlp_ratio": 4,
                      "layerscale_value": 1.0, "layer_norm_eps": 1e-6, "qkv_bias": True},
        img_size=518, mean=(0.5307, 0.5307, 0.5307), std=(0.2583, 0.2583, 0.2583),
        modality="chest X-ray", licence="MIT (earlier revisions: MSRLA); not gated", gated=False,
        paper="Pérez-García et al., Exploring scalable medical image encoders beyond text supervision, "
              "Nature Machine Intelligence 2025, arXiv:2311.13668",
        params_m=86.5, params_source="model.safetensors of 346 MB in float32 (346e6 / 4 bytes), "
                                     "https://huggingface.co/microsoft/rad-dino/tree/main",
        pooling="CLS token after the final layernorm (Dinov2Model pooler_output)",
        sources=("https://huggingface.co/microsoft/rad-dino-maira-2/commit/f45ff57afb374a10dd243951eb6e8f0c1e7ceeef "
                 "(config.json of the same encoder: hidden 768, 12 layers, 12 heads, patch 14, image 518, "
                 "layerscale 1.0, eps 1e-6)",
                 "https://huggingface.co/microsoft/rad-dino/tree/main",
                 "https://huggingface.co/microsoft/rad-dino/blob/refs%2Fpr%2F9/preprocessor_config.json "
                 "(BitImageProcessor: mean 0.5307, std 0.2583, bicubic resize of the shorter side to 518, "
                 "centre crop 518)"),
    ),
    Preset(
        name="biomedclip", kind="open_clip", backbone="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        hub_id="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        architecture="ViT-B/16 timm trunk + linear projection to 512 (open_clip TimmModel)",
        model_kwargs={"embed_dim": 512, "vision_cfg": {"timm_model_name": "vit_base_patch16_224",
                                                       "timm_model_pretrained": False, "timm_pool": "",
                                                       "timm_proj": "linear", "image_size": 224}},
        img_size=224, mean=OPENAI_CLIP[0], std=OPENAI_CLIP[1],
        modality="biomedical figures (PMC-15M): radiology, pathology, microscopy, dermatology",
        licence="MIT; not gated", gated=False,
        paper="Zhang et al., BiomedCLIP, NEJM AI 2025, arXiv:2303.00915",
        params_m=None, params_source="no published count of the image tower found",
        pooling="CLS token of the trunk, then the 512-d projection (open_clip image features)",
        sources=("https://huggingface.co/ZiyueWang/biomedclip/blob/main/config.json (copy of "
                 "open_clip_config.json: timm vit_base_patch16_224, timm_pool '', timm_proj linear, 224, OpenAI mean/std)",
                 "https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224/tree/main"),
        notes="Offline, only the vision tower is built (the text tower needs BiomedBERT from the hub).",
    ),
    Preset(
        name="uni", kind="timm", backbone="vit_large_patch16_224", hub_id="MahmoodLab/UNI",
        architecture="ViT-L/16, LayerScale", model_kwargs=_uni_kwargs(), img_size=224,
        mean=IMAGENET[0], std=IMAGENET[1], modality="pathology (H&E tiles, 20x)",
        licence="CC-BY-NC-ND-4.0, academic research only; gated", gated=True,
        paper="Chen et al., Towards a general-purpose foundation model for computational pathology, "
              "Nature Medicine 2024, doi:10.1038/s41591-024-02857-3",
        params_m=303.3, params_source="ViT-L/16 encoder as timm publishes it, "
                                     "https://huggingface.co/timm/vit_large_patch16_224.orig_in21k (Params (M) 303.3); "
                                     "UNI adds 49k LayerScale gammas; the paper says 0.3B",
        pooling="CLS token after the final norm (timm default)",
        sources=("https://github.com/mahmoodlab/UNI/blob/42715efc11722a496e0a67f3369505a8f277206c/uni/get_encoder/get_encoder.py",
                 "https://github.com/mahmoodlab/UNI/blob/main/README_old.md (hf-hub:MahmoodLab/uni, init_values, ImageNet mean/std)"),
    ),
    Preset(
        name="uni2-h", kind="timm", backbone="vit_giant_patch14_224", hub_id="MahmoodLab/UNI2-h",
        architecture="ViT-H/14, 8 registers, SwiGLU, LayerScale (depth 24, width 1536, 24 heads)",
        model_kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                      "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True,
                      "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU", "reg_tokens": 8, "dynamic_img_size": True},
        img_size=224, mean=IMAGENET[0], std=IMAGENET[1], modality="pathology (H&E and IHC tiles)",
        licence="CC-BY-NC-ND-4.0, academic research only; gated", gated=True,
        paper="Chen et al., Nature Medicine 2024 (UNI); UNI2-h released 01/2025 (github.com/mahmoodlab/UNI)",
        params_m=None, params_source="no published count found (the build has 681.4M)",
        pooling="CLS token after the final norm (registers skipped)",
        sources=("https://github.com/mahmoodlab/UNI/blob/42715efc11722a496e0a67f3369505a8f277206c/uni/get_encoder/get_encoder.py",
                 "https://github.com/mahmoodlab/UNI/blob/42715efc11722a496e0a67f3369505a8f277206c/README.md"),
    ),
    Preset(
        name="virchow", kind="timm", backbone="vit_huge_patch14_224", hub_id="paige-ai/Virchow",
        architecture="ViT-H/14, SwiGLU, LayerScale", model_kwargs=_virchow_kwargs(0), img_size=224,
        mean=IMAGENET[0], std=IMAGENET[1], modality="pathology (H&E tiles)",
        licence="Apache-2.0 with additional terms (institutional e-mail); gated", gated=True,
        paper="Vorontsov et al., A foundation model for clinical-grade computational pathology and rare "
              "cancers detection, Nature Medicine 2024, arXiv:2309.07778",
        params_m=632.0, params_source="https://arxiv.org/html/2408.00738v3 (Virchow and Virchow2: ViT-H/14, "
                                      "632 million parameters)",
        pooling="[CLS, mean of the patch tokens] after the final norm: 2560 features (the model card's embedding)",
        sources=("https://huggingface.co/paige-ai/Virchow/blob/main/README.md",
                 "hub config.json model_args as copied in public code: vit_huge_patch14_224, mlp_ratio 5.3375, "
                 "init_values 1e-5, SwiGLUPacked, SiLU, global_pool ''"),
    ),
    Preset(
        name="virchow2", kind="timm", backbone="vit_huge_patch14_224", hub_id="paige-ai/Virchow2",
        architecture="ViT-H/14, 4 registers, SwiGLU, LayerScale", model_kwargs=_virchow_kwargs(4), img_size=224,
        mean=IMAGENET[0], std=IMAGENET[1], modality="pathology (H&E and IHC tiles, 5x-40x)",
        licence="CC-BY-NC-ND-4.0; gated", gated=True,
        paper="Zimmermann et al., Virchow2: Scaling Self-Supervised Mixed Magnification Models in Pathology, "
              "arXiv:2408.00738",
        params_m=632.0, params_source="https://arxiv.org/html/2408.00738v3 (abstract: 632 million parameters)",
        pooling="[CLS, mean of the patch tokens] after the final norm, registers skipped: 2560 features",
        sources=("https://arxiv.org/html/2408.00738v3", "https://huggingface.co/paige-ai/Virchow2",
                 "hub config.json model_args as copied in public code: reg_tokens 4, mlp_ratio 5.3375, "
                 "SwiGLUPacked, SiLU, init_values 1e-5"),
    ),
    Preset(
        name="prov-gigapath", kind="timm", backbone="vit_giant_patch14_dinov2", hub_id="prov-gigapath/prov-gigapath",
        architecture="ViT-g (patch 16, depth 40, width 1536, 24 heads), LayerScale; tile encoder",
        model_kwargs={"img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
                      "init_values": 1e-5, "mlp_ratio": 5.33334},
        img_size=224, mean=IMAGENET[0], std=IMAGENET[1], modality="pathology (H&E and IHC tiles)",
        licence="Apache-2.0, research use only; gated", gated=True,
        paper="Xu et al., A whole-slide foundation model for digital pathology from real-world data, "
              "Nature 2024, doi:10.1038/s41586-024-07441-w",
        params_m=1130.0, params_source="https://bio.rodeo/models/prov-gigapath (tile encoder ViT-g/14, "
                                       "~1.13 billion parameters); secondary source",
        pooling="CLS token after the final norm",
        sources=("https://github.com/prov-gigapath/prov-gigapath/blob/09d8e876afb98a1dda01cc531b1087c58fffc9f7/README.md "
                 "(timm hf_hub:prov-gigapath/prov-gigapath; resize 256, crop 224, ImageNet mean/std)",
                 "hub config.json model_args as copied in public code: vit_giant_patch14_dinov2, img_size 224, "
                 "patch_size 16, embed_dim 1536, depth 40, num_heads 24, init_values 1e-5, mlp_ratio 5.33334"),
        crop_pct=0.875,
    ),
    Preset(
        name="retfound", kind="timm", backbone="vit_large_patch16_224", hub_id="YukunZhou/RETFound_mae_natureCFP",
        architecture="ViT-L/16 (MAE); RETFound_mae_natureOCT for OCT",
        model_kwargs={"img_size": 224, "global_pool": "avg", "fc_norm": False, "pooling": "mae_avg"},
        img_size=224, mean=IMAGENET[0], std=IMAGENET[1], modality="ophthalmology: colour fundus (CFP) or OCT",
        licence="CC-BY-NC-4.0 (code); weights gated on the hub", gated=True,
        paper="Zhou et al., A foundation model for generalizable disease detection from retinal images, "
              "Nature 2023, doi:10.1038/s41586-023-06555-x",
        params_m=303.3, params_source="ViT-L/16 encoder as timm publishes it, "
                                      "https://huggingface.co/timm/vit_large_patch16_224.orig_in21k (Params (M) 303.3)",
        pooling="mean of the patch tokens through a new LayerNorm (weight 1, bias 0); the pretrained final "
                "norm is not used (RETFound models_vit global_pool=True)",
        sources=("https://github.com/rmaphoh/RETFound_MAE/blob/897d71c8c9b1d0ca1984370d4c4352722017b80a/models_vit.py",
                 "https://github.com/rmaphoh/RETFound_MAE/blob/897d71c8c9b1d0ca1984370d4c4352722017b80a/main_finetune.py "
                 "(global_pool default True, checkpoint['model'], input_size 224 in the README)",
                 "https://github.com/rmaphoh/RETFound_MAE/blob/897d71c8c9b1d0ca1984370d4c4352722017b80a/util/datasets.py "
                 "(ImageNet mean/std, bicubic, crop 224/256)"),
        crop_pct=0.875,
        notes="The hub file is RETFound_mae_natureCFP.pth ({'model': encoder + MAE decoder}); pass it with weights=.",
    ),
    Preset(
        name="phikon", kind="transformers", backbone="owkin/phikon", hub_id="owkin/phikon",
        architecture="ViT-B/16 (iBOT), transformers ViTModel",
        model_kwargs={"model_type": "vit", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                      "intermediate_size": 3072, "patch_size": 16, "image_size": 224, "layer_norm_eps": 1e-12,
                      "qkv_bias": True},
        img_size=224, mean=IMAGENET[0], std=IMAGENET[1], modality="pathology (H&E tiles, TCGA)",
        licence="Owkin non-commercial licence; not gated", gated=False,
        paper="Filiot et al., Scaling Self-Supervised Learning for Histopathology with Masked Image Modeling, "
              "medRxiv 2023.07.21.23292757",
        params_m=85.8, params_source="https://huggingface.co/1aurent/vit_base_patch16_224.owkin_pancancer "
                                     "(timm port of the same weights: Params 85.8M)",
        pooling="CLS token of last_hidden_state (after the final layernorm)",
        sources=("https://huggingface.co/owkin/phikon/blame/33aa2cf410c83b54a0da9eaf2ed3ff685fd49c7a/config.json",),
    ),
    _dinov2("small", "s", 22.1),
    _dinov2("base", "b", 86.6),
    _dinov2("large", "l", 304.4),
    _dinov2("giant", "g", 1136.5),
    Preset(
        name="clip-b16", kind="timm", backbone="vit_base_patch16_clip_224", hub_id="timm/vit_base_patch16_clip_224.openai",
        architecture="ViT-B/16 (OpenAI CLIP image tower)", model_kwargs={"img_size": 224}, img_size=224,
        mean=OPENAI_CLIP[0], std=OPENAI_CLIP[1], modality="general (image-text pairs)",
        licence="MIT (OpenAI CLIP); not gated", gated=False,
        paper="Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021",
        params_m=86.2, params_source="https://huggingface.co/timm/vit_base_patch16_clip_224.openai (Params (M) 86.2, "
                                     "with the 512-d projection as head; the tower without it has 85.8M)",
        pooling="CLS token after the final norm (the projection is replaced by the task head)",
        sources=("https://huggingface.co/timm/vit_base_patch16_clip_224.openai",),
    ),
)

PRESETS: dict[str, Preset] = {preset.name: preset for preset in _PRESETS}


def backbone_presets() -> dict[str, Preset]:
    """Every preset by name."""
    return dict(PRESETS)


def find_preset(name: str | None) -> Preset | None:
    """The preset called ``name`` (case-insensitive), or None for any other backbone name."""
    return PRESETS.get(name.lower()) if name else None


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ConfigError with the known names otherwise."""
    preset = find_preset(name)
    if preset is None:
        raise ConfigError(f"model.backbone: no preset {name!r}; presets: {', '.join(PRESETS)}"
                          f"{did_you_mean(name, list(PRESETS))}")
    return preset


def resolve(name: str, model_kwargs: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``(library name, library kwargs)`` of a preset name, the given kwargs winning; other names unchanged."""
    preset = find_preset(name)
    if preset is None:
        return name, dict(model_kwargs or {})
    return preset.backbone, {**preset.library_kwargs(), **(model_kwargs or {})}


def preset_kind(name: str | None, kind: str | None, default: str = "timm") -> str:
    """The library of backbone ``name``: its preset's; else ``kind`` or ``default``.

    Raises:
        ConfigError: ``kind`` names another library than the preset's.
    """
    preset = find_preset(name)
    if preset is None:
        return kind or default
    if kind not in (None, preset.kind):
        raise ConfigError(f"model.kind: {kind!r} does not fit the preset {preset.name!r}, a {preset.kind} model; "
                          "leave model.kind out")
    return preset.kind
