"""ODIR-5K and IU X-ray native layouts: labels, text, side-by-side images, splits."""

import csv
from collections import Counter

import numpy as np
import pytest
import torch

from medpeft.data.dataset import Dataset
from medpeft.data.recipes.iu_xray import load_iu_xray, top_problems
from medpeft.data.recipes.odir import load_odir
from medpeft.data.splits import seeded_split
from medpeft.errors import DataError


def raw(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)


@pytest.fixture
def odir_root(tmp_path, make_odir):
    return make_odir(tmp_path)


def test_odir_records_labels_and_text(odir_root):
    source = load_odir(odir_root)
    assert source.modalities == ("image", "text") and source.task == "multilabel"
    assert source.labels == list("NDGCAHMO")
    assert [r.id for r in source.records] == ["0", "1", "2"]
    assert source.records[1].target == (0, 1, 0, 1, 0, 0, 0, 0)
    assert source.records[1].values["text"] == (
        "Left_text:moderate non proliferative retinopathy Right_text:cataract"
    )
    assert Counter(r.split for r in source.records) == Counter(seeded_split(3, (2781, 382, 337)))


def test_odir_image_is_left_and_right_side_by_side(odir_root):
    source = load_odir(odir_root)
    ds = Dataset.from_source(source, source.records[0].split, {"image": raw})
    image = ds[0][0]["images"]["image"]  # patient 0
    assert image.shape == (3, 16, 32)  # right eye (8 px) resized to the left's height
    # JPEG: colours within a few levels
    assert torch.allclose(image[:, :, :16].mean(dim=(1, 2)), torch.tensor([255.0, 0, 0]), atol=4)
    assert torch.allclose(image[:, :, 16:].mean(dim=(1, 2)), torch.tensor([0.0, 0, 255]), atol=4)


def test_odir_missing_image_names_row_and_column(odir_root):
    (odir_root / "ODIR-5K_Training_Dataset" / "2_right.jpg").unlink()
    with pytest.raises(DataError, match=r"line 4 column 'Right-Fundus'.*2_right\.jpg"):
        load_odir(odir_root)


def write_csv(path, header, rows):
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


@pytest.fixture
def iu_root(tmp_path, write_image):
    images = tmp_path / "images" / "images_normalized"
    header = [
        "uid",
        "MeSH",
        "Problems",
        "image",
        "indication",
        "comparison",
        "findings",
        "impression",
    ]
    reports = [
        ["1", "normal", "normal", "", "", "", "The lungs are clear.", "No acute disease."],
        ["2", "Cardiomegaly/mild", "Cardiomegaly;Opacity", "", "", "", "Heart is enlarged.", ""],
        ["3", "Opacity/lung", "Opacity", "", "", "", "", ""],
        ["4", "Cardiomegaly", "Cardiomegaly", "", "", "", "", "Cardiomegaly."],
        ["5", "Nodule", "Nodule", "", "", "", "Nodule.", ""],
    ]
    write_csv(tmp_path / "indiana_reports.csv", header, reports)
    projections = [
        ["1", "1_IM-0001-4001.dcm.png", "Frontal"],
        ["1", "1_IM-0001-3001.dcm.png", "Lateral"],
    ]
    projections += [[uid, f"{uid}_f.png", "Frontal"] for uid in "234"]
    projections += [["5", "5_l.png", "Lateral"]]
    for _, name, _ in projections:
        write_image(images / name, (100, 100, 100))
    write_csv(tmp_path / "indiana_projections.csv", ["uid", "filename", "projection"], projections)
    return tmp_path


def test_iu_xray_labels_text_and_frontal_image(iu_root):
    source = load_iu_xray(iu_root)
    assert [r.id for r in source.records] == ["1", "2", "3", "4"]  # uid 5 has no frontal image
    assert source.labels == ["Cardiomegaly", "Opacity", "Nodule"]
    targets = {r.id: r.target for r in source.records}
    assert targets["1"] == (0.0, 0.0, 0.0)  # normal = all zeros
    assert targets["2"] == (1.0, 1.0, 0.0)
    first = source.records[0]
    assert first.values["text"] == "The lungs are clear. No acute disease."
    assert first.values["image"][0].endswith("1_IM-0001-4001.dcm.png")
    assert source.records[2].values["text"] == ""  # genuinely missing text
    assert {r.split for r in source.records} <= {"train", "val", "test"}


def test_iu_xray_options(iu_root):
    kept = load_iu_xray(iu_root, labels=["Nodule"], drop_without_image=False)
    assert [r.id for r in kept.records] == ["1", "2", "3", "4", "5"]
    assert kept.records[4].values["image"] == () and kept.records[4].target == (1.0,)
    reports = [{"Problems": "b;a"}, {"Problems": "a"}, {"Problems": "c;normal"}]
    assert top_problems(reports, k=2) == ["a", "b"]


def test_odir_lines_count_blank_sheet_rows_and_every_missing_image_is_listed(odir_root):
    from openpyxl import load_workbook

    path = next(odir_root.glob("*.xlsx"))
    book = load_workbook(path)
    book.active.insert_rows(3)  # a blank row between patients 0 and 1
    book.save(path)
    for name in ("1_left.jpg", "2_right.jpg"):
        (odir_root / "ODIR-5K_Training_Dataset" / name).unlink()
    with pytest.raises(DataError) as info:
        load_odir(odir_root)
    message = str(info.value)
    assert "2 image file(s)" in message
    assert "line 4 column 'Left-Fundus'" in message and "line 5 column 'Right-Fundus'" in message
