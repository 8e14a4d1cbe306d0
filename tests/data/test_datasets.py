"""Transforms, dataset items and loaders: shapes, dtypes, seeding and class-balanced sampling."""

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from medpeft.data.datasets import ImageClassificationDataset, balanced_weights, build_loader
from medpeft.data.manifest import Manifest, Sample
from medpeft.data.transforms import build_transform
from medpeft.errors import ConfigError, DataError


def fake_loader(path):
    """A 24x40 image whose grey level is the number in the path."""
    return Image.new("RGB", (40, 24), (int(path),) * 3)


def dataset(targets, task="multiclass", classes=("a", "b"), size=8):
    samples = [Sample(str(i % 256), t) for i, t in enumerate(targets)]
    return ImageClassificationDataset(
        samples, classes, task, build_transform(size, mean=(0, 0, 0), std=(1, 1, 1)), fake_loader
    )


def test_eval_transform_is_deterministic_and_normalised():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    transform = build_transform(16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = transform(image)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert torch.equal(out, transform(image)) and out.min() >= -1 and out.max() <= 1
    squashed = build_transform(16, keep_aspect=False)(image)
    assert squashed.shape == (3, 16, 16) and not torch.equal(squashed, out)


def test_train_transform_is_random_but_seedable():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    transform = build_transform(16, train=True, interpolation="bilinear")
    torch.manual_seed(0)
    first = transform(image)
    torch.manual_seed(0)
    assert first.shape == (3, 16, 16) and torch.equal(first, transform(image))
    assert not torch.equal(first, transform(image))
    with pytest.raises(ConfigError, match="interpolation"):
        build_transform(16, interpolation="lanczos9")


def test_items_multiclass_and_multilabel():
    image, target = dataset([1, 0])[0]
    assert image.shape == (3, 8, 8) and target.dtype == torch.long and target.ndim == 0
    assert target.item() == 1 and image.mean().item() == pytest.approx(0.0)
    _, target = dataset([(1.0, 0.0, 1.0)], "multilabel", ("x", "y", "z"))[0]
    assert target.dtype == torch.float32 and target.tolist() == [1.0, 0.0, 1.0]


def test_bad_targets_are_rejected():
    with pytest.raises(DataError, match="target 2 does not fit a multiclass task with 2 classes"):
        dataset([0, 2])
    with pytest.raises(DataError, match="multilabel"):
        dataset([(1.0,)], "multilabel")


def test_from_manifest():
    manifest = Manifest({"train": [Sample("p.png", 1)]}, ["a", "b"], "multiclass")
    data = ImageClassificationDataset.from_manifest(manifest, "train", build_transform(8))
    assert len(data) == 1 and data.targets == [1]


def test_loader_batches_seeding_and_drop_last():
    data = dataset([i % 2 for i in range(10)])
    images, targets = next(iter(build_loader(data, 4, train=False)))
    assert images.shape == (4, 3, 8, 8) and targets.tolist() == [0, 1, 0, 1]
    assert len(build_loader(data, 4, train=False)) == 3
    assert len(build_loader(data, 4, train=True)) == 2
    assert len(build_loader(data, 16, train=True)) == 1

    def order(seed):
        batches = build_loader(data, 5, True, seed=seed)
        return [round(x.item() * 255) for images, _ in batches for x in images[:, 0, 0, 0]]

    assert order(1) == order(1) and order(1) != order(2) and sorted(order(1)) == list(range(10))


def test_balanced_sampler_draws_classes_about_equally():
    data = dataset([0] * 90 + [1] * 10)
    loader = build_loader(data, 50, train=True, balanced=True, seed=0)
    counts = Counter(t for _ in range(4) for _, batch in loader for t in batch.tolist())
    assert abs(counts[0] - counts[1]) < 0.2 * sum(counts.values())
    plain = Counter(t for _, batch in build_loader(data, 50, train=True) for t in batch.tolist())
    assert plain[1] <= 10


def test_balanced_weights_multilabel_use_rarest_positive_label():
    weights = balanced_weights([(1.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 0.0)])
    # label 0 positive 3x, label 1 once, one normal sample
    assert weights.tolist() == pytest.approx([1 / 3, 1.0, 1 / 3, 1.0])
    assert balanced_weights([0, 0, 1]).tolist() == pytest.approx([0.5, 0.5, 1.0])
