"""``medpeft explain``: where an adapter looks, per image modality, on any backbone family.

Up to two maps per image, over the backbone's patch grid or feature map:

- **Attention rollout** (Abnar & Zuidema, 2020, https://arxiv.org/abs/2005.00928),
  for backbones whose attention weights can be read (capability ``attention_maps``:
  timm ViTs, transformers encoders; :meth:`Backbone.attention_weights`): each block's
  attention, averaged over heads, plus the identity for the residual path
  (``0.5 A + 0.5 I``, rows renormalised), multiplied through the blocks; the pooled
  token's row (the [CLS] token, or the mean of the patch rows for average pooling)
  says how much each input token flows into the prediction. Other backbones (Swin,
  ConvNeXt, open_clip towers, EVA) get no rollout, and the output says so.
- **Grad-CAM**, class-specific (for the explained class's logit ``y``):

  - with attention maps, the gradient-weighted attention of the last block (Chefer
    et al., 2021, https://arxiv.org/abs/2103.15679): ``mean_h ReLU(dy/dA_h * A_h)``,
    read at the pooled token's row like the rollout. Two classic Grad-CAM forms were
    tried on timm ViTs and dropped: on the patch tokens entering the last block it
    missed the label-carrying patch of a tiny trained ViT, and with heads as channels
    (``ReLU(sum_h w_h A_h)``, ``w_h`` the mean gradient) it is all zero whenever
    every head's weight is negative, which happened for most demo images.
  - otherwise Grad-CAM (Selvaraju et al., 2017, https://arxiv.org/abs/1610.02391) on
    the feature map ``F`` (capability ``feature_map``, :meth:`Backbone.feature_map`) at
    the last block: its *input* for token streams (its output patch tokens never reach
    a pooled class token), its output for hierarchical models (Swin: the last stage's
    tokens on their grid; ConvNeXt: the last stage's feature map). Each position's
    channels are weighted by their own gradient, ``ReLU(sum_c dy/dF_c * F_c)``
    (HiResCAM, Draelos & Carin, 2020, https://arxiv.org/abs/2011.08891), not by the
    channel's mean gradient: with a global average pool and a linear head (ConvNeXt)
    both are the same map, and on tiny models trained to find a planted bright patch
    the mean-gradient form missed it on open_clip towers (0-9% of samples, 4 seeds)
    and on one Swin seed of four, where this form found it on every sample.

  The activation Grad-CAM starts from (the last block's input, or its output for
  hierarchical models) is detached into a leaf that requires gradients, so frozen
  backbones (a linear probe) get maps too.

Works for one image modality on every family, and on timm ViTs for token-concatenation
fusion (every modality's patches in one stream) and late fusion (one ViT per modality);
ViLT and early-intervention models are refused. Each sample gets one PNG per modality
(input and its overlays) and an entry in ``explain.json``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medpeft.adapters_io.config import AdapterConfig
from medpeft.adapters_io.folder import load_adapter
from medpeft.atomic import atomic_write_text
from medpeft.backbones.base import Backbone, CapabilityError, describe
from medpeft.backbones.timm_vit import TimmViT
from medpeft.data.records import Record
from medpeft.errors import ConfigError, DataError, did_you_mean
from medpeft.fusion.concat import MultiStreamViT
from medpeft.fusion.late import LateFusion
from medpeft.fusion.pooled import PooledClassifier
from medpeft.fusion.single import SingleStream
from medpeft.reports.figures import new_figure, save_png
from medpeft.runs.predict import UNKNOWN_TARGET, Predictions, records_loader
from medpeft.train.evaluation import logits_of, to_device
from medpeft.train.losses import to_scores

RESIDUAL = 0.5
JSON_NAME = "explain.json"
ROLLOUT, GRAD_CAM = "attention rollout", "Grad-CAM"


@dataclass(frozen=True)
class Span:
    """The patch tokens of one modality in a token sequence.

    ``grid`` ``None``: every token after the prefix, laid out by the backbone's
    :meth:`~medpeft.backbones.base.Backbone.feature_map` on the image's grid.
    """

    modality: str
    start: int
    grid: tuple[int, int] | None = None

    @property
    def stop(self) -> int:
        return self.start + self.grid[0] * self.grid[1]


@dataclass
class Stream:
    """One backbone of a model and the modalities whose patches it reads."""

    view: Backbone
    spans: list[Span]
    attentions: list[torch.Tensor] = field(default_factory=list)
    site: torch.Tensor | None = None  # Grad-CAM's activation at the last block, a leaf keeping its gradient

    @property
    def reads_attention(self) -> bool:
        return self.view.capabilities.attention_maps

    @property
    def num_prefix(self) -> int:
        return self.view.num_prefix_tokens


def streams_of(model: nn.Module) -> list[Stream]:
    """The backbones of a model and the token span of each image modality.

    Raises:
        ConfigError: a fusion explain does not read (ViLT, early intervention), or a
            backbone without a feature map for Grad-CAM.
    """
    if isinstance(model, (SingleStream, PooledClassifier)):
        view = _view(model) if isinstance(model, SingleStream) else model.view
        streams = [Stream(view, [Span(model.modalities[0], view.num_prefix_tokens)])]
    elif isinstance(model, MultiStreamViT):
        spans, start = [], model.vit.num_prefix_tokens
        for modality in model.modalities:
            spans.append(_span(model.vit, modality, start))
            start = spans[-1].stop
        streams = [Stream(_view(model.vit), spans)]
    elif isinstance(model, LateFusion):
        streams = [Stream(_view(vit), [_span(vit, m, vit.num_prefix_tokens)])
                   for m, vit in model.encoders.items()]
    else:
        raise ConfigError(
            f"explain supports one image modality on any backbone, and timm ViT token concatenation "
            f"or late fusion; this adapter builds {type(model).__name__}"
        )
    for stream in streams:
        if not stream.view.capabilities.feature_map:
            raise CapabilityError(
                f"explain needs a backbone with a feature map (capability feature_map: block outputs "
                f"on a grid over the image, for Grad-CAM); {stream.view.describe()} has none"
            )
    return streams


def _view(timm_model: nn.Module) -> Backbone:
    """The family view of a timm fusion's model; ViTs are viewed directly, as describe() does
    not recognise a ViT whose blocks a method wrapped (MoRA)."""
    return TimmViT(timm_model) if isinstance(timm_model, TimmViT.reads) else describe(timm_model)


def _span(vit: nn.Module, modality: str, start: int) -> Span:
    grid = tuple(int(n) for n in vit.patch_embed.grid_size)
    return Span(modality, start, grid)


@contextlib.contextmanager
def recording(streams: Sequence[Stream]) -> Iterator[None]:
    """Record every block's attention weights (backbones with attention maps) and Grad-CAM's
    activation at the last block, made a leaf that requires gradients (frozen backbones too)."""
    with contextlib.ExitStack() as stack:
        for stream in streams:
            if stream.reads_attention:
                stream.attentions = stack.enter_context(stream.view.attention_weights())
            last = stream.view.blocks()[-1]
            if stream.view.capabilities.token_stream:  # the tokens entering the last block
                handle = last.register_forward_pre_hook(_leaf_input(stream))
            else:  # the last block's feature map
                handle = last.register_forward_hook(_leaf_output(stream))
            stack.callback(handle.remove)
        yield


def _leaf(stream: Stream, activation: torch.Tensor) -> torch.Tensor:
    stream.site = activation.detach().requires_grad_(True)
    return stream.site


def _leaf_input(stream: Stream) -> Callable[[nn.Module, tuple], tuple]:
    return lambda _module, inputs: (_leaf(stream, inputs[0]), *inputs[1:])


def _leaf_output(stream: Stream) -> Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor]:
    return lambda _module, _inputs, output: _leaf(stream, output)


def rollout(attentions: Sequence[torch.Tensor], residual: float = RESIDUAL) -> torch.Tensor:
    """Attention rollout ``[B, T, T]`` of per-block attentions ``[B, heads, T, T]``.

    Rows are distributions: each sums to 1 over the input tokens.
    """
    if not attentions:
        raise ConfigError("attention rollout needs at least one block's attention")
    first = attentions[0]
    eye = torch.eye(first.shape[-1], dtype=first.dtype, device=first.device)
    result = eye.expand(first.shape[0], -1, -1)
    for attention in attentions:
        mixed = residual * eye + (1 - residual) * attention.mean(1)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        result = mixed @ result
    return result


def pooled_row(stream: Stream, matrix: torch.Tensor) -> torch.Tensor:
    """``[B, T]``: the row of a token x token matrix ``[B, T, T]`` that the pooling reads
    (the [CLS] token's, or the mean of the patch tokens' rows for average pooling)."""
    if stream.view.pools_class_token:
        return matrix[:, 0]
    return matrix[:, stream.num_prefix :].mean(1)


def grad_cam(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Gradient-weighted attention ``[B, T, T]`` (>= 0) of an attention map ``[B, heads, T, T]``."""
    return torch.relu(gradient * attention).mean(1)


