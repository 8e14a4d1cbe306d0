"""``medpeft explain``: where a timm ViT adapter looks, per image modality.

Two maps per image, both over the ViT's patch grid:

- **Attention rollout** (Abnar & Zuidema, 2020, https://arxiv.org/abs/2005.00928):
  each block's attention, averaged over heads, plus the identity for the residual
  path (``0.5 A + 0.5 I``, rows renormalised), multiplied through the blocks; the
  pooled token's row (the [CLS] token, or the mean of the patch rows for average
  pooling) says how much each input token flows into the prediction. timm computes
  attention with fused SDPA, which hides the weights, so blocks are switched to
  their explicit softmax path (``attn.fused_attn = False``) while explaining.
- **Grad-CAM** for ViTs, the gradient-weighted attention of the last block
  (Chefer et al., 2021, https://arxiv.org/abs/2103.15679): ``mean_h ReLU(dy/dA_h * A_h)``
  for the explained class's logit ``y``, read at the pooled token's row like the
  rollout; class-specific, unlike the rollout. Two classic Grad-CAM forms were tried
  and dropped: on the patch tokens entering the last block it missed the
  label-carrying patch of a tiny trained ViT, and with heads as channels
  (``ReLU(sum_h w_h A_h)``, ``w_h`` the mean gradient) it is all zero whenever
  every head's weight is negative, which happened for most demo images. The last
  attention's input is detached into a leaf that requires gradients, so frozen
  backbones (a linear probe) get maps too.

Works for one image modality, token-concatenation fusion (every modality's patches
in one stream) and late fusion (one ViT per modality); ViLT and early-intervention
models are refused. Each sample gets one PNG per modality (input, rollout overlay,
Grad-CAM overlay) and an entry in ``explain.json``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medpeft.adapters_io.config import AdapterConfig
from medpeft.adapters_io.folder import load_adapter
from medpeft.atomic import atomic_write_text
from medpeft.data.records import Record
from medpeft.errors import ConfigError, DataError, did_you_mean
from medpeft.fusion.concat import MultiStreamViT
from medpeft.fusion.late import LateFusion
from medpeft.fusion.single import SingleStream
from medpeft.reports.figures import new_figure, save_png
from medpeft.runs.predict import UNKNOWN_TARGET, Predictions, records_loader
from medpeft.train.evaluation import logits_of, to_device
from medpeft.train.losses import to_scores

RESIDUAL = 0.5
JSON_NAME = "explain.json"


@dataclass(frozen=True)
class Span:
    """The patch tokens of one modality in a ViT's token sequence."""

    modality: str
    start: int
    grid: tuple[int, int]

    @property
    def stop(self) -> int:
        return self.start + self.grid[0] * self.grid[1]


@dataclass
class Stream:
    """One timm ViT of a model and the modalities whose patches it reads."""

    vit: nn.Module
    spans: list[Span]
    attentions: list[torch.Tensor] = field(default_factory=list)
    last: torch.Tensor | None = None  # the last block's attention, keeping its gradient

    @property
    def num_prefix(self) -> int:
        return self.vit.num_prefix_tokens

    @property
    def pools_token(self) -> bool:
        return getattr(self.vit, "global_pool", "token") == "token"


def streams_of(model: nn.Module) -> list[Stream]:
    """The ViTs of a timm model and the token span of each image modality."""
    if isinstance(model, SingleStream):
        return [Stream(model, [_span(model, model.modalities[0], model.num_prefix_tokens)])]
    if isinstance(model, MultiStreamViT):
        spans, start = [], model.vit.num_prefix_tokens
        for modality in model.modalities:
            spans.append(_span(model.vit, modality, start))
            start = spans[-1].stop
        return [Stream(model.vit, spans)]
    if isinstance(model, LateFusion):
        return [Stream(vit, [_span(vit, m, vit.num_prefix_tokens)]) for m, vit in model.encoders.items()]
    raise ConfigError(
        f"explain supports timm ViT models (one image modality, token concatenation, late "
        f"fusion); this adapter builds a {type(model).__name__}"
    )


def _span(vit: nn.Module, modality: str, start: int) -> Span:
    grid = tuple(int(n) for n in vit.patch_embed.grid_size)
    return Span(modality, start, grid)


