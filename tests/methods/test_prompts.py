"""Missing-aware prompts (MAP): per-pattern selection, insertion in ViLT, trainable set."""

from __future__ import annotations

import pytest
import torch
from transformers import ViltConfig

from medpeft.errors import ConfigError
from medpeft.methods import PromptSettings
from medpeft.methods.prompts.layer import MissingAwarePrompts, presence_patterns
from medpeft.model import ModelSpec, build_model

MIXED = [[1, 1], [1, 0], [0, 1], [1, 1]]
LAYERS, LENGTH = 2, 4


def _vilt_prompts(config: ViltConfig, placement: str):
    torch.manual_seed(0)
    spec = ModelSpec(
        None, 3, "prompts", PromptSettings(LAYERS, LENGTH, placement), kind="vilt",
        modalities=["image", "text"], vilt_config=config.to_dict(),
    )
    return build_model(spec).eval()


def _row(batch, i: int):
    if isinstance(batch, torch.Tensor):
        return batch[i : i + 1]
    return {k: _row(v, i) for k, v in batch.items()}


def test_patterns_complete_first_then_each_missing_kind():
    assert presence_patterns(2) == [(True, True), (True, False), (False, True)]
    assert len(presence_patterns(3)) == 7


def test_each_sample_gets_the_prompts_of_its_pattern():
    prompts = MissingAwarePrompts(2, dim=8, num_layers=3, length=4)
    present = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 0]], dtype=torch.bool)
    chosen = prompts(present)
    assert chosen.shape == (4, 3, 4, 8)
    expected_rows = [1, 0, 2, 1]  # complete, text-missing, image-missing
    for sample, row in enumerate(expected_rows):
        torch.testing.assert_close(chosen[sample], prompts.prompts[row])
    with pytest.raises(ValueError, match="no modality"):
        prompts(torch.zeros(1, 2, dtype=torch.bool))


def test_attention_prompts_need_an_even_length():
    with pytest.raises(ConfigError, match="even"):
        MissingAwarePrompts(2, dim=8, length=5, placement="attention")


@pytest.mark.parametrize("placement", ["input", "attention"])
def test_prompts_in_vilt_act_per_sample(vilt_config, vilt_batch, placement):
    model = _vilt_prompts(vilt_config, placement)
    batch = vilt_batch(MIXED)
    tokens, mask = model.embed(batch)
    _, num_prompts = model.encode(tokens, mask, model.prompts(batch["present"]))
    assert num_prompts == (LAYERS * LENGTH if placement == "input" else 0)
    with torch.no_grad():
        mixed = model.forward_features(batch)
        for i in range(len(MIXED)):
            single = model.forward_features(_row(batch, i))[0]
            torch.testing.assert_close(single, mixed[i], atol=1e-5, rtol=1e-4)
        model.prompts.prompts[2] += torch.randn(LAYERS, LENGTH, 32)  # image-missing: sample 2 only
        changed = (model.forward_features(batch) - mixed).abs().amax(1)
    assert changed[2] > 1e-5 and changed[[0, 1, 3]].eq(0).all()


@pytest.mark.parametrize("placement", ["input", "attention"])
def test_only_prompts_pooler_and_head_train(vilt_config, vilt_batch, placement):
    model = _vilt_prompts(vilt_config, placement).train()
    model(vilt_batch(MIXED)).sum().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    assert "prompts.prompts" in trainable
    assert all(n.startswith(("prompts.", "head.", "vilt.pooler.")) for n in trainable)
    grad = model.prompts.prompts.grad
    assert grad.abs().flatten(1).sum(1).gt(0).all()  # MIXED has every pattern


def test_prompts_need_a_vilt_backbone():
    spec = ModelSpec(
        "vit_tiny_patch16_224", 2, "prompts", PromptSettings(placement="input"), img_size=32,
        modalities=["a", "b"], model_kwargs=dict(depth=2, embed_dim=32, num_heads=2, patch_size=8),
    )
    with pytest.raises(ConfigError, match="vilt"):
        build_model(spec)