def feature_grad_cam(features: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Grad-CAM ``[B, h, w]`` (>= 0) of a feature map ``[B, C, h, w]`` with each position's own
    gradient as the channel weights (HiResCAM): ``ReLU(sum_c dy/dF_c * F_c)``."""
    return torch.relu((gradient * features).sum(1))


@dataclass
class Maps:
    """Per-modality ``[h, w]`` maps of one sample: rollout (sums to at most 1; only for
    backbones with attention maps, else the reason in ``no_rollout``) and Grad-CAM (>= 0)."""

    rollout: dict[str, np.ndarray]
    grad_cam: dict[str, np.ndarray]
    no_rollout: dict[str, str] = field(default_factory=dict)

    def of(self, modality: str) -> dict[str, np.ndarray]:
        """The maps of one modality by name (``attention rollout``, ``Grad-CAM``), in drawing order."""
        found = {ROLLOUT: self.rollout.get(modality), GRAD_CAM: self.grad_cam.get(modality)}
        return {name: grid for name, grid in found.items() if grid is not None}


def explain_batch(
    model: nn.Module, batch: Mapping, task: str, target: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[Maps]]:
    """Scores ``[B, C]``, explained class per sample and the maps of every sample of ``batch``.

    The explained class is ``target``, else the top-scoring class (or label).
    """
    streams = streams_of(model)
    stacked = [m for m, images in batch["images"].items() if images.dim() != 4]
    if stacked:
        raise ConfigError(f"explain shows one image per modality; {stacked} hold several per sample")
    model.eval()
    with recording(streams), torch.enable_grad():
        logits = logits_of(model(batch)).float()
        for stream in streams:
            if stream.attentions:
                stream.attentions[-1].retain_grad()
        chosen = logits.argmax(1) if target is None else torch.full_like(logits[:, 0], target).long()
        model.zero_grad(set_to_none=True)
        logits.gather(1, chosen[:, None]).sum().backward()
    maps = [Maps({}, {}) for _ in range(logits.shape[0])]
    for stream in streams:
        if stream.site is None or stream.site.grad is None:
            raise ConfigError(
                "Grad-CAM found no gradient at the last block (does the head read the backbone?)"
            )
        for span in stream.spans:
            size = tuple(batch["images"][span.modality].shape[-2:])
            flow, cam = _stream_maps(stream, span, size)
            for i, sample in enumerate(maps):
                sample.grad_cam[span.modality] = cam[i].numpy()
                if flow is None:
                    sample.no_rollout[span.modality] = f"{stream.view.describe()} has no attention maps"
                else:
                    sample.rollout[span.modality] = flow[i].numpy()
    scores = to_scores(task, logits.detach()).cpu().numpy()
    return scores, chosen.cpu().numpy(), maps


def _stream_maps(
    stream: Stream, span: Span, size: tuple[int, int]
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Rollout (``None`` without attention maps) and Grad-CAM ``[B, h, w]`` of one modality of a stream."""
    if not stream.reads_attention:
        features = stream.view.feature_map(stream.site.detach(), size)
        return None, feature_grad_cam(features, stream.view.feature_map(stream.site.grad, size)).cpu()
    last = stream.attentions[-1]
    flow = pooled_row(stream, rollout([a.detach() for a in stream.attentions]))
    cam = pooled_row(stream, grad_cam(last.detach(), last.grad))
    return _on_grid(stream, span, flow, size).cpu(), _on_grid(stream, span, cam, size).cpu()


def _on_grid(stream: Stream, span: Span, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-token values ``[B, T]`` of a span on its patch grid ``[B, h, w]``."""
    if span.grid is None:
        return stream.view.feature_map(values[..., None], size)[:, 0]
    return values[:, span.start : span.stop].reshape(-1, *span.grid)


@dataclass
class Explanation:
    """One explained sample: prediction, explained class, the overlay PNG per modality, the
    maps drawn and, when the backbone has no attention maps, why there is no rollout."""

    sample: str
    labels: list[str]
    task: str
    scores: list[float]
    target: str
    overlays: dict[str, str]
    maps: list[str] = field(default_factory=lambda: [ROLLOUT, GRAD_CAM])
    note: str | None = None

    @property
    def prediction(self) -> str:
        """The predicted class, or the ``|``-joined labels above 0.5 (as ``medpeft predict``)."""
        return Predictions([self.sample], self.labels, [self.scores], self.task).decision(self.scores)

    def describe(self) -> str:
        top = max(self.scores)
        files = ", ".join(self.overlays.values())
        line = f"{self.sample}: predicted {self.prediction} ({top:.3f}); explained {self.target}: {files}"
        return f"{line} ({self.note})" if self.note else line

    def to_dict(self) -> dict:
        return {
            "sample": self.sample, "prediction": self.prediction, "explained": self.target,
            "scores": dict(zip(self.labels, self.scores)), "overlays": self.overlays,
            "maps": self.maps, "note": self.note,
        }


def explain_files(
    adapter: str | Path,
    files: Sequence[str],
    out: str | Path,
    weights: str | None = None,
    target: str | None = None,
    allow_random_backbone: bool = False,
    allow_other_weights: bool = False,
) -> list[Explanation]:
    """Explain image files (one modality) or one ``modality=path`` sample; write PNGs and JSON.

    Args:
        adapter: Adapter folder (any backbone family; several modalities: timm ViT fusions).
        files: Image paths (one-modality adapter: one sample each), or ``modality=path``
            pairs of one sample (modalities not given are missing).
        out: Output folder.
        weights: Backbone checkpoint (default: the one the adapter records).
        target: Class to explain (default: the predicted one).
        allow_random_backbone: Accept an adapter that records no backbone weights.
        allow_other_weights: Accept backbone weights other than those the adapter records.
    """
    model, config = load_adapter(adapter, weights=weights, allow_random_backbone=allow_random_backbone,
                                 allow_other_weights=allow_other_weights)
    index = _target_index(config, target)
    records = _records(config, files)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    explanations = []
    for record, (inputs, _) in zip(records, records_loader(config, records, batch_size=1)):
        scores, chosen, maps = explain_batch(model, to_device(inputs, device), config.task, index)
        overlays, drawn = {}, []
        present = dict(zip(config.modalities, inputs["present"][0].tolist()))
        for modality, image in inputs["images"].items():
            if not present[modality]:
                continue  # a missing modality: nothing of the sample to show
            path = folder / f"{_stem(record.id)}_{modality}.png"
            title = f"{modality}: {config.labels[chosen[0]]} ({scores[0, chosen[0]]:.3f})"
            plot_overlay(_display(image[0], config), maps[0].of(modality), title, path)
            overlays[modality] = str(path)
            drawn = drawn or list(maps[0].of(modality))
        reasons = sorted(set(maps[0].no_rollout.values()))
        note = f"no attention rollout: {'; '.join(reasons)}" if reasons else None
        explanations.append(Explanation(
            record.id, list(config.labels), config.task, scores[0].tolist(), config.labels[chosen[0]],
            overlays, drawn, note,
        ))
    atomic_write_text(folder / JSON_NAME, json.dumps([e.to_dict() for e in explanations], indent=2))
    return explanations


def _target_index(config: AdapterConfig, target: str | None) -> int | None:
    if target is None:
        return None
    if target not in config.labels:
        raise ConfigError(f"--target: {target!r} is not a class of the adapter{did_you_mean(target, config.labels)}")
    return config.labels.index(target)


def _records(config: AdapterConfig, files: Sequence[str]) -> list[Record]:
    images = [m for m, kind in config.modalities.items() if kind == "image"]
    if len(images) != len(config.modalities):
        raise ConfigError("explain supports image-only adapters (this one reads text too)")
    pairs = [f.split("=", 1) for f in files if "=" in f and f.split("=", 1)[0] in images]
    if len(images) == 1 and not pairs:
        return [Record(f, {images[0]: (f,)}, UNKNOWN_TARGET) for f in files]
    if len(pairs) != len(files):
        raise ConfigError(
            f"the adapter reads modalities {images}: give modality=path pairs for one sample, "
            f"e.g. {images[0]}=a.png"
        )
    values = {modality: (path,) for modality, path in pairs}
    for path in values.values():
        if not Path(path[0]).is_file():
            raise DataError(f"{path[0]}: no such image file")
    return [Record("+".join(Path(p[0]).stem for p in values.values()), values, UNKNOWN_TARGET)]


def _stem(sample: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(sample).stem) or "sample"


def _display(image: torch.Tensor, config: AdapterConfig) -> np.ndarray:
    """A normalised ``[3, H, W]`` input as an ``[H, W, 3]`` array in [0, 1]."""
    mean = torch.tensor(config.preprocessing.mean)[:, None, None]
    std = torch.tensor(config.preprocessing.std)[:, None, None]
    return (image.detach().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def heatmap(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """A map ``[h, w]`` bilinearly resized to the image's ``[height, width]``."""
    tensor = torch.as_tensor(grid, dtype=torch.float32)[None, None]
    return torch.nn.functional.interpolate(tensor, size=(height, width), mode="bilinear")[0, 0].numpy()


def plot_overlay(image: np.ndarray, maps: Mapping[str, np.ndarray], title: str, path: Path) -> Path:
    """The input and each map's overlay (scaled to its own min-max) side by side; writes a PNG.

    Args:
        image: ``[H, W, 3]`` in [0, 1].
        maps: Map name (panel title) -> ``[h, w]`` grid, e.g. :meth:`Maps.of`.
        title: Figure title.
        path: PNG to write.
    """
    fig = new_figure(3 * (1 + len(maps)), 3.4)
    axes = fig.subplots(1, 1 + len(maps))
    height, width = image.shape[:2]
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    for ax, (name, grid) in zip(axes[1:], maps.items()):
        heat = heatmap(grid, height, width)
        spread = heat.max() - heat.min()
        ax.imshow(image)
        ax.imshow((heat - heat.min()) / spread if spread > 0 else heat * 0, cmap="jet", alpha=0.45,
                  vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return save_png(fig, path)
