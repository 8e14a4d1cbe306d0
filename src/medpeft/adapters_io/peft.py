"""Export a LoRA or DoRA adapter in Hugging Face PEFT's format, loadable onto the native model.

``peft.PeftModel.from_pretrained(native, folder)`` puts the adapter on the model medpeft
adapted, as its own library builds it (a timm model, a transformers encoder, an open_clip
vision tower), and gives the same features. Module names are the native model's own
(medpeft's ``backbone.`` prefix is dropped).

- A Linear adapted whole (transformers ``q_proj``/``v_proj``, MLP Linears, timm
  ``attn.proj``): one PEFT LoRA on it; ``target_modules`` are the Linears' names.
- A fused ``qkv`` adapted on segments (timm ViT and Swin: q and v). PEFT has no segments,
  so it sees one rank-2r LoRA on ``qkv``: ``lora_A`` is ``[A_q; A_v]`` and ``lora_B`` holds
  ``B_q`` in the q rows / first r columns and ``B_v`` in the v rows / last r columns, zeros
  elsewhere; ``lora_alpha = 2r * scale``.
- open_clip's ``nn.MultiheadAttention`` (which medpeft runs as
  :class:`~medpeft.backbones.open_clip.PackedAttention`): PEFT's LoRA for
  ``MultiheadAttention`` on ``attn``, medpeft's pair on the packed q/k/v projection and a
  zero pair on ``out_proj``. An adapted ``out_proj`` is refused: PEFT 0.21 adds its update
  twice (huggingface/peft pull request 3774).
- DoRA: ``use_dora: true`` and a ``lora_magnitude_vector`` per Linear over all its output
  rows: medpeft's magnitudes on the adapted rows, the base weight's row norms elsewhere
  (a scale of exactly 1: those rows are unchanged, as in medpeft). PEFT has no DoRA on
  ``nn.MultiheadAttention``.

The head: where the native model has a classifier (timm: ``head``, Swin and ConvNeXt
``head.fc``) it is listed in ``modules_to_save``, so build the native model with the task's
number of classes. transformers and open_clip encoders have none: the head is written
beside as ``head.safetensors`` + ``head.json`` (:mod:`medpeft.adapters_io.head_file`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.models.eva import EvaAttention
from torch import nn

from medpeft.adapters_io.config import CONFIG_NAME, WEIGHTS_NAME
from medpeft.adapters_io.head_file import task_linear, write_head
from medpeft.atomic import atomic_folder, atomic_write_text
from medpeft.backbones.base import Backbone, native_name
from medpeft.backbones.open_clip import PackedAttention
from medpeft.backbones.timm_build import classifier_prefixes
from medpeft.backbones.weights import write_state_dict
from medpeft.errors import ConfigError
from medpeft.fusion.pooled import PooledClassifier
from medpeft.fusion.single import SingleStream
from medpeft.heads import head_of
from medpeft.methods.dora.layer import DoraLinear
from medpeft.methods.lora.attach import lora_layers
from medpeft.methods.lora.layer import LoRALinear

PEFT_METHODS = ("lora", "dora")
"""Methods whose adapters have a PEFT equivalent."""
_PEFT_PREFIX = "base_model.model."
_MAGNITUDE = "lora_magnitude_vector"
_MHA_OUT = "base_layer.out_proj."  # PEFT's LoRA of an nn.MultiheadAttention's out_proj


@dataclass(frozen=True)
class PeftModule:
    """One module PEFT wraps: its tensors (keys relative to the module), rank and alpha."""

    tensors: dict[str, torch.Tensor]
    rank: int
    alpha: float


def native_view(model: nn.Module) -> Backbone:
    """The family view of a one-image model's backbone (its ``module`` is the native model).

    Raises:
        ConfigError: the model holds more than one image backbone and a head (several
            modalities, fusion layers, ViLT).
    """
    if not isinstance(model, (SingleStream, PooledClassifier)):
        raise ConfigError(
            f"export needs a model of one image backbone and a head; a {type(model).__name__} holds "
            "more (several modalities or fusion layers)"
        )
    return next(iter(model.backbone_views().values()))


def export_peft(
    model: nn.Module,
    out_dir: str | Path,
    adapter_name: str = "default",
    labels: Sequence[str] | None = None,
    task: str | None = None,
) -> Path:
    """Write adapter ``adapter_name`` in Hugging Face PEFT's LoRA format (DoRA: ``use_dora``).

    The folder loads with ``peft.PeftModel.from_pretrained(native, out_dir)`` on the native
    model with the same backbone weights (timm: and the task's number of classes).

    Args:
        model: A medpeft model holding the adapter (``AdaptedModel.model``, or one built
            by :func:`medpeft.model.build_model`).
        out_dir: Folder to write.
        adapter_name: The adapter to export.
        labels: Names of the head's outputs, for ``head.json`` (libraries without a classifier).
        task: ``multiclass`` or ``multilabel``, for ``head.json``.

    Raises:
        ConfigError: no LoRA/DoRA adapter of that name, or a layer PEFT cannot put it on.
    """
    view = native_view(model)
    native = view.module
    layers = {n: layer for n, layer in lora_layers(native).items() if adapter_name in layer.lora_A}
    if not layers:
        raise ConfigError(f"model has no LoRA or DoRA adapter named {adapter_name!r}")
    modules = peft_modules(native, layers, adapter_name)
    tensors = {f"{_PEFT_PREFIX}{name}.{key}": t for name, m in modules.items() for key, t in m.tensors.items()}
    head = task_linear(head_of(model, adapter_name))
    classifier = native_classifier(view)
    if classifier is not None:
        tensors.update({f"{_PEFT_PREFIX}{classifier}.{k}": v for k, v in head.state_dict().items()})
    dropout = getattr(next(iter(layers.values())).lora_dropout[adapter_name], "p", 0.0)
    use_dora = any(isinstance(layer, DoraLinear) for layer in layers.values())
    config = _peft_config(native, modules, classifier, dropout, use_dora)
    with atomic_folder(out_dir) as folder:  # weights, config and head together or not at all
        if classifier is None:
            write_head(folder, head, view, labels, task)
        write_state_dict(folder / WEIGHTS_NAME, tensors)
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return Path(out_dir)


def native_classifier(view: Backbone) -> str | None:
    """Name of the native model's classifier Linear (timm's ``head``, ``head.fc``); None without one."""
    if view.library != "timm":
        return None
    return classifier_prefixes(view.module)[0].removesuffix(".")


def peft_modules(native: nn.Module, layers: Mapping[str, LoRALinear], adapter_name: str) -> dict[str, PeftModule]:
    """The PEFT modules of an adapter by name in the native model (an MHA gathers its two Linears)."""
    modules: dict[str, PeftModule] = {}
    attentions: dict[str, dict[str, LoRALinear]] = {}
    for name, layer in layers.items():
        parent_name, _, leaf = name.rpartition(".")
        parent = native.get_submodule(parent_name)
        if isinstance(parent, PackedAttention):
            attentions.setdefault(parent_name, {})[leaf] = layer
            continue
        _check_native_calls(parent, leaf, name)
        modules[name] = linear_module(layer, adapter_name)
    for name, parts in attentions.items():
        modules[name] = attention_module(native.get_submodule(name), parts, adapter_name, name)
    return modules


def _check_native_calls(parent: nn.Module, leaf: str, name: str) -> None:
    """ConfigError if the native forward never calls the Linear PEFT would wrap.

    timm's ``EvaAttention`` with a fused ``qkv`` and q/v biases computes
    ``F.linear(x, qkv.weight, bias)`` (medpeft switches it to ``qkv(x)`` + biases).
    """
    if isinstance(parent, EvaAttention) and leaf == "qkv" and parent.q_bias is not None:
        raise ConfigError(
            f"{name}: timm's EvaAttention with q/v biases computes qkv with F.linear(x, qkv.weight) "
            "and never calls the Linear PEFT would wrap; export the merged model (--merged) instead"
        )


def linear_module(layer: LoRALinear, adapter_name: str) -> PeftModule:
    """A LoRA (DoRA) layer as one PEFT LoRA on its Linear."""
    a, b = peft_pair(layer, adapter_name)
    tensors = {"lora_A.weight": a, "lora_B.weight": b}
    if isinstance(layer, DoraLinear):
        tensors[_MAGNITUDE] = peft_magnitude(layer, adapter_name)
    return PeftModule(tensors, a.shape[0], a.shape[0] * layer.scaling[adapter_name])


def peft_pair(layer: LoRALinear, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter of a layer as a plain LoRA pair: ``A (S*r, in)``, ``B (out, S*r)``.

    Segment ``s`` of B lands in its output rows and in columns ``[s*r:(s+1)*r]``.
    """
    a = layer.lora_A[adapter_name].detach().cpu()
    return a.flatten(0, 1).contiguous(), layer.dense_B(adapter_name).detach().cpu().contiguous()


