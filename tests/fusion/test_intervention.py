"""Early intervention: token count and position, masking of missing references, gate and loss."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from medpeft.errors import ConfigError, DataError
from medpeft.fusion.intervention import (
    EarlyIntervention,
    EIOutput,
    InterventionProjector,
    criterion,
    ei_loss,
    pair_name,
)

MODS = ("axial", "coronal", "sagittal")
TINY = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _vit(seed: int, classes: int = 3):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", num_classes=classes, **TINY).eval()


def _model(mods=MODS, classes: int = 3) -> EarlyIntervention:
    model = EarlyIntervention(
        {m: _vit(i, classes) for i, m in enumerate(mods)},
        {m: _vit(10 + i, classes) for i, m in enumerate(mods)},
    ).eval()
    torch.manual_seed(99)
    with torch.no_grad():
        model.gate.weight.normal_()
    return model


def _images(mods=MODS, batch: int = 2, k: int = 1, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 3, 16, 16) if k == 1 else (batch, k, 3, 16, 16)
    return {m: torch.randn(*shape, generator=g) for m in mods}


def test_projector_shape_is_the_papers():
    projector = InterventionProjector(768)
    assert [type(layer).__name__ for layer in projector] == ["LayerNorm", "Linear", "GELU", "Linear"]
    assert (projector[1].in_features, projector[1].out_features, projector[3].out_features) == (768, 384, 768)


def test_three_modalities_each_get_two_tokens_at_the_end_without_position_embedding():
    model = _model()
    images = _images()
    seen = {}

    def grab(name):
        def hook(module, args, kwargs):
            seen[name] = (args[0].detach().clone(), kwargs["attn_mask"])
        return hook

    handles = [model.targets[m].blocks[0].register_forward_pre_hook(grab(m), with_kwargs=True) for m in MODS]
    with torch.no_grad():
        model({"images": images})
        for m in MODS:
            vit = model.targets[m]
            tokens, mask = seen[m]
            patches = vit.norm_pre(vit._pos_embed(vit.patch_embed(images[m])))
            assert tokens.shape[1] == patches.shape[1] + 2  # [CLS] + 4 patches + 2 intervention tokens
            torch.testing.assert_close(tokens[:, : patches.shape[1]], patches)
            for j, r in enumerate(r for r in MODS if r != m):
                ref = model.references[r]
                cls = ref.forward_head(ref.forward_features(images[r]), pre_logits=True)
                expected = model.projectors[pair_name(r, m)](cls)
                torch.testing.assert_close(tokens[:, patches.shape[1] + j], expected)
            assert mask.all()
    for handle in handles:
        handle.remove()


def test_a_missing_reference_is_as_if_its_token_were_absent():
    model = _model()
    vit = model.views["targets.axial"]
    x = _images()["axial"]
    tokens = torch.randn(2, 2, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        masked = model.intervened(vit, x, tokens, torch.tensor([[True, False], [True, False]]))
        dropped = model.intervened(vit, x, tokens[:, :1], torch.tensor([[True], [True]]))
        kept = model.intervened(vit, x, tokens, torch.ones(2, 2, dtype=torch.bool))
    torch.testing.assert_close(masked, dropped, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(masked, kept, atol=1e-4)


def test_gate_fuses_detached_logits_and_drops_missing_modalities():
    model = _model()
    present = torch.tensor([[True, True, True], [True, False, True]])
    with torch.no_grad():
        out = model({"images": _images(), "present": present})
    assert out.targets.shape == out.references.shape == (3, 2, 3) and out.gate.shape == (2, 3)
    alpha = out.gate.softmax(1)
    assert alpha[1, 1] == 0 and torch.allclose(alpha.sum(1), torch.ones(2))
    torch.testing.assert_close(out.fused, torch.einsum("bm,mbc->bc", alpha, out.targets))
    with pytest.raises(DataError, match="no modality"):
        model({"images": _images(), "present": torch.tensor([[True] * 3, [False] * 3])})


def test_several_images_per_modality_mean_the_target_and_max_pool_the_reference():
    model = _model()
    one = _images(k=1)
    two = {m: torch.stack([x, x], 1) for m, x in one.items()}
    with torch.no_grad():
        a, b = model({"images": one}), model({"images": two})
    torch.testing.assert_close(a.targets, b.targets, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.references, b.references, atol=1e-5, rtol=1e-5)


def test_gate_target_is_the_best_present_modality_weighted_by_priors():
    labels = torch.tensor([0, 1])
    targets = torch.tensor([
        [[5.0, 0.0], [0.0, 5.0]],   # modality 0: right for both
        [[0.0, 9.0], [0.0, 9.0]],   # modality 1: right for sample 1 only, very sure
    ])
    gate = torch.zeros(2, 2, requires_grad=True)
    present = torch.tensor([[True, True], [True, True]])
    out = EIOutput(torch.zeros(2, 2), targets, targets, gate, present)
    ei_loss(out, labels, "multiclass", weights=(0, 0, 0, 1)).backward()
    expected_choice = torch.tensor([0, 1])  # the lower CE: modality 0 for sample 0, 1 for sample 1
    grad_expected = (gate.detach().softmax(1) - F.one_hot(expected_choice, 2).float()) / 2
    torch.testing.assert_close(gate.grad, grad_expected)
    gate.grad = None
    ei_loss(out, labels, "multiclass", priors=[1.0, 0.0], weights=(0, 0, 0, 1)).backward()
    grad_prior = (gate.detach().softmax(1) - F.one_hot(torch.tensor([1, 1]), 2).float()) / 2  # prior 0 wins
    torch.testing.assert_close(gate.grad, grad_prior)


def test_loss_is_the_weighted_sum_of_the_papers_terms():
    model = _model(classes=2)
    labels = torch.tensor([1, 0])
    out = model({"images": _images()})
    per_target = torch.stack([criterion(t, labels, "multiclass") for t in out.targets], 1)
    per_ref = torch.stack([criterion(r, labels, "multiclass") for r in out.references], 1)
    choice = per_target.argmin(1)
    expected = (
        F.cross_entropy(out.fused, labels)
        + per_target.sum(1).mean()
        + 0.3 * per_ref.sum(1).mean()
        + 0.1 * F.cross_entropy(out.gate, choice)
    )
    torch.testing.assert_close(ei_loss(out, labels, "multiclass"), expected)
    public = ei_loss(out, labels, "multiclass", public_gate=True, weights=(0, 0, 0, 1))
    torch.testing.assert_close(public, F.cross_entropy(out.gate.softmax(1), choice))
    multilabel = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert torch.isfinite(ei_loss(out, multilabel, "multilabel"))


def test_the_fused_term_trains_only_the_gate():
    model = _model(classes=2).train()
    out = model({"images": _images()})
    ei_loss(out, torch.tensor([0, 1]), "multiclass", weights=(1, 0, 0, 0)).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {"gate.weight", "gate.bias"}


def test_needs_two_modalities_with_both_copies():
    with pytest.raises(ConfigError, match=">= 2 modalities"):
        EarlyIntervention({"a": _vit(0)}, {"a": _vit(1)})
    with pytest.raises(ConfigError, match="target and a reference"):
        EarlyIntervention({"a": _vit(0), "b": _vit(1)}, {"a": _vit(2)})


def test_late_fusion_ignores_the_images_of_a_missing_modality():
    from medpeft.fusion.late import LateFusion

    model = LateFusion({m: _vit(i) for i, m in enumerate(MODS)}, num_classes=3).eval()
    images, other = _images(seed=0), _images(seed=1)
    present = torch.tensor([[True, False, True], [True, True, True]])
    swapped = {**images, "coronal": other["coronal"]}
    with torch.no_grad():
        a = model({"images": images, "present": present})
        b = model({"images": swapped, "present": present})
    torch.testing.assert_close(a[0], b[0])  # coronal missing: its image does not count
    assert not torch.allclose(a[1], b[1])
    assert model.head.in_features == 3 * 32
