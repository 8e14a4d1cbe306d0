"""MeLo dataset recipes on tiny fake copies of the native layouts."""

import csv

import numpy as np
import pytest
from PIL import Image

from medpeft.data.imageio import load_image
from medpeft.data.recipes.melo import BLOOD_CELL_CLASSES, CHESTXRAY14_LABELS
from medpeft.data.sources import recipe_source
from medpeft.errors import DataError


def write_image(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, dtype=np.uint8)).save(path, format="PNG")


def sizes(source):
    return [len(source.split(n)) for n in ("train", "val", "test")]


def every(source):
    """(image path, target) of every record, all of them in a split."""
    assert all(r.split in ("train", "val", "test") for r in source.records)
    assert source.modalities == ("image",)
    return [(r.values["image"][0], r.target) for r in source.records]


def paths(records):
    return [r.values["image"][0] for r in records]


def test_shenzhen(tmp_path):
    for i in range(20):
        write_image(tmp_path / "ChinaSet_AllFiles" / "CXR_png" / f"CHNCXR_{i + 1:04d}_{i % 2}.png")
    write_image(tmp_path / "mask" / "CHNCXR_0001_0_mask.png")
    (tmp_path / "ChinaSet_AllFiles" / "ClinicalReadings").mkdir()
    (tmp_path / "ChinaSet_AllFiles" / "ClinicalReadings" / "CHNCXR_0001_0.txt").write_text("normal")
    source = recipe_source("shenzhen", tmp_path, seed=1)
    assert source.labels == ["normal", "tuberculosis"] and source.task == "multiclass"
    assert sizes(source) == [14, 2, 4]
    assert all(target == int(path[-5]) for path, target in every(source))
    write_image(tmp_path / "copy" / "CHNCXR_0003_0.png")
    with pytest.raises(DataError, match="CHNCXR_0003_0.png found twice"):
        recipe_source("shenzhen", tmp_path)
    with pytest.raises(DataError, match="no Shenzhen images"):
        recipe_source("shenzhen", tmp_path / "mask")


def blood_cells(root, per_class=(10, 2)):
    images = root / "dataset2-master" / "dataset2-master" / "images"
    for split, count in zip(("TRAIN", "TEST"), per_class):
        for name in BLOOD_CELL_CLASSES:
            for i in range(count):
                write_image(images / split / name / f"_{i}_{name}.jpeg")
    return images


def test_blood_cells(tmp_path):
    images = blood_cells(tmp_path)
    source = recipe_source("blood_cells", tmp_path, val_fraction=0.2)
    assert source.labels == list(BLOOD_CELL_CLASSES)
    assert sizes(source) == [32, 8, 8]
    assert sorted(source.targets("val")) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert load_image(paths(source.split("test"))[0]).size == (16, 16)
    (images / "TEST" / "BASOPHIL").mkdir()
    with pytest.raises(DataError, match=r"unknown class folder\(s\) \['BASOPHIL'\]"):
        recipe_source("blood_cells", tmp_path)
    with pytest.raises(DataError, match="no TRAIN/ and TEST/"):
        recipe_source("blood_cells", images / "TRAIN")


def chestxray14(root, rows):
    with (root / "Data_Entry_2017.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID"])
        writer.writerows([name, labels, 0, name[:8]] for name, labels in rows)
    names = [name for name, _ in rows]
    (root / "test_list.txt").write_text("\n".join(names[-2:]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(names[:-2]) + "\n")
    for i, name in enumerate(names):
        write_image(root / f"images_{1 + i % 2:03d}" / "images" / name)


def test_chestxray14(tmp_path):
    rows = [(f"{p:08d}_{k:03d}.png", "No Finding") for p in range(1, 11) for k in range(2)]
    rows[0] = (rows[0][0], "Effusion|Hernia")
    chestxray14(tmp_path, rows)
    source = recipe_source("chestxray14", tmp_path, val_fraction=0.3)
    assert source.task == "multilabel" and source.labels == list(CHESTXRAY14_LABELS)
    assert sizes(source) == [12, 6, 2]
    first = next(target for path, target in every(source) if "00000001_000" in path)
    names = [CHESTXRAY14_LABELS[i] for i, v in enumerate(first) if v]
    assert names == ["Effusion", "Hernia"]
    patients = [{p.split("/")[-1][:8] for p in paths(source.split(n))} for n in ("train", "val")]
    assert not patients[0] & patients[1]


def test_chestxray14_errors(tmp_path):
    rows = [(f"{p:08d}_000.png", "Mass") for p in range(4)]
    chestxray14(tmp_path, rows)
    (tmp_path / "images_001" / "images" / rows[0][0]).unlink()
    with pytest.raises(DataError, match=r"(?s)1 image file\(s\).*00000000_000.png.*line 2"):
        recipe_source("chestxray14", tmp_path)
    chestxray14(tmp_path, [*rows[:3], (rows[3][0], "Mass|Covid")])
    with pytest.raises(DataError, match=r"line 5 column 'Finding Labels': unknown .*\['Covid'\]"):
        recipe_source("chestxray14", tmp_path)
    (tmp_path / "test_list.txt").unlink()
    with pytest.raises(DataError, match="official split file not found: .*test_list.txt"):
        recipe_source("chestxray14", tmp_path)


def inbreast(root, birads, delimiter=";"):
    with (root / "INbreast.csv").open("w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["Patient ID", "Laterality", "View", "File Name", "ACR", "Bi-Rads"])
        writer.writerows(["removed", "L", "CC", 2000 + i, "1", b] for i, b in enumerate(birads))
    (root / "AllDICOMs").mkdir(exist_ok=True)
    for i in range(len(birads)):
        (root / "AllDICOMs" / f"{2000 + i}_abc{i}_MG_L_CC_ANON.dcm").write_bytes(b"")


def test_inbreast_birads_mapping(tmp_path):
    birads = ["1", "2", "3", "4a", "4b", "4c", "5", "6", "2", "3"]
    inbreast(tmp_path, birads)
    source = recipe_source("inbreast", tmp_path, fractions=(0.6, 0.2, 0.2))
    assert source.labels == ["benign", "malignant"] and sizes(source) == [6, 2, 2]
    targets = {path.split("/")[-1][:4]: target for path, target in every(source)}
    assert [targets[str(2000 + i)] for i in range(10)] == [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]


def test_inbreast_errors(tmp_path):
    inbreast(tmp_path, ["2", "0"], delimiter=",")
    with pytest.raises(DataError, match="INbreast.csv line 3 column 'Bi-Rads': expected 1-6"):
        recipe_source("inbreast", tmp_path)
    inbreast(tmp_path, ["2", "5"])
    (tmp_path / "AllDICOMs" / "2001_abc1_MG_L_CC_ANON.dcm").unlink()
    with pytest.raises(DataError, match=r"AllDICOMs/2001_\*\.dcm \(.*line 3\)"):
        recipe_source("inbreast", tmp_path)


def test_inbreast_spreadsheet(tmp_path):
    import pandas
    birads = ["1", "4c", "2", "5", "3"]
    inbreast(tmp_path, birads)
    (tmp_path / "INbreast.csv").unlink()
    frame = pandas.DataFrame({"File Name": [2000 + i for i in range(5)], "Bi-Rads": birads})
    frame.to_excel(tmp_path / "INbreast.xlsx", index=False)
    source = recipe_source("inbreast", tmp_path)
    assert sorted(target for _, target in every(source)) == [0, 0, 0, 1, 1]
