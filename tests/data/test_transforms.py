"""Image transforms: shapes, normalisation, determinism and seeding."""

import numpy as np
import pytest
import torch
from PIL import Image

from medpeft.data.transforms import build_transform
from medpeft.errors import ConfigError


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


def test_ei_policy_rotates_crops_and_squashes_eval_is_a_plain_resize():
    image = Image.fromarray(np.full((40, 60, 3), 120, dtype=np.uint8))
    torch.manual_seed(0)
    train = build_transform(16, mean=(0, 0, 0), std=(1, 1, 1), train=True, policy="ei")
    outs = torch.stack([train(image) for _ in range(8)])
    assert outs.shape == (8, 3, 16, 16)
    assert (outs == 0).any()  # black corners from the rotation
    centre = outs[:, :, 8, 8] / (120 / 255)
    assert centre.min() >= 0.7 * 0.7 * 0.7 - 0.05 and centre.max() <= 1.3 ** 2 + 0.05
    assert len({round(float(c), 4) for c in centre[:, 0]}) > 1  # colour scaled at random
    plain = build_transform(16, mean=(0, 0, 0), std=(1, 1, 1), keep_aspect=False)(image)
    assert torch.allclose(plain, torch.full((3, 16, 16), 120 / 255))
    with pytest.raises(ConfigError, match="data.augmentation"):
        build_transform(16, train=True, policy="autoaugment")
