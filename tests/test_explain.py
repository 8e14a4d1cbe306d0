"""Attention rollout and Grad-CAM (medpeft explain) on tiny timm ViTs and every other backbone family."""

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import medpeft
from medpeft.adapters_io.folder import save_adapter
from medpeft.backbones.base import CapabilityError
from medpeft.cli import main
from medpeft.errors import ConfigError
from medpeft.explain import explain_batch, heatmap, rollout
from medpeft.fusion.pooled import PooledClassifier
from medpeft.model import ModelSpec, build_model
from tests.test_api import FAMILIES, train_step

TINY = dict(patch_size=4, embed_dim=32, depth=2, num_heads=2)
GRID = 4  # 16 px images, 4 px patches


def _spec(method: str = "lora", modalities=("image",)) -> ModelSpec:
    return ModelSpec("vit_tiny_patch16_224", 2, method=method, img_size=16, modalities=modalities,
                     model_kwargs=dict(TINY))


def _batch(images: dict[str, torch.Tensor]) -> dict:
    n = next(iter(images.values())).shape[0]
    return {"images": images, "present": torch.ones(n, len(images), dtype=torch.bool)}


def test_rollout_rows_are_distributions_and_follow_attention():
    torch.manual_seed(0)
    random = [torch.randn(2, 3, 5, 5).softmax(-1) for _ in range(3)]
    torch.testing.assert_close(rollout(random).sum(-1), torch.ones(2, 5))
    # Every token attends only to token 3: the [CLS] row keeps 0.5^L on itself, the rest on token 3.
    focused = torch.zeros(1, 2, 5, 5)
    focused[..., 3] = 1
    flow = rollout([focused] * 3)[0, 0]
    torch.testing.assert_close(flow, torch.tensor([0.125, 0, 0, 0.875, 0]))


@pytest.mark.parametrize("method", ["linear", "lora"])
def test_maps_of_one_modality(method):
    torch.manual_seed(0)
    model = build_model(_spec(method))
    images = torch.randn(3, 3, 16, 16)
    scores, chosen, maps = explain_batch(model, _batch({"image": images}), "multiclass")
    with torch.no_grad():  # explaining runs the same model: same scores, fused attention restored
        expected = model(images).softmax(-1).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert chosen.tolist() == expected.argmax(1).tolist()
    assert all(block.attn.fused_attn for block in model.blocks)
    for sample in maps:
        flow, cam = sample.rollout["image"], sample.grad_cam["image"]
        assert flow.shape == cam.shape == (GRID, GRID)
        assert 0 < flow.sum() < 1 and flow.min() > 0  # the rest stays on the [CLS] token
        assert cam.min() >= 0 and cam.max() > 0  # a frozen backbone (linear probe) gets a map too


@pytest.mark.parametrize(("fusion", "method"), [("auto", "mora"), ("late", "lora")])
def test_maps_of_two_modalities(fusion, method):
    torch.manual_seed(0)
    spec = _spec(method, ("a", "b"))  # MoRA wraps blocks: their attention is found inside
    spec.fusion = fusion
    model = build_model(spec)
    batch = _batch({"a": torch.randn(2, 3, 16, 16), "b": torch.randn(2, 3, 16, 16)})
    _, _, maps = explain_batch(model, batch, "multiclass", target=1)
    for sample in maps:
        assert set(sample.rollout) == set(sample.grad_cam) == {"a", "b"}
        a, b = sample.rollout["a"].sum(), sample.rollout["b"].sum()
        if fusion == "auto":  # one token stream: both modalities' patches + [CLS] = one distribution
            assert 0.5 < a + b < 1
        else:  # one ViT per modality: a distribution each
            assert 0.5 < a < 1 and 0.5 < b < 1


