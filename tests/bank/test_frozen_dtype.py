"""A bank whose shared backbone holds its frozen layers in bf16 (``frozen_dtype``): adapters and
heads stay fp32 exactly as saved, the backbone takes about half the bytes."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from medpeft.adapters_io.config import WEIGHTS_NAME
from medpeft.adapters_io.folder import adapter_parameters
from medpeft.bank import AdapterBank
from medpeft.methods import get_method
from tests.bank.conftest import TASKS


def test_bf16_bank_loads_adapters_and_heads_in_fp32_as_saved(bank_dir, images):
    bank = AdapterBank.from_directory(bank_dir, frozen_dtype=torch.bfloat16)
    fp32_bytes = AdapterBank.from_directory(bank_dir).memory()["backbone_bytes"]

    bank.predict(list(TASKS), [{"image": x} for x in images[:len(TASKS)]])

    for name in TASKS:
        saved = load_file(str(bank_dir / name / WEIGHTS_NAME))
        loaded = adapter_parameters(bank.model, name, get_method("lora"))
        assert set(loaded) == set(saved)
        for key, value in saved.items():  # lora_A/B and the head: not rounded through bf16
            assert loaded[key].dtype == torch.float32 and torch.equal(loaded[key], value), key
    assert bank.model.blocks[0].attn.qkv.base.weight.dtype == torch.bfloat16
    assert bank.model.blocks[0].mlp.fc2.weight.dtype == torch.bfloat16
    assert bank.memory()["backbone_bytes"] < 0.6 * fp32_bytes

