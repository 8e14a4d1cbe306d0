"""The EI datasets in their native layouts (MMC-AMD, Derm7pt, MRNet) and the EI annotation lists."""

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fixtures.ei_layouts import write_derm7pt, write_ei_lists, write_mmc_amd, write_mrnet

from medpeft.data.dataset import Dataset
from medpeft.data.recipes.annotations import load_annotations
from medpeft.data.recipes.mmc_amd import load_mmc_amd
from medpeft.data.sources import recipe_source
from medpeft.data.splits import seeded_split
from medpeft.data.volumes import spaced_slices, volume_depth
from medpeft.errors import DataError

EYES = [("h-100_32", 1), ("d-200-l", 2), ("p-300", 3), ("w-400-r", 1), ("w-500", 2)]


def red(image) -> torch.Tensor:
    """Red channel value of a single-colour image (PIL -> tensor transform for tests)."""
    return torch.full((3, 2, 2), float(np.asarray(image)[0, 0, 0]))


def values(dataset: Dataset, index: int, modality: str) -> torch.Tensor:
    return dataset[index][0]["images"][modality][..., 0, 0, 0]


def test_mmc_amd_pairs_eyes_by_id_and_reads_one_oct(tmp_path):
    write_mmc_amd(tmp_path, EYES)
    (tmp_path / "oct" / "o-d-999_000.png").write_bytes((tmp_path / "oct" / "o-d-200-l_000.png").read_bytes())
    source = recipe_source("mmc_amd", tmp_path)
    assert source.modalities == ("cfp", "oct") and source.combine == {"oct": "one"}
    assert [r.id for r in source.records] == ["d-200-l", "h-100", "p-300", "w-400-r", "w-500"]
    assert [source.labels[r.target] for r in source.records] == ["dry_amd", "no_amd", "pcv", "wet_amd", "wet_amd"]
    assert len(source.records[2].values["oct"]) == 3  # every B-scan kept, the unpaired eye skipped
    expected = Counter(seeded_split([r.target for r in source.records], (610, 79, 79)))
    assert Counter(r.split for r in source.records) == expected
    p300 = [source.records[2]]
    evaluation = Dataset(p300, source.modalities, source.kinds, {"cfp": red, "oct": red}, combine=source.combine)
    assert float(values(evaluation, 0, "oct")) == 0.0  # the first scan in sorted order
    training = Dataset(p300, source.modalities, source.kinds, {"cfp": red, "oct": red},
                       combine=source.combine, train=True)
    torch.manual_seed(0)
    assert {float(values(training, 0, "oct")) for _ in range(30)} == {0.0, 10.0, 20.0}


def test_mmc_amd_reads_the_ei_lists_when_present(tmp_path):
    write_mmc_amd(tmp_path, EYES)
    lists = {
        "train": ["cfp/f-h-100_32.jpg,oct/o-h-100_32.png\tno_amd", "cfp/f-p-300.jpg,oct/o-p-300_002.png "
                  "oct/o-p-300_000.png\tpcv"],
        "val": ["cfp/f-d-200-l.jpg,oct/o-d-200-l_001.png\tdry_amd"],
        "test": ["cfp/f-w-500.jpg,oct/o-w-500_000.png oct/o-w-500_001.png\twet_amd"],
    }
    write_ei_lists(tmp_path / "datasplit", "mmc-amd", lists, ["no_amd", "dry_amd", "pcv", "wet_amd"])
    source = load_mmc_amd(tmp_path)
    assert [(r.split, r.target) for r in source.records] == [("train", 0), ("train", 2), ("val", 1), ("test", 3)]
    assert source.records[1].values["oct"][0].endswith("o-p-300_002.png")
    dataset = Dataset.from_source(source, "train", {"cfp": red, "oct": red})
    assert float(values(dataset, 1, "oct")) == 0.0  # sorted first, as the EI code evaluates


def test_annotation_lists_multilabel_and_errors(tmp_path):
    write_mrnet(tmp_path, {"train": [(0, 0, 0), (1, 1, 0)]})
    lines = ["train/axial/0000.npy,train/coronal/0000.npy\t", "train/axial/0001.npy,train/coronal/0001.npy\tacl,abnormal"]
    write_ei_lists(tmp_path, "knee", {"train": lines[:1], "test": lines[1:]}, ["abnormal", "meniscus", "acl"])
    lists = {"train": tmp_path / "knee_train/anno.txt", "test": tmp_path / "knee_test/anno.txt"}
    source = load_annotations(tmp_path, lists, tmp_path / "mapping_knee.json", ("axial", "coronal"), "multilabel")
    assert [r.target for r in source.records] == [(0.0, 0.0, 0.0), (1.0, 0.0, 1.0)]
    (tmp_path / "knee_test/anno.txt").write_text("train/axial/0001.npy\tacl\n")
    with pytest.raises(DataError, match=r"knee_test/anno.txt line 1: 1 image cell"):
        load_annotations(tmp_path, lists, tmp_path / "mapping_knee.json", ("axial", "coronal"), "multilabel")
    (tmp_path / "knee_test/anno.txt").write_text("train/axial/0001.npy,train/coronal/0001.npy\tpcl\n")
    with pytest.raises(DataError, match=r"unknown label\(s\) \['pcl'\]"):
        load_annotations(tmp_path, lists, tmp_path / "mapping_knee.json", ("axial", "coronal"), "multilabel")


