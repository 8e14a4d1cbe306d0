"""Missing-aware prompts ("MAP", Lee et al., CVPR 2023), the MoRA paper's baseline.

One learned prompt set per presence pattern (two modalities: complete,
text-missing, image-missing; ``M`` modalities: every non-empty pattern), each
``[num_layers, length, dim]``, chosen per sample from the presence mask.
Placements, applied by the backbone while it runs its blocks one by one
(:class:`medpeft.backbones.vilt.ViltClassifier`):

    ``input``: before block ``i < num_layers`` the layer's ``length`` prompt
    tokens are prepended to the sequence and stay there (after 6 layers, 96
    extra tokens); the classifier pools the first non-prompt token.
    ``attention``: block ``i < num_layers`` attends to ``length / 2`` extra key
    and ``length / 2`` extra value tokens (prefix tuning); the prompts are used
    as keys/values directly, not passed through the key/value projections.

Initialisation ``normal(std=0.02)`` (the public code starts from zeros with a
different row set to one per pattern).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from medpeft.errors import ConfigError

PLACEMENTS = ("input", "attention")


def presence_patterns(num_modalities: int) -> list[tuple[bool, ...]]:
    """Every non-empty presence pattern, complete first (two modalities: TT, TF, FT)."""
    patterns = itertools.product((True, False), repeat=num_modalities)
    return [p for p in patterns if any(p)]


def pattern_codes(present: torch.Tensor) -> torch.Tensor:
    """Bit code of each row of a presence mask ``Bool[B, M]`` (bit ``m`` = modality ``m``)."""
    bits = 2 ** torch.arange(present.shape[1], device=present.device)
    return (present.long() * bits).sum(1)


class MissingAwarePrompts(nn.Module):
    """Learned prompts per presence pattern, ``prompts`` ``[patterns, layers, length, dim]``.

    Args:
        num_modalities: ``M``, columns of the presence mask.
        dim: Token width.
        num_layers: Prompted blocks ``0 .. num_layers - 1``.
        length: Prompt tokens per layer (``attention``: half keys, half values).
        placement: ``"input"`` or ``"attention"``.
    """

    def __init__(
        self,
        num_modalities: int,
        dim: int,
        num_layers: int = 6,
        length: int = 16,
        placement: str = "input",
    ) -> None:
        super().__init__()
        if placement not in PLACEMENTS:
            raise ConfigError(f"prompt placement must be one of {PLACEMENTS}, got {placement!r}")
        if length < 1 or num_layers < 1 or (placement == "attention" and length % 2):
            raise ConfigError(
                f"prompt length {length} and layers {num_layers} must be >= 1 "
                "(attention placement: an even length, half keys and half values)"
            )
        self.placement = placement
        self.patterns = presence_patterns(num_modalities)
        self.prompts = nn.Parameter(torch.randn(len(self.patterns), num_layers, length, dim) * 0.02)
        lookup = torch.full((2**num_modalities,), -1, dtype=torch.long)
        for row, pattern in enumerate(self.patterns):
            lookup[pattern_codes(torch.tensor([pattern]))] = row
        self.register_buffer("lookup", lookup, persistent=False)

    def pattern_index(self, present: torch.Tensor) -> torch.Tensor:
        """Row of the prompt set for each sample, ``Long[B]``."""
        expected = len(self.patterns[0])
        if present.shape[1] != expected:
            raise ValueError(f"presence mask has {present.shape[1]} columns, not {expected}")
        rows = self.lookup[pattern_codes(present)]
        if (rows < 0).any():
            raise ValueError("a sample has no modality at all; missing-aware prompts need one")
        return rows

    def forward(self, present: torch.Tensor) -> torch.Tensor:
        """Each sample's prompts, ``[B, num_layers, length, dim]``."""
        return self.prompts[self.pattern_index(present)]


def split_key_value(prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention placement: first half of the tokens are keys, second half values."""
    half = prompts.shape[1] // 2
    return prompts[:, :half], prompts[:, half:]
