"""DoRA hyper-parameters: LoRA's fields, defaults and checks under the ``dora`` section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from medpeft.methods.lora.settings import LoraSettings


@dataclass
class DoraSettings(LoraSettings):
    """DoRA hyper-parameters (LoRA's defaults, so DoRA is a drop-in: q and v, r=4, alpha=4)."""

    section: ClassVar[str] = "dora"
