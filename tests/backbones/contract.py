"""Checks every backbone family must pass, run on tiny random-init models of each library.

Each check takes a builder (a fresh native model, in eval mode, same weights on every
call) so that "before" and "after" :meth:`Backbone.prepare` are separate instances.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch import nn

from medpeft.backbones.base import Backbone, describe

Builder = Callable[[], nn.Module]


def projection_linears(backbone: Backbone) -> set[str]:
    """Names of every Linear a Projection of any block points at, checking each one's segment."""
    modules = dict(backbone.module.named_modules())
    names = set()
    for index in range(len(backbone.block_names())):
        for role, projection in backbone.projections(index):
            linear = modules.get(projection.module)
            assert isinstance(linear, nn.Linear), f"{role} of block {index}: {projection.module}"
            if projection.segment is not None:
                start, stop = projection.segment
                assert 0 <= start < stop <= linear.out_features
            names.add(projection.module)
    return names


def check_prepare(build: Builder, images: torch.Tensor) -> Backbone:
    """prepare() keeps outputs and state-dict keys, and the forward calls every named Linear."""
    native = build()
    before = describe(native).features(images)
    keys = list(native.state_dict())
    backbone = describe(build())
    backbone.prepare()
    backbone.prepare()  # idempotent
    calls = Counter()
    modules = dict(backbone.module.named_modules())
    for name in projection_linears(backbone):
        modules[name].register_forward_hook(lambda *_, name=name: calls.update([name]))
    torch.testing.assert_close(backbone.features(images), before, atol=1e-6, rtol=1e-6)
    assert set(calls) == projection_linears(backbone)
    assert set(calls.values()) == {1}
    assert list(backbone.module.state_dict()) == keys
    return backbone


def check_native_checkpoint_loads(build: Builder, images: torch.Tensor) -> None:
    """A state dict the library saved before prepare() loads strictly into a prepared model."""
    source = build()
    with torch.no_grad():
        for parameter in source.parameters():  # other weights than the target's
            parameter.add_(0.05 * torch.randn_like(parameter))
    saved = {k: v.clone() for k, v in source.state_dict().items()}
    target = describe(build())
    target.prepare()
    target.module.load_state_dict(saved, strict=True)
    torch.testing.assert_close(target.features(images), describe(source).features(images), atol=1e-6, rtol=1e-6)


def check_token_stream(backbone: Backbone, images: torch.Tensor, patches: int) -> None:
    """embed -> every block -> pool gives features(); the prefix precedes ``patches`` tokens."""
    tokens = backbone.embed(images)
    assert tokens.shape == (len(images), backbone.num_prefix_tokens + patches, tokens.shape[-1])
    for index in range(len(backbone.block_names())):
        tokens = backbone.run_block(index, tokens)
    features = backbone.features(images)
    assert features.shape == (len(images), backbone.width)
    torch.testing.assert_close(backbone.pool(tokens), features, atol=1e-5, rtol=1e-5)


def check_perturbation_reaches_output(backbone: Backbone, images: torch.Tensor, module: str) -> None:
    """A delta added to the output of Linear ``module`` (as an adapter would) changes the features."""
    before = backbone.features(images)
    linear = backbone.module.get_submodule(module)
    handle = linear.register_forward_hook(lambda _m, _i, out: out + 0.1 * torch.randn_like(out))
    try:
        after = backbone.features(images)
    finally:
        handle.remove()
    assert (after - before).abs().max() > 1e-3


def check_attention_weights(backbone: Backbone, images: torch.Tensor, tokens: int) -> None:
    """Recording attention keeps the features and gives one row-stochastic ``[B, heads, T, T]``
    map per block; nothing is recorded after the context."""
    with torch.no_grad():
        before = backbone.features(images)
        with backbone.attention_weights() as weights:
            during = backbone.features(images)
        backbone.features(images)
    torch.testing.assert_close(during, before, atol=1e-5, rtol=0)
    assert len(weights) == len(backbone.block_names())
    for weight in weights:
        assert weight.shape[0] == len(images) and weight.shape[2:] == (tokens, tokens)
        torch.testing.assert_close(weight.sum(-1), torch.ones(weight.shape[:-1]))


def check_token_feature_map(backbone: Backbone, images: torch.Tensor, grid: tuple[int, int]) -> None:
    """The patch tokens lie on the image's grid, row by row, after the prefix tokens."""
    with torch.no_grad():
        tokens = backbone.embed(images)
    features = backbone.feature_map(tokens, tuple(images.shape[-2:]))
    rows, cols = grid
    prefix = backbone.num_prefix_tokens
    assert backbone.capabilities.feature_map
    assert features.shape == (len(images), tokens.shape[-1], rows, cols)
    torch.testing.assert_close(features[:, :, 0, 1], tokens[:, prefix + 1])
    torch.testing.assert_close(features[:, :, 1, 0], tokens[:, prefix + cols])


def check_masked_stream(backbone: Backbone, images: torch.Tensor, junk_tokens: int = 3) -> None:
    """Tokens masked out of attention are as if absent for the others (<= 1e-5): with
    ``junk_tokens`` random tokens appended and masked, the real tokens leave every block
    as without them; sample 0 keeps its first junk token, which then does change them."""
    with torch.no_grad():
        real = backbone.embed(images)
        count = real.shape[1]
        junk = 3 * torch.randn(len(images), junk_tokens, real.shape[-1], generator=torch.Generator().manual_seed(2))
        stream = torch.cat([real, junk], 1)
        mask = torch.ones(stream.shape[:2], dtype=torch.bool)
        mask[:, count:] = False
        mask[0, count] = True
        alone, with_one, masked, unmasked = real, stream[:1, : count + 1], stream, stream
        for index in range(len(backbone.block_names())):
            alone = backbone.run_block(index, alone)
            with_one = backbone.run_block(index, with_one)
            masked = backbone.run_block(index, masked, key_mask=mask)
            unmasked = backbone.run_block(index, unmasked)
    torch.testing.assert_close(masked[1:, :count], alone[1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(masked[:1, : count + 1], with_one, atol=1e-5, rtol=0)
    assert (unmasked[:, :count] - alone).abs().amax() > 1e-3  # the junk matters when not masked (100x the tolerance)
    assert (with_one[:, :count] - alone[:1]).abs().amax() > 1e-3
    assert backbone.capabilities.masked_stream
