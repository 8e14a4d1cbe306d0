"""Synthetic multimodal task: determinism, each modality carries its bits, PNG + manifest."""

import numpy as np
import torch
from transformers import BertTokenizerFast

from medpeft.data.collate import Collate
from medpeft.data.dataset import Dataset
from medpeft.data.missing import make_missing_table
from medpeft.data.sources import csv_source
from medpeft.data.synthetic_multimodal import make_synthetic_multimodal, text_vocabulary


def band_means(images: torch.Tensor, bands: int) -> torch.Tensor:
    """Mean brightness of each horizontal band, [N, bands]."""
    return torch.stack([c.float().mean(dim=(1, 2, 3)) for c in images.chunk(bands, dim=2)], dim=1)


def test_deterministic_and_each_modality_shows_only_its_bits():
    data = make_synthetic_multimodal(64, ("a", "b"), bits_per_modality=2, seed=7)
    again = make_synthetic_multimodal(64, ("a", "b"), bits_per_modality=2, seed=7)
    assert torch.equal(data.images["a"], again.images["a"]) and torch.equal(
        data.targets, again.targets
    )
    assert data.images["a"].shape == (64, 3, 32, 32) and data.images["a"].dtype == torch.uint8
    assert len(data.label_names) == 16
    bright_a = band_means(data.images["a"], 2) > 100
    bright_b = band_means(data.images["b"], 2) > 100
    assert torch.equal(bright_a, data.bits[:, :2]) and torch.equal(bright_b, data.bits[:, 2:])
    assert torch.equal(data.targets, (data.bits.long() << torch.arange(4)).sum(dim=1))
    assert set(data.splits) == {"train", "val", "test"}


def test_multilabel_and_text_modality(tmp_path):
    data = make_synthetic_multimodal(
        8, ("img", "txt"), {"img": "image", "txt": "text"}, task="multilabel"
    )
    assert data.label_names == ["img_0", "txt_0"]
    assert torch.equal(data.targets, data.bits.float())
    assert data.texts["txt"][0] == f"sig0 {'yes' if data.bits[0, 1] else 'no'}"
    (tmp_path / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *text_vocabulary()])
    )
    tokenizer = BertTokenizerFast.from_pretrained(str(tmp_path))
    table = make_missing_table(8, data.modalities, 0.5, "txt", seed=0)
    ds = data.dataset(missing_table=table, missing_image="zeros")
    inputs, targets = Collate(tokenizer, 8)([ds[i] for i in range(8)])
    assert inputs["present"][:, 1].sum() == 4 and inputs["present"][:, 0].all()
    assert (
        inputs["text"]["attention_mask"].sum(dim=1) == torch.where(inputs["present"][:, 1], 4, 2)
    ).all()
    assert inputs["images"]["img"].shape == (8, 3, 32, 32) and targets.shape == (8, 2)


def test_written_manifest_reads_back_identically(tmp_path):
    data = make_synthetic_multimodal(12, ("a", "b", "c"), img_size=16, seed=1)
    manifest = data.write(tmp_path)
    source = csv_source(manifest, modalities=data.kinds, classes=data.label_names)
    assert [r.target for r in source.records] == data.targets.tolist()
    assert [r.split for r in source.records] == data.splits
    transforms = {m: lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1) for m in "abc"}
    ds = Dataset(source.records, source.modalities, source.kinds, transforms)
    assert torch.equal(ds[3][0]["images"]["b"], data.images["b"][3])
    normalised = data.dataset()[3][0]["images"]["b"]
    assert torch.allclose(normalised, (data.images["b"][3].float() / 255 - 0.5) / 0.5)


def test_split_dataset_uses_split_ids_for_the_missing_table():
    data = make_synthetic_multimodal(40, seed=2)
    test_ids = data.ids("test")
    table = make_missing_table(test_ids, data.modalities, 1.0, "b", seed=0)
    ds = data.dataset("test", missing_table=table)
    assert len(ds) == len(test_ids) == 4
    inputs, target = ds[0]
    assert inputs["present"].tolist() == [True, False]
    assert torch.equal(inputs["images"]["b"], torch.ones(3, 32, 32))
    assert target == data.targets[int(test_ids[0])]
