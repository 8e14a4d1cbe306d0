"""Early intervention ("EI", arXiv 2603.17514): reference modalities steer the target from block 0.

For every target modality ``m`` each other modality ``r`` gives one intervention
token: the final [CLS] of ``r``'s reference backbone (after the final norm,
max-pooled over ``r``'s images) through a projector of the pair ``r -> m``
(``LN -> Linear(dim, dim/2) -> GELU -> Linear(dim/2, dim)``). The ``M - 1`` tokens
are appended at the END of ``m``'s token sequence after patch + position embedding
and ``norm_pre`` (so they skip it, and get no position embedding), before block 0.
The target backbone then runs all blocks; its [CLS] (averaged over ``m``'s images)
goes to ``m``'s head. A gate ``Linear(M*dim -> M)`` on the detached target features
gives softmax weights ``alpha``; the fused logits are ``sum_m alpha_m * detach(logits_m)``,
so the fused loss trains the gate only.

Backbones (the paper's are timm ViTs): every copy is a per-modality classifier of
any backbone whose blocks take a key mask (capability ``masked_stream``: timm ViTs,
transformers ViT / DINOv2 / CLIP, open_clip ViTs): a timm ViT with its own ``head``, or
a :class:`~medpeft.fusion.pooled.PooledClassifier` (``backbone`` + ``head``). Where the
pooled features are narrower than the tokens (an open_clip projection), the projectors
map the reference's features to the target's token width.

Beyond the paper (whose code asserts every modality): a modality missing in a sample
drops its intervention tokens (masked out of attention, exactly as if absent) and its
gate entry; a sample needs at least one modality.

:func:`ei_loss` is the training objective: ``1 * crit(fused) + 1 * sum_m crit(target_m)
+ 0.3 * sum_m crit(reference_m) + 0.1 * CE(gate, best modality)``, the best modality of
a sample being ``argmin_m crit_m * prior_m`` over its present modalities. The public
code applies CE to the gate's softmax (a double softmax); ``public_gate=True`` keeps that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medpeft.backbones.base import Backbone, describe
from medpeft.errors import ConfigError, DataError

LOSS_WEIGHTS = (1.0, 1.0, 0.3, 0.1)  # fused, targets, references, gate


class InterventionProjector(nn.Sequential):
    """``LN -> Linear(dim, hidden) -> GELU -> Linear(hidden, out)`` (hidden: dim / 2; out: dim
    unless the token stream is wider than the pooled features)."""

    def __init__(self, dim: int, hidden: int | None = None, out: int | None = None) -> None:
        hidden = hidden or dim // 2
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim))


@dataclass
class EIOutput:
    """Everything :func:`ei_loss` needs.

    Attributes:
        fused: ``[B, C]`` gate-weighted detached target logits.
        targets: ``[M, B, C]`` logits of each modality's target backbone.
        references: ``[M, B, C]`` logits of each modality's reference backbone.
        gate: ``[B, M]`` gate logits (missing modalities at ``-inf``).
        present: ``Bool[B, M]``.
    """

    fused: torch.Tensor
    targets: torch.Tensor
    references: torch.Tensor
    gate: torch.Tensor
    present: torch.Tensor

    @property
    def logits(self) -> torch.Tensor:
        """What evaluation and prediction read: the fused logits."""
        return self.fused


class EarlyIntervention(nn.Module):
    """EI over ``M`` image modalities, each with a target and a reference classifier.

    Args:
        targets: modality -> classifier whose backbone receives intervention tokens: a
            timm ViT (classifier ``head``) or a module with one backbone view and a
            ``head`` (:class:`~medpeft.fusion.pooled.PooledClassifier`).
        references: modality -> classifier of the same kind giving the reference
            features and logits (stage 1's model of that modality).

    Raises:
        ConfigError: fewer than 2 modalities, or copies missing.
        CapabilityError: a backbone whose blocks take no key mask.
    """

    def __init__(self, targets: Mapping[str, nn.Module], references: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.modalities = tuple(targets)
        if len(self.modalities) < 2 or set(references) != set(self.modalities):
            raise ConfigError(
                f"early intervention needs >= 2 modalities, each with a target and a reference "
                f"backbone; got targets {list(targets)}, references {list(references)}"
            )
        self.targets = nn.ModuleDict(dict(targets))
        self.references = nn.ModuleDict({m: references[m] for m in self.modalities})
        inner = {name: inner_backbone(classifier) for name, classifier in self.named_encoders().items()}
        self.views = {name: view for name, (_, view) in inner.items()}
        self.prefixes = {name: f"{name}.{prefix}" if prefix else name for name, (prefix, _) in inner.items()}
        for view in self.views.values():
            view.require("masked_stream", "early intervention")
        first = self.views[f"targets.{self.modalities[0]}"]
        dim, self.num_classes = first.width, self.targets[self.modalities[0]].head.out_features
        self.projectors = nn.ModuleDict({
            pair_name(r, m): InterventionProjector(dim, out=first.token_width)
            for m in self.modalities for r in self.others(m)
        })
        self.gate = nn.Linear(len(self.modalities) * dim, len(self.modalities))
        heads = [f"{copy}.{m}.head." for copy in ("targets", "references") for m in self.modalities]
        self.trained_prefixes = ("projectors.", "gate.", *heads)

    def named_encoders(self) -> dict[str, nn.Module]:
        """Every modality's target and reference classifier, by qualified name."""
        return {**{f"targets.{m}": v for m, v in self.targets.items()},
                **{f"references.{m}": v for m, v in self.references.items()}}

    def backbone_views(self) -> dict[str, Backbone]:
        """The backbone views of :meth:`named_encoders`, by the qualified name of their backbone."""
        return {self.prefixes[name]: view for name, view in self.views.items()}

    def others(self, modality: str) -> list[str]:
        """The reference modalities of a target, in modality order."""
        return [r for r in self.modalities if r != modality]

    def forward(self, batch: Mapping) -> EIOutput:
        images, present = batch["images"], batch.get("present")
        batch_size = images[self.modalities[0]].shape[0]
        if present is None:
            present = torch.ones(batch_size, len(self.modalities), dtype=torch.bool)
        present = present.to(images[self.modalities[0]].device)
        if not present.any(1).all():
            raise DataError("a sample has no modality at all; early intervention needs one")
        cls, ref_logits = {}, []
        for m in self.modalities:
            features = self.per_image(self.views[f"references.{m}"], images[m])  # [B, K, dim]
            cls[m] = features.amax(1)  # max-pooled over the modality's images
            ref_logits.append(self.references[m].head(features).amax(1))
        features, logits = [], []
        for m in self.modalities:
            tokens = torch.stack([self.projectors[pair_name(r, m)](cls[r]) for r in self.others(m)], 1)
            keep = present[:, [self.modalities.index(r) for r in self.others(m)]]
            feature = self.intervened(self.views[f"targets.{m}"], images[m], tokens, keep)
            features.append(feature)
            logits.append(self.targets[m].head(feature))
        stacked = torch.stack(logits)  # [M, B, C]
        gate = self.gate(torch.cat(features, 1).detach()).masked_fill(~present, float("-inf"))
        alpha = gate.softmax(1)
        fused = torch.einsum("bm,mbc->bc", alpha, stacked.detach())
        return EIOutput(fused, stacked, torch.stack(ref_logits), gate, present)

    @staticmethod
    def per_image(view: Backbone, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled (``pre_logits``) features ``[B, K, dim]`` of ``[B, (K,) 3, H, W]`` images."""
        flat = pixels.flatten(0, pixels.dim() - 4)
        return view.features(flat).unflatten(0, (pixels.shape[0], -1))

    @staticmethod
    def intervened(
        view: Backbone, pixels: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """Target features ``[B, dim]``: the images' [CLS] after all blocks, with the
        intervention tokens ``[B, T, dim]`` appended before block 0, averaged over images.

        ``keep`` ``Bool[B, T]``: tokens of missing references are masked out of attention.
        """
        batch = pixels.shape[0]
        flat = pixels.flatten(0, pixels.dim() - 4)
        per_sample = flat.shape[0] // batch
        x = view.embed(flat)
        length = x.shape[1]
        x = torch.cat([x, tokens.repeat_interleave(per_sample, 0).to(x.dtype)], 1)
        mask = torch.ones(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device)
        mask[:, length:] = keep.repeat_interleave(per_sample, 0)
        for index in range(len(view.block_names())):
            x = view.run_block(index, x, key_mask=mask)
        feats = view.pool(x[:, :length])
        return feats.unflatten(0, (batch, per_sample)).mean(1)


def inner_backbone(classifier: nn.Module) -> tuple[str, Backbone]:
    """``(name of the backbone inside classifier, its view)``: the classifier itself (``""``)
    for a timm ViT, the one backbone view of a fusion model (``backbone`` of a PooledClassifier)."""
    views = getattr(classifier, "backbone_views", None)
    if views is None:
        return "", describe(classifier)
    [(prefix, view)] = views().items()
    return prefix, view


def pair_name(reference: str, target: str) -> str:
    """Key of the projector of ``reference -> target``."""
    return f"{reference}_to_{target}"


def ei_loss(
    output: EIOutput,
    labels: torch.Tensor,
    task: str,
    priors: Sequence[float] | None = None,
    weights: Sequence[float] = LOSS_WEIGHTS,
    public_gate: bool = False,
) -> torch.Tensor:
    """The EI objective (module docstring); per-modality terms skip samples missing it.

    Args:
        output: The model's output.
        labels: Class indices ``[B]`` (multiclass) or 0/1 ``[B, C]`` (multilabel).
        task: ``multiclass`` (CE) or ``multilabel`` (BCE-with-logits).
        priors: Multiplier of each modality's criterion when choosing the gate target
            (paper: ``[1, 0.001]``, MRNet ``[1, 1, 0.001]``); default all ones.
        weights: ``(fused, targets, references, gate)`` loss weights.
        public_gate: Apply the gate CE to its softmax, as the public code does.
    """
    present = output.present
    priors_t = torch.as_tensor(
        priors or [1.0] * present.shape[1], dtype=output.targets.dtype, device=labels.device
    )
    per_target = torch.stack([criterion(t, labels, task) for t in output.targets], 1)  # [B, M]
    per_reference = torch.stack([criterion(r, labels, task) for r in output.references], 1)
    masked = present.float()
    target_term = (per_target * masked).sum(1).mean()
    reference_term = (per_reference * masked).sum(1).mean()
    choice = (per_target.detach() * priors_t).masked_fill(~present, float("inf")).argmin(1)
    gate_term = F.cross_entropy(output.gate.softmax(1) if public_gate else output.gate, choice)
    fused_term = criterion(output.fused, labels, task).mean()
    terms = (fused_term, target_term, reference_term, gate_term)
    return sum(w * term for w, term in zip(weights, terms))


def criterion(logits: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    """Per-sample CE (multiclass) or mean BCE-with-logits over labels (multilabel), ``[B]``."""
    if task == "multiclass":
        return F.cross_entropy(logits, labels, reduction="none")
    return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").mean(1)
