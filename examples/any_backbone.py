"""One short API for any vision foundation model: timm, transformers and open_clip alike.

Offline, a few seconds on 2 CPU cores (tiny random-init models of the real
architectures stand in for RAD-DINO, a Swin and a CLIP tower)::

    python examples/any_backbone.py                 # writes under runs/any_backbone
    python examples/any_backbone.py /tmp/somewhere

For each backbone: ``medpeft.adapt`` freezes the native module and adds LoRA on q
and v (the roles mean the same layer in every library) plus a new head; a few
optimizer steps train it on random images; ``save_adapter`` writes a few-KiB
folder; ``medpeft.load_adapter(folder, backbone=a_fresh_module)`` gives the same
logits. With real weights the only change is how the module is made, e.g.
``transformers.AutoModel.from_pretrained("microsoft/rad-dino")``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import medpeft  # before timm / transformers / open_clip (see README: import order)

# isort: split
import open_clip
import timm
import transformers

SIDE = 32
BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "dinov2 (transformers)": lambda: transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=SIDE, patch_size=8, mlp_ratio=2)),
    "swin (timm)": lambda: timm.create_model(
        "swin_tiny_patch4_window7_224", num_classes=0, img_size=SIDE, window_size=4, embed_dim=16,
        depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
    "clip tower (open_clip)": lambda: open_clip.model._build_vision_tower(16, open_clip.model.CLIPVisionCfg(
        layers=2, width=32, head_width=16, mlp_ratio=2.0, patch_size=8, image_size=SIDE)),
}


def fresh(build: Callable[[], nn.Module]) -> nn.Module:
    """The same random backbone every time (a stand-in for loading one checkpoint)."""
    torch.manual_seed(0)
    return build().eval()


def train(model: medpeft.AdaptedModel, steps: int = 3) -> None:
    """A few SGD steps on random images: only the adapter and the head move."""
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(8, 3, SIDE, SIDE, generator=generator), torch.arange(8) % 2
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    model.eval()


def main(out_dir: str | Path = "runs/any_backbone") -> dict[str, dict]:
    """Adapt, train, save and reload each backbone; return what happened per backbone."""
    out, results = Path(out_dir), {}
    images = torch.randn(4, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    for name, build in BACKBONES.items():
        model = medpeft.adapt(fresh(build), medpeft.LoraSettings(rank=4), num_classes=2)
        train(model)
        folder = model.save_adapter(out / name.split()[0], labels=["normal", "finding"])
        reloaded = medpeft.load_adapter(folder, backbone=fresh(build))
        with torch.no_grad():
            same = torch.allclose(reloaded(images), model(images), atol=1e-6)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        kib = sum(f.stat().st_size for f in folder.iterdir()) / 1024
        results[name] = {"trainable": trainable, "adapter_kib": kib, "reloads_identically": same}
        print(f"{name:24} {trainable:>7,} trainable  adapter {kib:6.1f} KiB  reloads identically: {same}")
    return results


if __name__ == "__main__":
    main(*sys.argv[1:2])