def _patch_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images; class 1 has a bright 4x4 patch at a random grid cell (returned)."""
    images = torch.randn(n, 3, 16, 16, generator=generator) * 0.3
    labels = torch.randint(0, 2, (n,), generator=generator)
    cells = torch.randint(0, GRID, (n, 2), generator=generator)
    for i in torch.nonzero(labels).flatten().tolist():
        row, col = cells[i].tolist()
        images[i, :, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4] += 2.0
    return images, labels, cells


def test_rollout_finds_the_label_carrying_patch_after_a_tiny_training():
    torch.manual_seed(0)
    model = build_model(_spec("full"))
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), 3e-3)
    for _ in range(30):
        images, labels, _ = _patch_images(16, generator)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, labels, cells = _patch_images(48, generator)
    positive = labels == 1
    _, _, maps = explain_batch(model, _batch({"image": images[positive]}), "multiclass", target=1)
    peaks = [divmod(int(m.rollout["image"].argmax()), GRID) for m in maps]
    hits = np.mean([peak == tuple(cell) for peak, cell in zip(peaks, cells[positive].tolist())])
    assert hits >= 0.8  # untrained, the rollout peaks there for none of the samples
    # Grad-CAM's peak is there for 0-100% of the samples after this training, by seed: not asserted.


def test_explain_command_writes_overlays_and_json(tmp_path, capsys):
    torch.manual_seed(0)
    spec = _spec()
    adapter = save_adapter(build_model(spec), tmp_path / "adapter", spec, ["normal", "lesion"],
                           "multiclass", backbone_seed=0)
    image = tmp_path / "scan one.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    argv = ["explain", str(adapter), str(image), "--out", str(out), "--random-backbone"]
    assert main([*argv, "--target", "lesion"]) == 0
    assert "explained lesion" in capsys.readouterr().out
    (entry,) = json.loads((out / "explain.json").read_text())
    assert entry["explained"] == "lesion" and entry["prediction"] in ("normal", "lesion")
    assert sum(entry["scores"].values()) == pytest.approx(1.0)
    assert entry["maps"] == ["attention rollout", "Grad-CAM"] and entry["note"] is None
    assert (out / "scan_one_image.png").read_bytes()[:4] == b"\x89PNG"
    assert main([*argv, "--target", "lesions"]) == 2
    assert "did you mean 'lesion'" in capsys.readouterr().err


CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
FAMILIES_AND_CONVNEXT = {
    **{family: builder for family, (builder, _) in FAMILIES.items()},
    "timm_convnext": lambda: timm.create_model("convnext_tiny", pretrained=False, num_classes=0, **CONVNEXT),
}
# image size, and the grid of its maps: patches, or the last stage's map (stride 32)
SIZES = {"timm_vit": ((32, 32), (4, 4)), "timm_eva02": ((28, 28), (2, 2)), "timm_swin": ((64, 64), (2, 2)),
         "hf_vit": ((32, 48), (4, 6)), "hf_dinov2": ((48, 32), (6, 4)), "hf_clip": ((32, 32), (4, 4)),
         "open_clip": ((32, 32), (4, 4)), "timm_convnext": ((64, 96), (2, 3))}
NO_ATTENTION_MAPS = {"timm_eva02": "Eva (timm)", "timm_swin": "SwinTransformer (timm)",
                     "open_clip": "VisionTransformer (open_clip)", "timm_convnext": "ConvNeXt (timm)"}


def _adapted(family: str) -> medpeft.AdaptedModel:
    torch.manual_seed(0)
    targets = ("fc1", "fc2") if family == "timm_convnext" else ("q", "v")  # ConvNeXt has no attention
    return medpeft.adapt(FAMILIES_AND_CONVNEXT[family]().eval(), medpeft.LoraSettings(rank=2, targets=targets))


@pytest.mark.parametrize("family", FAMILIES_AND_CONVNEXT)
def test_every_family_gets_grad_cam_on_its_grid_and_rollout_where_it_has_attention_maps(family):
    (height, width), grid = SIZES[family]
    model = _adapted(family)
    images = torch.randn(3, 3, height, width, generator=torch.Generator().manual_seed(1))
    train_step(model.train(), images)  # the adapter moves: its maps are those of a trained adapter
    scores, _, maps = explain_batch(model.model, _batch({"image": images}), "multiclass")
    with torch.no_grad():  # explaining leaves the model as it was (attention kernels restored)
        torch.testing.assert_close(torch.as_tensor(scores), model(images).softmax(-1), atol=1e-5, rtol=0)
    for sample in maps:
        cam = sample.grad_cam["image"]
        assert cam.shape == grid and cam.min() >= 0
        heat = heatmap(cam, height, width)
        assert heat.shape == (height, width) and np.isfinite(heat).all() and heat.max() > heat.min()
        if family in NO_ATTENTION_MAPS:
            assert sample.rollout == {}
            assert sample.no_rollout == {"image": f"{NO_ATTENTION_MAPS[family]} has no attention maps"}
        else:
            assert sample.rollout["image"].shape == grid and 0 < sample.rollout["image"].sum() < 1


def _planted(n: int, cell: int, grid: int, generator: torch.Generator):
    """Noise images of grid x grid cells; class 1 has one bright cell (returned)."""
    images = torch.randn(n, 3, cell * grid, cell * grid, generator=generator) * 0.3
    labels = torch.randint(0, 2, (n,), generator=generator)
    cells = torch.randint(0, grid, (n, 2), generator=generator)
    for i in torch.nonzero(labels).flatten().tolist():
        row, col = cells[i].tolist()
        images[i, :, cell * row : cell * (row + 1), cell * col : cell * (col + 1)] += 2.0
    return images, labels, cells


@pytest.mark.parametrize(("family", "cell", "grid"), [("timm_convnext", 32, 3), ("open_clip", 8, 4)])
def test_grad_cam_finds_the_planted_cell_after_a_tiny_training(family, cell, grid):
    torch.manual_seed(0)
    model = PooledClassifier(FAMILIES_AND_CONVNEXT[family](), 2).train()  # fully trained
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), 3e-3)
    for _ in range(30):
        images, labels, _ = _planted(16, cell, grid, generator)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, labels, cells = _planted(48, cell, grid, generator)
    positive = labels == 1
    _, _, maps = explain_batch(model, _batch({"image": images[positive]}), "multiclass", target=1)
    peaks = [divmod(int(m.grad_cam["image"].argmax()), grid) for m in maps]
    hits = np.mean([peak == tuple(c) for peak, c in zip(peaks, cells[positive].tolist())])
    assert hits >= 0.8  # 89-100% over seeds 0-7 (ConvNeXt), 100% over seeds 0-3 (open_clip)


def test_a_backbone_without_a_feature_map_is_refused_naming_the_capability():
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, dynamic_img_size=True,
                            img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    model = medpeft.adapt(vit, medpeft.LoraSettings(rank=2))
    with pytest.raises(CapabilityError, match=r"^explain needs a backbone with a feature map \(capability "
                       r"feature_map: .*\); VisionTransformer \(timm\) has none$"):
        explain_batch(model.model, _batch({"image": torch.randn(1, 3, 32, 32)}), "multiclass")


def test_early_intervention_is_refused_in_one_line():
    spec = _spec("lora", ("a", "b"))
    spec.fusion = "early_intervention"
    batch = _batch({"a": torch.randn(1, 3, 16, 16), "b": torch.randn(1, 3, 16, 16)})
    with pytest.raises(ConfigError, match=r"^explain supports one image modality on any backbone, and timm "
                       r"ViT token concatenation or late fusion; this adapter builds EarlyIntervention$"):
        explain_batch(build_model(spec), batch, "multiclass")


def test_explain_command_on_a_convnext_adapter_says_there_is_no_rollout(tmp_path, capsys):
    torch.manual_seed(0)
    spec = ModelSpec("convnext_tiny", 2, settings=medpeft.LoraSettings(rank=2, targets=("fc1", "fc2")),
                     model_kwargs=dict(CONVNEXT))
    adapter = save_adapter(build_model(spec), tmp_path / "adapter", spec, ["normal", "lesion"],
                           "multiclass", backbone_seed=0)
    image = tmp_path / "scan.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    assert main(["explain", str(adapter), str(image), "--out", str(out)]) == 0
    note = "no attention rollout: ConvNeXt (timm) has no attention maps"
    assert capsys.readouterr().out.strip().endswith(f"{out / 'scan_image.png'} ({note})")
    (entry,) = json.loads((out / "explain.json").read_text())
    assert entry["maps"] == ["Grad-CAM"] and entry["note"] == note
    assert (out / "scan_image.png").read_bytes()[:4] == b"\x89PNG"
