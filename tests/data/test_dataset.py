"""The one Dataset: single-image and multimodal items, missing-input fill, transforms per modality."""

import numpy as np
import pytest
import torch
from PIL import Image

from medpeft.data.dataset import Dataset
from medpeft.data.missing import MissingSetting, MissingTable, make_missing_table
from medpeft.data.records import Record, image_source
from medpeft.data.sources import csv_source
from medpeft.data.transforms import build_transform
from medpeft.errors import ConfigError, DataError

KINDS = {"fundus": "image", "oct": "image", "note": "text"}


def to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.resize((8, 8)), dtype=np.float32) / 255
    return (torch.from_numpy(array).permute(2, 0, 1) - 0.5) / 0.5


TRANSFORMS = {"fundus": to_tensor, "oct": to_tensor}


def write_png(path, value):
    Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture
def records(tmp_path):
    for name, value in [("f0.png", 10), ("f1.png", 200), ("o0.png", 50), ("o1.png", 90)]:
        write_png(tmp_path / name, value)
    rows = [
        ["s0", "f0.png", "o0.png|o1.png", "dry drusen", "dry"],
        ["s1", "", "o1.png|o0.png", "wet fluid", "wet"],
        ["s2", "f1.png", "o0.png|o0.png", "", "dry"],
    ]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,fundus,oct,note,label\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return csv_source(manifest, modalities=KINDS).records


def dataset(records, table=None, policy="ones"):
    return Dataset(records, tuple(KINDS), KINDS, TRANSFORMS, table, policy)


def table_of(present):
    ids = [f"s{i}" for i in range(len(present))]
    return MissingTable(ids, tuple(KINDS), np.array(present, bool), MissingSetting(0.5, "mixed"), 0)


def single_image_source(tmp_path, n=4):
    rows = []
    for i in range(n):
        Image.new("RGB", (40, 24), (i * 50,) * 3).save(tmp_path / f"{i}.png")
        rows.append(Record(str(i), {"image": (str(tmp_path / f"{i}.png"),)}, i % 2, "train"))
    return image_source(rows, ["a", "b"], "multiclass")


def test_single_image_source_items(tmp_path):
    source = single_image_source(tmp_path)
    transform = build_transform(8, mean=(0, 0, 0), std=(1, 1, 1))
    ds = Dataset.from_source(source, "train", {"image": transform})
    inputs, target = ds[1]
    assert set(inputs) == {"images", "present", "sample"} and set(inputs["images"]) == {"image"}
    assert inputs["sample"].endswith(f"({ds.records[1].values['image'][0]})")  # named in messages
    assert inputs["images"]["image"].shape == (3, 8, 8)
    assert inputs["images"]["image"].mean().item() == pytest.approx(50 / 255, abs=1e-6)
    assert torch.equal(inputs["present"], torch.tensor([True]))
    assert target.dtype == torch.long and target.ndim == 0 and target.item() == 1
    table = make_missing_table(source.ids("train"), source.modalities, 1.0, "image", seed=0)
    assert Dataset.from_source(source, "train", {"image": transform}, table)[0][0]["present"].tolist() == [True]


def test_multilabel_target_is_float(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    source = image_source([Record("0", {"image": (str(tmp_path / "a.png"),)}, (1.0, 0.0, 1.0))],
                          ["x", "y", "z"], "multilabel")
    _, target = Dataset.from_source(source, None, {"image": build_transform(8)})[0]
    assert target.dtype == torch.float32 and target.tolist() == [1.0, 0.0, 1.0]


def test_targets_need_no_image(tmp_path):
    records = [Record(str(i), {"image": (str(tmp_path / f"absent{i}.png"),)}, i % 3) for i in range(5)]
    ds = Dataset(records, ("image",), {"image": "image"}, {"image": build_transform(8)})
    assert ds.targets == [0, 1, 2, 0, 1] and len(ds) == 5
    with pytest.raises(DataError, match="absent0.png"):
        ds[0]  # only reading an item touches the files


def test_item_schema_and_genuine_gaps(records):
    inputs, target = dataset(records)[0]
    assert inputs["images"]["fundus"].shape == (3, 8, 8)
    assert inputs["images"]["oct"].shape == (2, 3, 8, 8)
    assert inputs["text"] == "dry drusen" and target.dtype == torch.long
    assert inputs["present"].tolist() == [True, True, True]
    # empty cells are missing regardless of the table (which says all present)
    ds = dataset(records, table_of([[1, 1, 1]] * 3))
    assert ds[1][0]["present"].tolist() == [False, True, True]
    assert ds[2][0]["present"].tolist() == [True, True, False]


@pytest.mark.parametrize("policy,value", [("ones", 1.0), ("zeros", 0.0), ("token", 0.0)])
def test_missing_image_policy(records, policy, value):
    ds = dataset(records, table_of([[1, 0, 1], [1, 1, 1], [1, 1, 1]]), policy)
    inputs, _ = ds[0]
    assert inputs["present"].tolist() == [True, False, True]
    assert torch.equal(inputs["images"]["oct"], torch.full((2, 3, 8, 8), value))
    assert torch.equal(ds[1][0]["images"]["fundus"], torch.full((3, 8, 8), value))


def test_transforms_may_miss_only_text_and_explicitly_absent_modalities(records):
    kinds = {**KINDS, "mri": "image"}
    with pytest.raises(ConfigError, match="no transform for image modality 'mri'.*allow_missing_keys"):
        Dataset(records, tuple(kinds), kinds, TRANSFORMS)
    ds = Dataset(records, tuple(kinds), kinds, TRANSFORMS, allow_missing_keys=True)
    inputs, _ = ds[0]
    assert inputs["present"].tolist() == [True, True, True, False]
    assert torch.equal(inputs["images"]["mri"], torch.ones(3, 8, 8))  # sized like another modality
    with pytest.raises(ConfigError, match="'oct', which has images"):
        Dataset(records, tuple(KINDS), KINDS, {"fundus": to_tensor}, allow_missing_keys=True)
    with pytest.raises(ConfigError, match=r"transforms for \['note'\]"):
        Dataset(records, tuple(KINDS), KINDS, {**TRANSFORMS, "note": str.lower})


def test_dataset_errors(records, tmp_path):
    write_png(tmp_path / "a.png", 5)
    uneven = [
        Record("0", {"oct": (str(tmp_path / "a.png"),) * 2}, 0, where="m.csv line 2"),
        Record("1", {"oct": (str(tmp_path / "a.png"),)}, 0, where="m.csv line 3"),
    ]
    with pytest.raises(DataError, match=r"line 3 column 'oct': has 1 images"):
        Dataset(uneven, ("oct",), {"oct": "image"}, {"oct": to_tensor})
    with pytest.raises(ConfigError, match="missing table modalities"):
        Dataset(records, ("fundus", "oct"), KINDS, TRANSFORMS, table_of([[1, 1, 1]] * 3))
    with pytest.raises(ConfigError, match="missing_image"):
        dataset(records, policy="noise")
    with pytest.raises(ConfigError, match="combine"):
        Dataset(records, tuple(KINDS), KINDS, TRANSFORMS, combine={"oct": "tile"})