def peft_magnitude(layer: DoraLinear, adapter_name: str) -> torch.Tensor:
    """PEFT's magnitude over all output rows: the adapter's on its rows, the base row norms elsewhere."""
    with torch.no_grad():
        norms = layer.weight.norm(dim=1)
        adapted = layer.lora_magnitude[adapter_name].flatten().to(norms)
        return norms.index_copy(0, layer.segment_index, adapted).cpu()


def attention_module(
    attention: PackedAttention, parts: Mapping[str, LoRALinear], adapter_name: str, name: str
) -> PeftModule:
    """PEFT's LoRA of an ``nn.MultiheadAttention``: medpeft's pair on the packed q/k/v projection
    and a zero pair of the same rank on ``out_proj`` (PEFT adapts both).

    Raises:
        ConfigError: DoRA (PEFT has none for this module), or an adapted ``out_proj``, whose
            update PEFT 0.21 adds twice (huggingface/peft pull request 3774).
    """
    if any(isinstance(layer, DoraLinear) for layer in parts.values()):
        raise ConfigError(
            f"{name}: PEFT has no DoRA for nn.MultiheadAttention (open_clip attention); export the "
            "merged model (--merged) instead, or adapt only the MLP (targets fc1, fc2)"
        )
    if "out_proj" in parts:
        raise ConfigError(
            f"{name}.out_proj: PEFT adds the LoRA update of an nn.MultiheadAttention's out_proj twice "
            "(huggingface/peft pull request 3774); export the merged model (--merged) instead, or "
            "adapt q, k, v and the MLP only"
        )
    inner = linear_module(parts["in_proj"], adapter_name)
    out = attention.out_proj
    zeros = {
        f"{_MHA_OUT}lora_A.weight": torch.zeros(inner.rank, out.in_features),
        f"{_MHA_OUT}lora_B.weight": torch.zeros(out.out_features, inner.rank),
    }
    return PeftModule({**inner.tensors, **zeros}, inner.rank, inner.alpha)


def _peft_config(
    native: nn.Module, modules: Mapping[str, PeftModule], classifier: str | None, dropout: float, use_dora: bool
) -> dict[str, object]:
    """PEFT ``LoraConfig`` fields; per-module ranks/alphas that differ go to the patterns."""
    rank = Counter(m.rank for m in modules.values()).most_common(1)[0][0]
    alpha = Counter(m.alpha for m in modules.values()).most_common(1)[0][0]
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": native_name(native),
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": _peft_targets(native, list(modules)),
        "modules_to_save": [classifier] if classifier else None,
        "rank_pattern": {re.escape(n): m.rank for n, m in modules.items() if m.rank != rank},
        "alpha_pattern": {re.escape(n): m.alpha for n, m in modules.items() if m.alpha != alpha},
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": use_dora,
    }


def _peft_targets(native: nn.Module, names: list[str]) -> list[str]:
    """Short leaf names (``qkv``) when PEFT would match exactly ``names``, else full names."""
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    inside = tuple(f"{n}." for n in lora_layers(native))  # a wrapper's base Linear
    matched = {
        n for n, _ in native.named_modules() if n.rsplit(".", 1)[-1] in leaves and not n.startswith(inside)
    }
    return leaves if matched == set(names) else sorted(names)
