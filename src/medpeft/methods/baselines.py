"""Baselines on the same trainer: linear probe (head only) and full fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass

from medpeft.methods.base import Method


@dataclass
class NoSettings:
    """These methods have no hyper-parameters of their own."""


class LinearProbe(Method):
    """Only the head (and the fusion's new parameters) train."""

    name = "linear"
    settings_type = NoSettings


class FullFineTuning(Method):
    """Every parameter trains."""

    name = "full"
    settings_type = NoSettings
    trains_everything = True
