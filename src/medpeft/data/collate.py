"""Batch `medpeft.data.dataset.Dataset` items into ``(inputs, targets)``.

``inputs = {"images": {m: Tensor[B, 3, H, W] or [B, K, 3, H, W]}, "present":
Bool[B, M]}``, plus ``"text": {"input_ids", "attention_mask"}`` (LongTensor[B, L])
when the items carry text; ``targets`` stacks the item targets. Items a dataset
skipped (``{"skipped": message}``, see `medpeft.data.dataset`) are left out and
their messages listed in ``inputs["skipped"]``; a batch of skipped items only is
``({"skipped": [...]}, targets[:0])``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from medpeft.data.dataset import Item
from medpeft.errors import ConfigError


class Collate:
    """A DataLoader ``collate_fn``; tokenises text only when the items carry it (picklable).

    Args:
        tokenizer: Hugging Face tokenizer for the text modality (e.g. bert-base-uncased).
        max_text_len: tokens per text, padded/truncated (ViLT: 40).
    """

    def __init__(self, tokenizer: Callable | None = None, max_text_len: int = 40) -> None:
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len

    def __call__(self, batch: Sequence[Item]) -> tuple[dict, torch.Tensor]:
        skipped = [inputs["skipped"] for inputs, _ in batch if "skipped" in inputs]
        if skipped:
            kept = [item for item in batch if "skipped" not in item[0]]
            if not kept:
                return {"skipped": skipped}, torch.stack([t for _, t in batch])[:0]
            inputs, targets = self(kept)
            return {**inputs, "skipped": skipped}, targets
        items, targets = zip(*batch)
        inputs: dict = {
            "images": {
                m: torch.stack([it["images"][m] for it in items]) for m in items[0]["images"]
            },
            "present": torch.stack([it["present"] for it in items]),
        }
        if "sample" in items[0]:  # where each sample comes from, for error messages
            inputs["samples"] = [it["sample"] for it in items]
        if "text" in items[0]:
            inputs["text"] = self._tokenize([it["text"] for it in items])
        return inputs, torch.stack(targets)

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            raise ConfigError("the dataset has a text modality: pass a tokenizer to Collate")
        enc = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.max_text_len,
            return_tensors="pt",
        )
        return {
            "input_ids": enc["input_ids"].long(),
            "attention_mask": enc["attention_mask"].long(),
        }
