"""Export a LoRA adapter in Hugging Face PEFT's LoRA format.

PEFT sees a q+v adapter as one rank-2r LoRA on the fused ``qkv``: ``lora_A`` is
``[A_q; A_v]`` and ``lora_B`` holds ``B_q`` in the q rows / first r columns and
``B_v`` in the v rows / last r columns, zeros elsewhere; ``lora_alpha = 2r * scale``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from medpeft.adapters_io.config import CONFIG_NAME, WEIGHTS_NAME
from medpeft.atomic import atomic_folder, atomic_write_text
from medpeft.backbones.weights import write_state_dict
from medpeft.errors import ConfigError
from medpeft.heads import HEAD_NAME, head_of
from medpeft.methods.lora.attach import lora_layers
from medpeft.methods.lora.layer import LoRALinear

_PEFT_PREFIX = "base_model.model."


def export_peft(model: nn.Module, out_dir: str | Path, adapter_name: str = "default") -> Path:
    """Write adapter ``adapter_name`` in Hugging Face PEFT's LoRA format.

    The folder loads with ``peft.PeftModel.from_pretrained(timm_model, out_dir)``
    on a timm model with the same backbone weights and head size.
    """
    layers = {n: layer for n, layer in lora_layers(model).items() if adapter_name in layer.lora_A}
    if not layers:
        raise ConfigError(f"model has no LoRA adapter named {adapter_name!r}")
    tensors: dict[str, torch.Tensor] = {}
    ranks, alphas = {}, {}
    for name, layer in layers.items():
        a, b = peft_pair(layer, adapter_name)
        tensors[f"{_PEFT_PREFIX}{name}.lora_A.weight"] = a
        tensors[f"{_PEFT_PREFIX}{name}.lora_B.weight"] = b
        ranks[name] = a.shape[0]
        alphas[name] = a.shape[0] * layer.scaling[adapter_name]
    for key, value in head_of(model, adapter_name).state_dict().items():
        tensors[f"{_PEFT_PREFIX}{HEAD_NAME}.{key}"] = value
    dropout = getattr(next(iter(layers.values())).lora_dropout[adapter_name], "p", 0.0)
    config = _peft_config(model, ranks, alphas, dropout)
    with atomic_folder(out_dir) as folder:  # weights and config together or not at all
        write_state_dict(folder / WEIGHTS_NAME, tensors)
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return Path(out_dir)


def peft_pair(layer: LoRALinear, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter of a layer as a plain LoRA pair: ``A (S*r, in)``, ``B (out, S*r)``.

    Segment ``s`` of B lands in its output rows and in columns ``[s*r:(s+1)*r]``.
    """
    a = layer.lora_A[adapter_name].detach().cpu()
    return a.flatten(0, 1).contiguous(), layer.dense_B(adapter_name).detach().cpu().contiguous()


def _peft_config(
    model: nn.Module, ranks: dict[str, int], alphas: dict[str, float], dropout: float
) -> dict[str, object]:
    """PEFT ``LoraConfig`` fields; per-layer ranks/alphas that differ go to the patterns."""
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": getattr(model, "pretrained_cfg", {}).get("architecture"),
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": _peft_targets(model, list(ranks)),
        "modules_to_save": [HEAD_NAME],
        "rank_pattern": {re.escape(n): r for n, r in ranks.items() if r != rank},
        "alpha_pattern": {re.escape(n): a for n, a in alphas.items() if a != alpha},
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
    }


def _peft_targets(model: nn.Module, names: list[str]) -> list[str]:
    """Short leaf names (``qkv``) when PEFT would match exactly ``names``, else full names."""
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    wrapped = [n + "." for n in lora_layers(model)]
    matched = {
        n
        for n, _ in model.named_modules()
        if n.rsplit(".", 1)[-1] in leaves and not any(n.startswith(w) for w in wrapped)
    }
    return leaves if matched == set(names) else sorted(names)
