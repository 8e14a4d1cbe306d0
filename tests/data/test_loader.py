"""Loaders of the one Dataset: batches, seeding, drop_last and class-balanced sampling."""

from collections import Counter

import pytest
from PIL import Image

from medpeft.data.collate import Collate
from medpeft.data.dataset import Dataset
from medpeft.data.loader import balanced_weights, build_loader
from medpeft.data.records import Record
from medpeft.data.transforms import build_transform
from medpeft.errors import ConfigError


def dataset(folder, targets):
    """One 24x40 image per target whose grey level is its index."""
    records = []
    for i, target in enumerate(targets):
        path = folder / f"{i}.png"
        if not path.is_file():
            Image.new("RGB", (40, 24), (i % 256,) * 3).save(path)
        records.append(Record(str(i), {"image": (str(path),)}, target))
    transform = build_transform(8, mean=(0, 0, 0), std=(1, 1, 1))
    return Dataset(records, ("image",), {"image": "image"}, {"image": transform})


def test_loader_batches_seeding_and_drop_last(tmp_path):
    data = dataset(tmp_path, [i % 2 for i in range(10)])
    inputs, targets = next(iter(build_loader(data, 4, train=False, collate_fn=Collate())))
    assert inputs["images"]["image"].shape == (4, 3, 8, 8) and targets.tolist() == [0, 1, 0, 1]
    assert len(build_loader(data, 4, train=False)) == 3
    assert len(build_loader(data, 4, train=True)) == 2
    assert len(build_loader(data, 16, train=True)) == 1

    def order(seed):
        batches = build_loader(data, 5, True, seed=seed, collate_fn=Collate())
        return [round(x.item() * 255) for inputs, _ in batches for x in inputs["images"]["image"][:, 0, 0, 0]]

    assert order(1) == order(1) and order(1) != order(2) and sorted(order(1)) == list(range(10))
    with pytest.raises(ConfigError, match="batch_size"):
        build_loader(data, 0, train=True)


def test_balanced_sampler_draws_classes_about_equally(tmp_path):
    data = dataset(tmp_path, [0] * 90 + [1] * 10)
    loader = build_loader(data, 50, train=True, balanced=True, seed=0, collate_fn=Collate())
    counts = Counter(t for _ in range(4) for _, batch in loader for t in batch.tolist())
    assert abs(counts[0] - counts[1]) < 0.2 * sum(counts.values())
    plain = build_loader(data, 50, train=True, collate_fn=Collate())
    assert Counter(t for _, batch in plain for t in batch.tolist())[1] <= 10
    with pytest.raises(ConfigError, match="needs dataset.targets"):
        build_loader(list(range(4)), 2, train=True, balanced=True)


def test_balanced_weights_multilabel_use_rarest_positive_label():
    weights = balanced_weights([(1.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 0.0)])
    # label 0 positive 3x, label 1 once, one normal sample
    assert weights.tolist() == pytest.approx([1 / 3, 1.0, 1 / 3, 1.0])
    assert balanced_weights([0, 0, 1]).tolist() == pytest.approx([0.5, 0.5, 1.0])


def test_oversample_repeats_every_class_up_to_the_largest(tmp_path):
    targets = [0] * 5 + [1] * 2 + [2]
    data = dataset(tmp_path, targets)
    loader = build_loader(data, 4, train=True, balanced="oversample", seed=3)
    epoch = [index for index, _ in loader.sampler]  # (index, seed of its augmentation)
    assert len(loader.sampler) == 15 and len(epoch) == 15
    assert Counter(targets[i] for i in epoch) == {0: 5, 1: 5, 2: 5}
    assert sorted(i for i in epoch if targets[i] == 0) == [0, 1, 2, 3, 4]  # the largest class once
    assert Counter(i for i in epoch if targets[i] == 1) in (Counter({5: 3, 6: 2}), Counter({5: 2, 6: 3}))
    assert epoch != list(loader.sampler)  # reshuffled every epoch
