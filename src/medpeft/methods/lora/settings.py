"""LoRA hyper-parameters and their checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from medpeft.methods.base import check_blocks, is_int, is_number, require


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (MeLo defaults: q and v, r=4, alpha=4).

    ``section`` is the config section the error messages name (a subclass with the
    same fields, such as DoRA's, sets its own).
    """

    section: ClassVar[str] = "lora"
    targets: Sequence[str] = ("q", "v")
    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    blocks: Sequence[int] | None = None

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        self.blocks = None if self.blocks is None else tuple(self.blocks)
        key = self.section
        require(bool(self.targets), f"{key}.targets", "at least one target name", self.targets)
        require(is_int(self.rank) and self.rank >= 1, f"{key}.rank", "an integer >= 1", self.rank)
        require(is_number(self.alpha) and self.alpha > 0, f"{key}.alpha", "a number > 0", self.alpha)
        self.alpha = float(self.alpha)
        ok = is_number(self.dropout) and 0 <= self.dropout < 1
        require(ok, f"{key}.dropout", "a number in [0, 1)", self.dropout)
        check_blocks(f"{key}.blocks", self.blocks)
