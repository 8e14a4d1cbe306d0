"""Test-session setup (hub offline, torchvision shim first) and shared multimodal fixtures.

Tiny ViLT (dim 32, 2 layers, 32 px, 8 px patches) with a word-level vocab, and a
builder of the ODIR-5K native layout (annotation workbook + fundus photographs).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
# Tiny test models run fastest on one thread (also in the subprocesses tests start).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import medpeft  # noqa: F401  (torchvision shim before any test imports transformers/peft)

# isort: split
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from openpyxl import Workbook
from PIL import Image
from transformers import ViltConfig

from medpeft.backbones.vilt import build_tokenizer
from medpeft.data.recipes.odir import LABELS
from medpeft.hashing import HASH_CACHE_ENV

TINY_VILT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    max_image_length=-1,
    vocab_size=64,
)
SENTENCES = ["left eye lesion", "normal", "right eye no lesion yes", "yes"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [*SPECIAL, "left", "right", "eye", "normal", "lesion", "no", "yes"]


@pytest.fixture(scope="session", autouse=True)
def hash_cache(tmp_path_factory) -> Path:
    """The weights-hash cache of the session (`medpeft.hashing`), never the user's ~/.cache."""
    path = tmp_path_factory.mktemp("hash_cache") / "sha256.json"
    os.environ[HASH_CACHE_ENV] = str(path)
    return path


@pytest.fixture
def vilt_config() -> ViltConfig:
    return ViltConfig(**TINY_VILT)


@pytest.fixture
def tiny_vilt_fields() -> dict:
    """``ViltConfig`` fields of the tiny ViLT (e.g. for ``model.vilt_config`` of a run config)."""
    return dict(TINY_VILT)


@pytest.fixture
def vocab_dir(tmp_path: Path) -> Path:
    """A folder holding only ``vocab.txt``: a tokenizer that loads offline by folder name."""
    folder = tmp_path / "vocab"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return folder


@pytest.fixture
def tokenizer(vocab_dir: Path):
    return build_tokenizer(vocab_dir / "vocab.txt")


def _vilt_batch(tokenizer, present, texts=None, size: int = 32, seed: int = 0) -> dict:
    present = torch.as_tensor(present, dtype=torch.bool)
    n = present.shape[0]
    texts = texts or [SENTENCES[i % len(SENTENCES)] for i in range(n)]
    texts = [t if present[i, 1] else "" for i, t in enumerate(texts)]
    enc = tokenizer(texts, padding="max_length", max_length=8, truncation=True, return_tensors="pt")
    images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    images[~present[:, 0]] = 1.0
    return {
        "images": {"image": images},
        "text": {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]},
        "present": present,
    }


@pytest.fixture
def vilt_batch(tokenizer):
    """``vilt_batch(present, texts=None, size=32, seed=0)``: an ("image", "text") batch dict."""
    def make(present, texts=None, size: int = 32, seed: int = 0) -> dict:
        return _vilt_batch(tokenizer, present, texts, size, seed)

    return make


ODIR_HEADER = [
    "ID",
    "Patient Age",
    "Patient Sex",
    "Left-Fundus",
    "Right-Fundus",
    "Left-Diagnostic Keywords",
    "Right-Diagnostic Keywords",
    *LABELS,
]
ODIR_ROWS = [
    ("normal fundus", "normal fundus", [1, 0, 0, 0, 0, 0, 0, 0]),
    ("moderate non proliferative retinopathy", "cataract", [0, 1, 0, 1, 0, 0, 0, 0]),
    ("glaucoma", "pathological myopia", [0, 0, 1, 0, 0, 0, 1, 0]),
]


def write_png(path: Path, rgb, size: tuple[int, int] = (16, 16)) -> None:
    """A single-colour image file (format from the suffix) of ``size`` = (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), rgb, dtype=np.uint8)).save(path)


def write_odir(root: Path, patients: int = 3) -> Path:
    """ODIR-5K layout under ``root``: patient ``i`` gets `ODIR_ROWS` ``[i % 3]``.

    Left eyes are red 16x16 JPEGs, right eyes blue 8x8 JPEGs, each patient's a shade
    apart (20 * i in the other channel), so no two patients' files are byte-identical.
    """
    images = root / "ODIR-5K_Training_Dataset"
    book = Workbook()
    book.active.append(ODIR_HEADER)
    for pid in range(patients):
        left, right, labels = ODIR_ROWS[pid % len(ODIR_ROWS)]
        shade = 20 * pid % 256
        write_png(images / f"{pid}_left.jpg", (255, 0, shade))
        write_png(images / f"{pid}_right.jpg", (shade, 0, 255), size=(8, 8))
        book.active.append(
            [pid, 60, "Female", f"{pid}_left.jpg", f"{pid}_right.jpg", left, right, *labels]
        )
    book.save(root / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx")
    return root


@pytest.fixture
def write_image() -> Callable[..., None]:
    """``write_image(path, rgb, size=(16, 16))``: see `write_png`."""
    return write_png


@pytest.fixture
def make_odir() -> Callable[..., Path]:
    """``make_odir(root, patients=3)``: write the ODIR-5K native layout, return ``root``."""
    return write_odir


@pytest.fixture
def vilt_reference() -> Callable:
    """``vilt_reference(vilt, batch)``: transformers' own ViltModel pooled output on the
    batch's text and single ``image`` (the reference for medpeft's block-by-block run)."""

    def pooled(vilt, batch: dict) -> torch.Tensor:
        out = vilt(
            input_ids=batch["text"]["input_ids"],
            attention_mask=batch["text"]["attention_mask"],
            pixel_values=batch["images"]["image"],
        )
        return out.pooler_output

    return pooled


@pytest.fixture
def long_text_batch(vilt_batch) -> Callable[[int], dict]:
    """``long_text_batch(length)``: a three-sample batch (complete, text-missing, image-missing)
    whose text has ``length`` tokens, sample 1 padded past half of them."""

    def make(length: int) -> dict:
        batch = vilt_batch([[1, 1], [1, 0], [0, 1]])
        ids = torch.randint(5, 12, (3, length), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        mask[1, length // 2 :] = 0
        batch["text"] = {"input_ids": ids, "attention_mask": mask}
        return batch

    return make