@contextlib.contextmanager
def recording(streams: Sequence[Stream]) -> Iterator[None]:
    """Record every block's attention weights, the last one with its gradient.

    Blocks run their explicit softmax attention (``fused_attn = False``) meanwhile;
    the last block's attention input is made a leaf that requires gradients.
    """
    handles, fused = [], []
    try:
        for stream in streams:
            stream.attentions.clear()
            attentions = [attention_of(block) for block in stream.vit.blocks]
            for attn in attentions:
                fused.append((attn, attn.fused_attn))
                attn.fused_attn = False
                handles.append(attn.attn_drop.register_forward_hook(
                    lambda _m, _i, out, s=stream: s.attentions.append(out.detach())))
            handles.append(attentions[-1].register_forward_pre_hook(_gradient_leaf))
            handles.append(attentions[-1].attn_drop.register_forward_hook(_keep_last(stream)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for attn, value in fused:
            attn.fused_attn = value


def attention_of(block: nn.Module) -> nn.Module:
    """The timm attention module of a block (also inside a method's wrapper, e.g. MoRA's)."""
    for module in block.modules():
        if hasattr(module, "fused_attn") and hasattr(module, "attn_drop"):
            return module
    raise ConfigError(f"explain needs timm attention layers; found none in a {type(block).__name__}")


def _gradient_leaf(_module: nn.Module, inputs: tuple) -> tuple:
    """The attention's input as a leaf that requires gradients."""
    return (inputs[0].detach().requires_grad_(True), *inputs[1:])


def _keep_last(stream: Stream):
    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        output.retain_grad()
        stream.last = output

    return hook


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
    if stream.pools_token:
        return matrix[:, 0]
    return matrix[:, stream.num_prefix :].mean(1)


def grad_cam(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Gradient-weighted attention ``[B, T, T]`` (>= 0) of an attention map ``[B, heads, T, T]``."""
    return torch.relu(gradient * attention).mean(1)


@dataclass
class Maps:
    """Per-modality ``[h, w]`` maps of one sample: rollout (sums to at most 1) and Grad-CAM (>= 0)."""

    rollout: dict[str, np.ndarray]
    grad_cam: dict[str, np.ndarray]


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
        chosen = logits.argmax(1) if target is None else torch.full_like(logits[:, 0], target).long()
        model.zero_grad(set_to_none=True)
        logits.gather(1, chosen[:, None]).sum().backward()
    maps = [Maps({}, {}) for _ in range(logits.shape[0])]
    for stream in streams:
        if stream.last is None or stream.last.grad is None:
            raise ConfigError("Grad-CAM found no gradient at the last block (does the head read the ViT?)")
        flow = pooled_row(stream, rollout(stream.attentions)).cpu()
        cam = pooled_row(stream, grad_cam(stream.last.detach(), stream.last.grad)).cpu()
        for span in stream.spans:
            for i, sample in enumerate(maps):
                sample.rollout[span.modality] = flow[i, span.start : span.stop].reshape(span.grid).numpy()
                sample.grad_cam[span.modality] = cam[i, span.start : span.stop].reshape(span.grid).numpy()
    scores = to_scores(task, logits.detach()).cpu().numpy()
    return scores, chosen.cpu().numpy(), maps


@dataclass
class Explanation:
    """One explained sample: prediction, explained class and the overlay PNG per modality."""

    sample: str
    labels: list[str]
    task: str
    scores: list[float]
    target: str
    overlays: dict[str, str]

    @property
    def prediction(self) -> str:
        """The predicted class, or the ``|``-joined labels above 0.5 (as ``medpeft predict``)."""
        return Predictions([self.sample], self.labels, [self.scores], self.task).decision(self.scores)

    def describe(self) -> str:
        top = max(self.scores)
        files = ", ".join(self.overlays.values())
        return f"{self.sample}: predicted {self.prediction} ({top:.3f}); explained {self.target}: {files}"

    def to_dict(self) -> dict:
        return {
            "sample": self.sample, "prediction": self.prediction, "explained": self.target,
            "scores": dict(zip(self.labels, self.scores)), "overlays": self.overlays,
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
        adapter: Adapter folder of a timm ViT run.
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
        overlays = {}
        present = dict(zip(config.modalities, inputs["present"][0].tolist()))
        for modality, image in inputs["images"].items():
            if not present[modality]:
                continue  # a missing modality: nothing of the sample to show
            path = folder / f"{_stem(record.id)}_{modality}.png"
            title = f"{modality}: {config.labels[chosen[0]]} ({scores[0, chosen[0]]:.3f})"
            plot_overlay(_display(image[0], config), maps[0], modality, title, path)
            overlays[modality] = str(path)
        explanations.append(Explanation(
            record.id, list(config.labels), config.task, scores[0].tolist(), config.labels[chosen[0]], overlays
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


def _upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    tensor = torch.as_tensor(grid, dtype=torch.float32)[None, None]
    return torch.nn.functional.interpolate(tensor, size=(height, width), mode="bilinear")[0, 0].numpy()


def plot_overlay(image: np.ndarray, maps: Maps, modality: str, title: str, path: Path) -> Path:
    """Input, rollout and Grad-CAM overlays (each map scaled to its own min-max) side by side; writes a PNG."""
    fig = new_figure(9, 3.4)
    axes = fig.subplots(1, 3)
    height, width = image.shape[:2]
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    for ax, name, grid in zip(axes[1:], ("attention rollout", "Grad-CAM"),
                              (maps.rollout[modality], maps.grad_cam[modality])):
        heat = _upsample(grid, height, width)
        spread = heat.max() - heat.min()
        ax.imshow(image)
        ax.imshow((heat - heat.min()) / spread if spread > 0 else heat * 0, cmap="jet", alpha=0.45,
                  vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return save_png(fig, path)
