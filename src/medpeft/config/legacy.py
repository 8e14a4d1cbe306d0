"""Configs written for medpeft 0.1 keep loading: old keys are mapped to the one schema.

0.1 had a second, multimodal schema marked ``run_type: multimodal`` whose defaults
differed (ViLT, 384 px, ``label`` as a 0/1 column, multi-label, 10% test split, no
augmentation, whole-image resize) and methods ``prompts-input`` /
``prompts-attention``. :func:`upgrade` drops ``run_type`` and writes those old
defaults explicitly, so such a config means what it meant before.
"""

from __future__ import annotations

from medpeft.errors import ConfigError

LEGACY_RUN_TYPE = "multimodal"
MULTIMODAL_DEFAULTS = {
    "model": {"kind": "vilt", "backbone": None, "img_size": 384},
    "data": {
        "label_cols": ["label"],
        "task": "multilabel",
        "test_fraction": 0.1,
        "augment": False,
        "resize": "squash",
    },
}
PROMPT_METHODS = {"prompts-input": "input", "prompts-attention": "attention"}


def upgrade(data: dict) -> dict:
    """Map a 0.1 config (raw YAML mapping, overrides applied) to the current schema."""
    data = dict(data)
    run_type = data.pop("run_type", None)
    if run_type is not None:
        if run_type != LEGACY_RUN_TYPE:
            raise ConfigError(
                f"run_type: {run_type!r} is not a medpeft 0.1 value; the key is no longer "
                "needed (one schema serves any number of modalities), delete it"
            )
        for section, defaults in MULTIMODAL_DEFAULTS.items():
            given = data.get(section) or {}
            data[section] = {**defaults, **given}
    placement = PROMPT_METHODS.get(data.get("method"))
    if placement is not None:
        data["method"] = "prompts"
        data["prompts"] = {"placement": placement, **(data.get("prompts") or {})}
    return data
