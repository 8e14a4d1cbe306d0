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
