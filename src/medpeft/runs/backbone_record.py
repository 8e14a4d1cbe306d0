"""Which backbone weights a run started from (``backbone_weights.json``), checked on resume.

The trainer's checkpoint holds adapter and optimizer state only: resumed onto other backbone
weights (the file at ``model.weights`` replaced, another hub commit), the run would go on
training an adapter for weights it was not started on and describe the result as one run.
The identity (`medpeft.backbones.checkpoints.backbone_identity`: the sha256 of a local
checkpoint, the repo of hub weights) is recorded when training starts; a resumed run compares
the sha256 of its local checkpoint before anything in the folder is rewritten.
"""

from __future__ import annotations

import dataclasses
import json

from medpeft.atomic import atomic_write_text
from medpeft.backbones.checkpoints import BackboneIdentity, identity_mismatch
from medpeft.errors import ConfigError
from medpeft.run_layout import RunLayout

OTHER_WEIGHTS = ("restore those weights to resume, or start over with --no-resume or a new output_dir")


def write_backbone_record(layout: RunLayout, identity: BackboneIdentity) -> None:
    """Record the weights the run is trained from."""
    atomic_write_text(layout.backbone_record, json.dumps(dataclasses.asdict(identity), indent=1))


def check_backbone_record(layout: RunLayout, identity: BackboneIdentity) -> None:
    """ConfigError if the run recorded other backbone weights than ``identity`` (nothing to
    compare for a run that recorded none, an older medpeft's)."""
    path = layout.backbone_record
    if not path.is_file():
        return
    try:
        recorded = BackboneIdentity(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
        raise ConfigError(f"{path}: not a backbone record medpeft wrote ({error!r})") from error
    mismatch = identity_mismatch(recorded, identity, recorder="the run")
    if mismatch is not None:
        raise ConfigError(
            f"{layout.root}: the backbone weights changed since the run started: {mismatch}; {OTHER_WEIGHTS}"
        )
