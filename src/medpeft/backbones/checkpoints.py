"""Which backbone weights a model was built from: sha256 of local files, repo id of hub weights.

An adapter only fits the backbone weights it was trained on, and a path names a file,
not its contents: the file may be replaced. :func:`backbone_identity` says what was
loaded: the sha256 of a local checkpoint (a ``save_pretrained`` folder: of its weight
files, in name order) or, for hub weights, the repo id (``@commit`` and the sha256 of the
downloaded file when the local hub cache holds it). Adapters and runs record it;
:func:`identity_mismatch` compares a record with what is loaded now.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from medpeft.hashing import file_sha256

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
# Files timm reads from a hub repo, in the order it tries them.
TIMM_HUB_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
TRANSFORMERS_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class BackboneIdentity:
    """What identifies backbone weights; None for what is unknown (a random backbone: both).

    Attributes:
        sha256: Of the local checkpoint file (a folder: of its weight files together).
        hub: Hub repo id of hub weights, ``repo@commit`` when the commit is known.
        source: The file or folder hashed (named in messages).
    """

    sha256: str | None = None
    hub: str | None = None
    source: str | None = None

    @property
    def known(self) -> bool:
        return self.sha256 is not None or self.hub is not None


def weights_sha256(path: str | Path) -> str | None:
    """sha256 of a checkpoint file; of a folder, over its weight files' names and digests in
    name order (None: a folder without weight files)."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        return None
    lines = "".join(f"{p.name} {file_sha256(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def local_weights(kind: str, name: str | None, weights: str | Path | None, pretrained: bool) -> Path | None:
    """The local file or folder the backbone's weights are read from, if any.

    ``weights`` when given; else a transformers backbone named by a local folder (and a ViLT
    one loaded ``pretrained`` from one), as `medpeft.model.build_model` reads them.
    """
    if weights is not None:
        return Path(weights)
    if name and (kind == "transformers" or (kind == "vilt" and pretrained)) and Path(name).is_dir():
        return Path(name)
    return None


def backbone_identity(
    kind: str, name: str | None, weights: str | Path | None, pretrained: bool, model: nn.Module | None = None
) -> BackboneIdentity:
    """The identity of the weights a backbone is (or was) built from (see the module docstring).

    Args:
        kind: ``timm``, ``transformers``, ``open_clip`` or ``vilt``.
        name: The backbone's name (a transformers name may be a local folder).
        weights: Local checkpoint given to the build.
        pretrained: Whether hub weights were asked for.
        model: The built model, read for the repo of hub weights.
    """
    local = local_weights(kind, name, weights, pretrained)
    if local is not None:
        return BackboneIdentity(sha256=weights_sha256(local), source=str(local.resolve()))
    if pretrained and model is not None:
        return hub_identity(kind, model)
    return BackboneIdentity()


def hub_identity(kind: str, model: nn.Module) -> BackboneIdentity:
    """Repo id of the hub weights a model holds: timm's ``pretrained_cfg``, a transformers
    (ViLT) config's name and commit; unknown for open_clip."""
    for module in model.modules():
        cfg = getattr(module, "pretrained_cfg", None)
        if kind == "timm" and isinstance(cfg, dict) and cfg.get("hf_hub_id"):
            files = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else TIMM_HUB_FILES
            return cached_hub_identity(cfg["hf_hub_id"], files)
        config = getattr(module, "config", None)
        repo = getattr(config, "_name_or_path", None)
        if kind in ("transformers", "vilt") and repo:  # transformers < 5 also kept the commit
            return cached_hub_identity(repo, TRANSFORMERS_HUB_FILES, getattr(config, "_commit_hash", None))
    return BackboneIdentity()


def cached_hub_identity(repo: str, files: tuple[str, ...], revision: str | None = None) -> BackboneIdentity:
    """``repo`` with the commit and sha256 of the first of ``files`` in the local hub cache, if there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return BackboneIdentity(hub=f"{repo}@{revision}" if revision else repo)
    for file in files:
        cached = try_to_load_from_cache(repo, file, revision=revision)
        if isinstance(cached, str):
            commit = Path(cached).parent.name  # .../snapshots/<commit>/<file>
            return BackboneIdentity(sha256=file_sha256(cached), hub=f"{repo}@{commit}", source=cached)
    return BackboneIdentity(hub=f"{repo}@{revision}" if revision else repo)


def identity_mismatch(
    recorded: BackboneIdentity, actual: BackboneIdentity, recorder: str = "the adapter"
) -> str | None:
    """How the weights loaded now differ from those ``recorder`` recorded; None if they agree or
    cannot be compared."""
    if recorded.sha256 and actual.sha256 and recorded.sha256 != actual.sha256:
        return f"{actual.source} has sha256 {actual.sha256}, {recorder} records sha256 {recorded.sha256}"
    if recorded.hub and actual.hub and not _same_repo(recorded.hub, actual.hub):
        return f"the hub weights are {actual.hub}, {recorder} records {recorded.hub}"
    return None


def _same_repo(recorded: str, actual: str) -> bool:
    """Same repo, and the same commit where both are known."""
    (repo_a, _, commit_a), (repo_b, _, commit_b) = recorded.partition("@"), actual.partition("@")
    return repo_a == repo_b and (not commit_a or not commit_b or commit_a == commit_b)