def test_derm7pt_official_split_and_grouped_classes(tmp_path):
    write_derm7pt(tmp_path)
    source = recipe_source("derm7pt", tmp_path)
    assert source.modalities == ("clinic", "derm") and source.labels == ["BCC", "NEV", "MEL", "SK", "MISC"]
    assert [source.labels[r.target] for r in source.records] == ["BCC", "NEV", "MEL", "SK", "MISC", "NEV", "MEL"]
    assert [r.split for r in source.records] == ["train"] * 3 + ["val"] * 2 + ["test"] * 2
    dataset = Dataset.from_source(source, "val", {"clinic": red, "derm": red})
    pair = (float(values(dataset, 0, "clinic")), float(values(dataset, 0, "derm")))
    assert pair == pytest.approx((3.0, 103.0), abs=2)  # case 3's images (JPEG rounding)
    (tmp_path / "images/Fol/De004.jpg").unlink()
    with pytest.raises(DataError, match=r"(?s)1 image file\(s\).*De004.jpg \(.*meta.csv line 6\)"):
        recipe_source("derm7pt", tmp_path)


def test_mrnet_views_labels_slices_and_splits(tmp_path):
    train = [(i % 2, int(i % 3 == 0), int(i % 5 == 0)) for i in range(20)]
    write_mrnet(tmp_path, {"train": train, "valid": [(1, 0, 1), (0, 0, 0)]})
    source = recipe_source("mrnet", tmp_path, seed=1)
    assert source.modalities == ("axial", "coronal", "sagittal") and source.labels == ["abnormal", "meniscus", "acl"]
    assert source.records[3].target == (1.0, 1.0, 0.0) and source.records[-2].target == (1.0, 0.0, 1.0)
    val = seeded_split([r.target for r in source.records[:20]], (0.9, 0.1, 0.0), seed=1)
    assert [r.split for r in source.records] == [*val, "test", "test"] and val.count("val") == 2
    transforms = dict.fromkeys(source.modalities, red)
    evaluation = Dataset.from_source(source, "test", transforms)
    slices = spaced_slices(9, 4)
    assert slices == [1, 3, 5, 7]
    assert values(evaluation, 0, "sagittal").tolist() == [10 * s + 2 for s in slices]
    training = Dataset.from_source(source, "test", transforms, train=True)
    torch.manual_seed(0)
    drawn = torch.stack([values(training, 0, "axial") for _ in range(20)]) / 10
    assert drawn.shape == (20, 4) and (drawn - torch.tensor(slices)).abs().max() <= 1
    assert len(set(map(tuple, drawn.tolist()))) > 1  # jittered within each slice's span


def test_ei_mrnet_config_trains_both_stages(tmp_path):
    """The built-in EI recipe end to end on a tiny MRNet layout: slices, stage-1 max-pooling
    over slices, EI stage 2, oversampling, the EI augmentation, cyclic lr, patch rounding."""
    from medpeft.cli import builtin_configs, main

    cases = [(i % 2, int(i % 4 == 1), int(i % 3 == 0)) for i in range(20)]
    root = write_mrnet(tmp_path / "MRNet-v1.0", {"train": cases, "valid": cases[:4]})
    run = tmp_path / "run"
    tiny = [
        "model.backbone=vit_tiny_patch16_224", "model.pretrained=false", "model.img_size=14",
        "model.kwargs={patch_size: 8, embed_dim: 16, depth: 1, num_heads: 1}", "train.epochs=1",
        "data.num_workers=0", "data.batch_size=4", "train.amp=false", "train.device=cpu",
        f"data.root={root}", f"output_dir={run}", "mor.ranks=[2]", "train.repeats=1",
    ]
    assert main(["train", str(builtin_configs()["ei_mrnet"]), *tiny, "--quiet"]) == 0
    assert {p.name for p in (run / "stage1").iterdir()} == {"axial", "coronal", "sagittal"}
    assert "img_size: 16" in (run / "config.yaml").read_text()  # rounded to the 8 px patch
    report = json.loads((run / "report.json").read_text())
    assert 0 <= report["test"]["metrics"]["map"] <= 1


def test_repeats_train_seeds_into_folders_and_summarise(tmp_path, monkeypatch):
    from medpeft.config import load_config
    from medpeft.runs import repeats

    seen = []

    def fake_run(config, resume, progress):
        seen.append((config.output_dir, config.train.seed, config.train.repeats))
        metrics = {"map": 0.5 + 0.1 * len(seen), "accuracy": 0.9}
        return SimpleNamespace(run_dir=Path(config.output_dir), test_metrics=metrics, best_epoch=0)

    monkeypatch.setattr(repeats, "train_run", fake_run)
    config = load_config(None, [f"output_dir={tmp_path}", "train.seed=7", "train.repeats=3"])
    summary = repeats.train_repeats(config)
    assert seen == [(str(tmp_path / f"rep{i}"), 7 + i, 1) for i in range(3)]
    assert summary.mean["map"] == pytest.approx(0.7) and summary.std["map"] == pytest.approx(0.1)
    assert summary.std["accuracy"] == 0
    assert "0.7000 ± 0.1000" in (tmp_path / "summary.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["mean"]["map"] == pytest.approx(0.7)


def test_volume_depth_follows_the_slice_axis_and_reads_grey_images_as_one_slice(tmp_path):
    np.save(tmp_path / "vol.npy", np.zeros((5, 7, 9), dtype=np.float32))
    np.save(tmp_path / "grey.npy", np.zeros((7, 9, 1), dtype=np.float32))
    assert volume_depth(tmp_path / "vol.npy") == 5
    assert volume_depth(tmp_path / "vol.npy", axis=2) == 9
    assert volume_depth(tmp_path / "grey.npy") == 1
