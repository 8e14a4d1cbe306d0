"""Multimodal manifest, dataset items, missing-input fill and the collated batch dict."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertTokenizerFast

from medpeft.data.missing import MissingSetting, MissingTable
from medpeft.data.multimodal import MultiModalDataset, multimodal_collate
from medpeft.data.multimodal_manifest import read_multimodal_manifest
from medpeft.errors import ConfigError, DataError

KINDS = {"fundus": "image", "oct": "image", "note": "text"}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "dry", "wet", "drusen", "fluid"]


def to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.resize((8, 8)), dtype=np.float32) / 255
    return (torch.from_numpy(array).permute(2, 0, 1) - 0.5) / 0.5


TRANSFORMS = {"fundus": to_tensor, "oct": to_tensor}


def write_png(path, value):
    Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(path)


def write_manifest(folder, rows, columns=("id", "fundus", "oct", "note", "label", "split")):
    path = folder / "manifest.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


@pytest.fixture
def manifest(tmp_path):
    for name, value in [("f0.png", 10), ("f1.png", 200), ("o0.png", 50), ("o1.png", 90)]:
        write_png(tmp_path / name, value)
    rows = [
        ["s0", "f0.png", "o0.png|o1.png", "dry drusen", "dry", "train"],
        ["s1", "", "o1.png|o0.png", "wet fluid", "wet", "train"],
        ["s2", "f1.png", "o0.png|o0.png", "", "dry", "test"],
    ]
    return write_manifest(tmp_path, rows)


@pytest.fixture
def tokenizer(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    # from_pretrained(folder) reads vocab.txt in transformers 4 and 5 alike
    # (transformers 5 silently ignores a vocab_file= argument)
    return BertTokenizerFast.from_pretrained(str(tmp_path))


def dataset(manifest, table=None, policy="ones"):
    source = read_multimodal_manifest(manifest, KINDS, ["label"])
    return MultiModalDataset(
        source.records, source.modalities, source.kinds, TRANSFORMS, table, policy
    )


def table_of(present):
    ids = [f"s{i}" for i in range(len(present))]
    return MissingTable(ids, tuple(KINDS), np.array(present, bool), MissingSetting(0.5, "mixed"), 0)


def test_manifest_records(manifest):
    source = read_multimodal_manifest(manifest, KINDS, ["label"])
    assert [r.id for r in source.records] == ["s0", "s1", "s2"]  # no row dropped
    assert source.label_names == ["dry", "wet"] and source.task == "multiclass"
    assert [r.target for r in source.records] == [0, 1, 0]
    assert source.records[1].values["fundus"] == ()
    assert len(source.records[0].values["oct"]) == 2
    assert source.ids("test") == ["s2"] and source.split("test")[0].id == "s2"


def test_item_schema_and_genuine_gaps(manifest):
    inputs, target = dataset(manifest)[0]
    assert inputs["images"]["fundus"].shape == (3, 8, 8)
    assert inputs["images"]["oct"].shape == (2, 3, 8, 8)
    assert inputs["text"] == "dry drusen" and target.dtype == torch.long
    assert inputs["present"].tolist() == [True, True, True]
    # empty cells are missing regardless of the table (which says all present)
    ds = dataset(manifest, table_of([[1, 1, 1]] * 3))
    assert ds[1][0]["present"].tolist() == [False, True, True]
    assert ds[2][0]["present"].tolist() == [True, True, False]


@pytest.mark.parametrize("policy,value", [("ones", 1.0), ("zeros", 0.0), ("token", 0.0)])
def test_missing_image_policy(manifest, policy, value):
    ds = dataset(manifest, table_of([[1, 0, 1], [1, 1, 1], [1, 1, 1]]), policy)
    inputs, _ = ds[0]
    assert inputs["present"].tolist() == [True, False, True]
    assert torch.equal(inputs["images"]["oct"], torch.full((2, 3, 8, 8), value))
    assert torch.equal(ds[1][0]["images"]["fundus"], torch.full((3, 8, 8), value))


def test_collate_builds_documented_batch(manifest, tokenizer):
    ds = dataset(manifest, table_of([[1, 1, 0], [1, 1, 1], [1, 1, 1]]))
    inputs, targets = multimodal_collate(tokenizer, max_text_len=6)([ds[i] for i in range(3)])
    assert set(inputs) == {"images", "text", "present"}
    assert inputs["images"]["fundus"].shape == (3, 3, 8, 8)
    assert inputs["images"]["oct"].shape == (3, 2, 3, 8, 8)
    assert inputs["present"].dtype == torch.bool and inputs["present"].shape == (3, 3)
    ids, mask = inputs["text"]["input_ids"], inputs["text"]["attention_mask"]
    assert ids.shape == mask.shape == (3, 6) and ids.dtype == mask.dtype == torch.long
    cls, sep, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    for missing in (0, 2):  # dropped by the table / empty cell: only [CLS] [SEP]
        assert ids[missing].tolist() == [cls, sep, pad, pad, pad, pad]
        assert mask[missing].sum() == 2
    assert tokenizer.convert_ids_to_tokens(ids[1, 1:3]) == ["wet", "fluid"]
    assert targets.tolist() == [0, 1, 0]


def test_multilabel_columns_and_joined_names(tmp_path):
    write_png(tmp_path / "a.png", 5)
    rows = [["0", "a.png", "1", "0"], ["1", "", "0", "1"]]
    path = write_manifest(tmp_path, rows, ("id", "fundus", "x", "y"))
    source = read_multimodal_manifest(path, {"fundus": "image"}, ["x", "y"], "multilabel")
    assert source.label_names == ["x", "y"] and source.records[1].target == (0.0, 1.0)
    path = write_manifest(
        tmp_path, [["0", "a.png", "y|x"], ["1", "a.png", ""]], ("id", "fundus", "labels")
    )
    source = read_multimodal_manifest(path, {"fundus": "image"}, ["labels"], "multilabel")
    assert [r.target for r in source.records] == [(1.0, 1.0), (0.0, 0.0)]


def test_errors_name_the_culprit(tmp_path, manifest):
    tmp_path = tmp_path / "bad"
    tmp_path.mkdir()
    write_png(tmp_path / "a.png", 5)
    with pytest.raises(DataError, match=r"line 2 column 'fundus'.*gone\.png"):
        read_multimodal_manifest(
            write_manifest(tmp_path, [["0", "gone.png", "", "", "dry", ""]]), KINDS, ["label"]
        )
    with pytest.raises(DataError, match=r"line 3 column 'label'.*'sick'"):
        rows = [["0", "a.png", "", "", "dry", ""], ["1", "a.png", "", "", "sick", ""]]
        read_multimodal_manifest(
            write_manifest(tmp_path, rows), KINDS, ["label"], classes=["dry", "wet"]
        )
    with pytest.raises(DataError, match=r"line 2 column 'y'.*'2'"):
        path = write_manifest(tmp_path, [["0", "a.png", "1", "2"]], ("id", "fundus", "x", "y"))
        read_multimodal_manifest(path, {"fundus": "image"}, ["x", "y"], "multilabel")
    with pytest.raises(DataError, match=r"no column\(s\) \['mri'\]"):
        read_multimodal_manifest(manifest, {"mri": "image"}, ["label"])
    with pytest.raises(DataError, match="line 2.*no modality"):
        source = read_multimodal_manifest(
            write_manifest(tmp_path, [["0", "", "", " ", "dry", ""]]), KINDS, ["label"]
        )
        MultiModalDataset(source.records, source.modalities, KINDS, TRANSFORMS)
    with pytest.raises(DataError, match="line 3: duplicate sample id '0'"):
        read_multimodal_manifest(
            write_manifest(tmp_path, [["0", "a.png", "", "", "dry", ""]] * 2), KINDS, ["label"]
        )
    with pytest.raises(DataError, match=r"line 3 column 'oct': has 1 images"):
        rows = [
            ["0", "a.png", "a.png|a.png", "", "dry", ""],
            ["1", "a.png", "a.png", "", "dry", ""],
        ]
        source = read_multimodal_manifest(write_manifest(tmp_path, rows), KINDS, ["label"])
        MultiModalDataset(source.records, source.modalities, KINDS, TRANSFORMS)
    with pytest.raises(ConfigError, match="tokenizer"):
        ds = dataset(manifest)
        multimodal_collate(None)([ds[0]])


def test_every_missing_image_listed_and_lines_count_multiline_text(tmp_path):
    write_png(tmp_path / "a.png", 5)
    rows = [
        ["0", "a.png", "gone1.png", "dry\ndrusen", "dry", "train"],
        ["1", "gone2.png", "a.png", "", "dry", "train"],
    ]
    with pytest.raises(DataError) as info:
        read_multimodal_manifest(write_manifest(tmp_path, rows), KINDS, ["label"])
    message = str(info.value)
    assert "2 image file(s)" in message
    assert "line 2 column 'oct'" in message and "gone1.png" in message
    assert "line 4 column 'fundus'" in message and "gone2.png" in message  # row 2 spans lines 2-3
    rows = [["0", "a.png", "", "", "dry", "later"]]
    with pytest.raises(DataError, match="line 2 column 'split': bad split value 'later'"):
        read_multimodal_manifest(write_manifest(tmp_path, rows), KINDS, ["label"])
