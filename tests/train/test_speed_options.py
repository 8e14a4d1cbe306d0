"""Speed options: torch.compile, channels-last, fused attention, pinned memory, the timing
record and the decoded-image cache."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import medpeft.train.trainer as trainer
from medpeft.data.cache import ImageCache, eval_resize_side
from medpeft.data.dataset import Dataset
from medpeft.data.loader import build_loader
from medpeft.data.records import Record
from medpeft.data.transforms import build_transform
from medpeft.errors import DataError
from medpeft.methods import LoraSettings
from medpeft.model import ModelSpec, build_model
from medpeft.train import TrainSettings, fit
from medpeft.train.files import METRICS_CSV

CPU = dict(device="cpu", amp=False, epochs=1, lr=0.01)
TIMING = {"data_s", "compute_s", "eval_s", "checkpoint_s"}


def lora_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = dict(depth=1, embed_dim=32, num_heads=2, patch_size=8)
    return build_model(ModelSpec("vit_tiny_patch16_224", 2, "lora", LoraSettings(), img_size=16,
                                 model_kwargs=kwargs))


def images() -> DataLoader:
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return DataLoader(TensorDataset(x, torch.arange(8) % 2), batch_size=4)


def test_compiled_lora_trains_like_eager(tmp_path, monkeypatch):
    eager = fit(lora_vit(), images(), images(), "multiclass", TrainSettings(**CPU), tmp_path / "eager",
                progress=False)
    # aot_eager traces what inductor would (LoRA layers, routing context variables, autograd)
    # without generating C++, which takes minutes on a small CPU.
    compiled = []

    def compile_spy(net, **kwargs):
        compiled.append(net)
        return torch.compile(net, backend="aot_eager", **kwargs)

    monkeypatch.setattr(trainer, "_compiled", lambda net, on: compile_spy(net) if on else net)
    model = lora_vit()
    result = fit(model, images(), images(), "multiclass", TrainSettings(compile=True, **CPU),
                 tmp_path / "compiled", progress=False)
    assert len(compiled) == 2  # the training (wrapped) and the evaluation forward
    for key in ("train_loss", "val_loss", "auroc"):
        assert result.history[0][key] == pytest.approx(eager.history[0][key], abs=1e-5), key
    assert all(not name.startswith("_orig_mod") for name in model.state_dict())


def test_channels_last_fused_attention_and_timing(tmp_path):
    model = lora_vit()
    attention = model.blocks[0].attn
    attention.fused_attn = False
    plain = fit(lora_vit(), images(), images(), "multiclass", TrainSettings(**CPU), tmp_path / "a",
                progress=False)
    result = fit(model, images(), images(), "multiclass", TrainSettings(channels_last=True, **CPU),
                 tmp_path / "b", progress=False)
    assert attention.fused_attn is True
    assert model.patch_embed.proj.weight.is_contiguous(memory_format=torch.channels_last)
    assert result.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"], abs=1e-5)
    assert set(result.timing) == TIMING and all(v > 0 for v in result.timing.values())
    assert "data_s" not in (tmp_path / "b" / METRICS_CSV).read_text()  # the epoch log is unchanged


def test_pin_memory_follows_cuda():
    data = TensorDataset(torch.zeros(4, 1))
    assert build_loader(data, 2, train=False).pin_memory == torch.cuda.is_available()
    assert build_loader(data, 2, train=False, pin_memory=True).pin_memory


def _write(path, seed: int, size=(48, 40)) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _dataset(paths, crop_pct: float) -> Dataset:
    records = [Record(str(p), {"image": (str(p),)}, 0) for p in paths]
    transform = build_transform(24, crop_pct=crop_pct)
    return Dataset(records, ("image",), {"image": "image"}, {"image": transform})


def _pixels(dataset: Dataset) -> list[torch.Tensor]:
    return [dataset[i][0]["images"]["image"] for i in range(len(dataset))]


def test_cached_epochs_equal_uncached_and_a_changed_file_is_read_again(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for i, path in enumerate(paths):
        _write(path, i)
    crop_pct = 0.8
    cache = ImageCache(tmp_path / "cache", eval_resize_side(24, crop_pct), "bicubic")
    cached = _dataset(paths, crop_pct)
    cached.read_image = cache
    uncached = _pixels(_dataset(paths, crop_pct))
    first, second = _pixels(cached), _pixels(cached)  # a miss, then hits
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 3
    for a, b, c in zip(uncached, first, second):
        assert torch.equal(a, b) and torch.equal(b, c)
    assert np.load(next((tmp_path / "cache").rglob("*.npy"))).shape[0] == 30  # shorter side 40 -> 30

    _write(paths[1], seed=99)
    os.utime(paths[1], ns=(10**18, 10**18))  # a different modification time, whatever the clock
    changed = _pixels(cached)[1]
    assert not torch.equal(changed, second[1])
    assert torch.equal(changed, _pixels(_dataset(paths, crop_pct))[1])


def test_cache_keeps_small_images_whole_and_reports_missing_files(tmp_path):
    path = tmp_path / "small.png"
    _write(path, 0, size=(20, 16))
    cache = ImageCache(tmp_path / "cache", side=30)
    assert np.array_equal(np.asarray(cache(path)), np.asarray(Image.open(path).convert("RGB")))
    with pytest.raises(DataError, match="not found"):
        cache(tmp_path / "gone.png")



def test_train_cost_quick_writes_every_table(tmp_path):
    bench = runpy.run_path(str(Path(__file__).resolve().parents[2] / "benchmarks" / "train_cost.py"))
    out = tmp_path / "cost.md"
    bench["main"](["--quick", "--out", str(out)])
    text = out.read_text()
    for arm in ("medpeft LoRA", "full FT", "linear probe", "PEFT LoRA", "LoRA merged", "MoR"):
        assert f"| {arm} |" in text  # a column of the tables
    assert "| tiny ViT | 2 |" in text and "| LoRA step <= 0.75x full FT |" in text
    assert text.count("\n| 0 | ") == 1 and text.count("\n| 2 | ") == 1  # both loader settings
