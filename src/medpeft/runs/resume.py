"""Rerunning ``medpeft train`` into an existing run folder.

The same command resumes an interrupted run (the trainer restores its checkpoint)
and leaves a finished one untouched: its stored ``report.json`` is shown again and
nothing is rewritten. Settings that change what was trained are refused with the
keys that differ, so a folder never holds weights trained one way described
another way; so is changed data (`medpeft.runs.fingerprint`). Only `FREE_KEYS` may
differ, as they do not change what is trained: ``name`` and ``output_dir`` (naming),
``train.log_every`` and ``train.tensorboard`` (logging), ``data.check_images`` (a check
before training), ``data.num_workers`` (each sample's random augmentation is seeded by
its position in the epoch, not by the worker that reads it) and ``train.device`` (a run
may resume on another GPU; ``auto`` picks a device per machine anyway, so the last
digits of the scores may differ). ``train.epochs`` may grow, to continue training, but
not shrink.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from medpeft.atomic import atomic_write_text
from medpeft.config import RunConfig, config_dict, load_config
from medpeft.errors import ConfigError
from medpeft.run_layout import RunLayout

EPOCHS = "train.epochs"
FREE_KEYS = (
    "name", "output_dir", EPOCHS, "train.device", "train.log_every", "train.tensorboard",
    "data.num_workers", "data.check_images",
)
MAX_LISTED = 6


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config data as ``{"section.key": value}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def changed_keys(
    old: RunConfig, new: RunConfig, free: Sequence[str] = FREE_KEYS
) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two configs, except ``free``: key -> (old, new)."""
    before, after = flatten(config_dict(old)), flatten(config_dict(new))
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if key not in free and before.get(key) != after.get(key)
    }


def check_resume(config: RunConfig, layout: RunLayout) -> None:
    """Raise ConfigError if ``layout`` holds a run trained with other settings (or more epochs)."""
    if not layout.config.is_file():
        return
    saved = load_config(layout.config, saved_run=True)
    changed = changed_keys(saved, config)
    if config.train.epochs < saved.train.epochs:  # epochs may only grow
        changed = dict(sorted({**changed, EPOCHS: (saved.train.epochs, config.train.epochs)}.items()))
    if changed:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changed.items())[:MAX_LISTED])
        more = f" (and {len(changed) - MAX_LISTED} more)" if len(changed) > MAX_LISTED else ""
        raise ConfigError(
            f"{layout.root} holds a run with other settings ({shown}{more}); rerun with its "
            "settings to resume it, or start over with --no-resume or a new output_dir"
        )


def finished_report(config: RunConfig, layout: RunLayout) -> dict | None:
    """The stored report of a run that finished with ``config``'s epochs, else None."""
    if not layout.report.is_file():
        return None
    report = json.loads(layout.report.read_text(encoding="utf-8"))
    return report if report.get("epochs") == config.train.epochs else None


def write_report(layout: RunLayout, report: dict) -> None:
    """Mark the run finished: its report, written last and atomically."""
    atomic_write_text(layout.report, json.dumps(report, indent=2))
