"""Tiny ViLT fixtures shared by the multimodal tests (dim 32, 2 layers, 32 px, 8 px patches)."""

from __future__ import annotations

from pathlib import Path

import medpeft  # noqa: F401  (torchvision shim before transformers)
import pytest
import torch
from transformers import ViltConfig

from medpeft.backbones.vilt import build_tokenizer

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
WORDS = SPECIAL + ["left", "right", "eye", "normal", "lesion", "no", "yes"]


@pytest.fixture
def vilt_config() -> ViltConfig:
    return ViltConfig(**TINY_VILT)


@pytest.fixture
def tokenizer(tmp_path: Path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    return build_tokenizer(vocab)


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
