"""A bank whose shared backbone holds its frozen layers in bf16 or int8 (``frozen_dtype``): adapters
and heads stay fp32 exactly as saved, the backbone takes about half (a third) of the bytes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from medpeft.adapters_io.config import WEIGHTS_NAME
from medpeft.adapters_io.folder import adapter_parameters
from medpeft.bank import AdapterBank, BankGroup
from medpeft.frozen_dtype import is_quantized
from medpeft.methods import get_method
from tests.bank.conftest import TASKS, write_method_task
from tests.methods.conftest import _tiny_vit


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



def test_int8_bank_quantizes_the_shared_backbone_and_answers_as_the_fp32_one(bank_dir, images):
    names = list(TASKS) * 2
    inputs = [{"image": x} for x in images]
    bank, fp32 = AdapterBank.from_directory(bank_dir, frozen_dtype=torch.int8), AdapterBank.from_directory(bank_dir)

    served, expected = bank.predict(names, inputs), fp32.predict(names, inputs)  # mixed-task batches

    for got, want in zip(served, expected):  # int8 rows (1/127 of the row's largest) and bf16 matmuls
        assert torch.allclose(got, want, atol=0.05)
    assert any(not torch.equal(got, want) for got, want in zip(served, expected))
    for name in TASKS:
        saved = load_file(str(bank_dir / name / WEIGHTS_NAME))
        loaded = adapter_parameters(bank.model, name, get_method("lora"))
        assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], v) for k, v in saved.items())
    assert is_quantized(bank.model.blocks[0].attn.qkv.base.weight) and is_quantized(bank.model.blocks[0].mlp.fc2.weight)
    assert bank.autocast_dtype == torch.bfloat16
    # int8 values and one scale per row; the tiny ViT's embeddings and norms stay fp32
    assert bank.memory()["backbone_bytes"] < 0.4 * fp32.memory()["backbone_bytes"]


def test_a_fully_fine_tuned_model_keeps_its_fp32_weights_in_an_int8_group(tmp_path, images):
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny_vit(seed=5).state_dict().items()}, str(weights))
    write_method_task(tmp_path / "bank", "full", "full", weights, seed=1)

    group = BankGroup.from_directory(tmp_path / "bank", frozen_dtype=torch.int8)
    (probabilities,) = group.predict(["full"], [{"image": images[0]}])

    (bank,) = group.banks
    assert {p.dtype for p in bank.model.parameters()} == {torch.float32}
    assert not any(is_quantized(p) for p in bank.model.parameters())
    assert probabilities.shape == (3,) and float(probabilities.sum()) == pytest.approx(1.0, abs=1e-5)
