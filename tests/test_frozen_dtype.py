"""Frozen weights in low precision (``model.frozen_dtype``, `medpeft.frozen_dtype.cast_frozen`)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medpeft import frozen_dtype
from medpeft.adapters_io.folder import save_adapter
from medpeft.cli import main
from medpeft.config.schema import ModelSettings
from medpeft.errors import ConfigError
from medpeft.frozen_dtype import cast_frozen
from medpeft.mixed_precision import autocast
from medpeft.model import ModelSpec, build_model

VIT = dict(
    backbone="vit_tiny_patch16_224", img_size=32,
    model_kwargs=dict(depth=2, embed_dim=32, num_heads=2, patch_size=8),
)
DINOV2 = dict(
    backbone="dinov2-tiny", kind="transformers", img_size=32,
    model_kwargs=dict(model_type="dinov2", hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, image_size=32, patch_size=8),
)
BACKBONES = {"vit": VIT, "dinov2": DINOV2}
METHODS = ("lora", "dora", "mor", "linear")


def _model(backbone: str, method: str = "lora", dtype: torch.dtype = torch.bfloat16):
    torch.manual_seed(0)
    model = build_model(ModelSpec(num_classes=3, method=method, **BACKBONES[backbone]))
    cast_frozen(model, dtype)
    return model


@pytest.mark.parametrize("backbone", BACKBONES)
def test_frozen_linear_and_conv_are_bf16_trainable_stay_fp32(backbone):
    model = _model(backbone)
    frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert set(trainable.values()) == {torch.float32} and any("lora_A" in n for n in trainable)
    low = [n for n, d in frozen.items() if d == torch.bfloat16]
    assert any("base.weight" in n for n in low) and any("patch" in n for n in low)
    kept = {n for n, d in frozen.items() if d == torch.float32}
    assert kept and all("norm" in n or "token" in n or "pos" in n or "lambda" in n for n in kept), kept
    assert sum(frozen[n] == torch.bfloat16 for n in frozen) > len(kept)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_one_step_moves_only_adapter_and_head(backbone, method):
    model = _model(backbone, method)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.dtype == torch.float32
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert moved and moved <= trainable
    assert any("head" in n or "classifier" in n for n in moved)
    assert all(s.dtype == torch.float32 for state in optimizer.state.values() for s in state.values()
               if torch.is_tensor(s) and s.is_floating_point())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_bf16_logits_agree_with_fp32(backbone):
    """Random-init tiny models have logits of order 1; bf16 keeps 8 bits of mantissa
    (relative error ~0.4% per rounding), so a 2-block model stays well within 0.05."""
    reference = _model(backbone, dtype=torch.float32).eval()
    for p in reference.parameters():  # non-zero adapters, so the update path is compared too
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    low = copy.deepcopy(reference)
    cast_frozen(low, torch.bfloat16)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = reference(x), low(x)
    assert (want - got).abs().max() < 0.05
    assert (want.argmax(1) == got.argmax(1)).float().mean() >= 0.9
    assert not torch.equal(want, got)  # the cast really happened


def test_saved_adapter_tensors_are_fp32(tmp_path):
    model = _model("vit")
    spec = ModelSpec(num_classes=3, method="lora", **VIT)
    folder = save_adapter(model, tmp_path / "adapter", spec, ["a", "b", "c"], "multiclass")
    tensors = load_file(folder / "adapter_model.safetensors")
    assert tensors and {t.dtype for t in tensors.values()} == {torch.float32}


def test_float32_leaves_the_model_as_it_is():
    model = _model("vit", dtype=torch.float32)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert cast_frozen(model, torch.float32) == 0


def test_a_low_precision_build_gives_its_freed_heap_back(monkeypatch):
    trims = []
    monkeypatch.setattr(frozen_dtype, "trim_heap", lambda: trims.append(1) or True)
    build_model(ModelSpec(num_classes=3, **VIT), frozen_dtype=torch.float32)
    assert trims == []
    build_model(ModelSpec(num_classes=3, **VIT), frozen_dtype=torch.bfloat16)
    assert trims == [1]  # once the frozen layers are cast: the fp32 temporaries are all freed by then


def test_frozen_dtype_config_is_checked_with_a_hint():
    assert ModelSettings(frozen_dtype="bfloat16").frozen_dtype == "bfloat16"
    with pytest.raises(ConfigError, match=r"^model.frozen_dtype: 'bfloat' is not one of "
                       r"\['float32', 'bfloat16', 'float16', 'int8'\]; did you mean 'bfloat16'\?$"):
        ModelSettings(frozen_dtype="bfloat")


def test_bf16_autocast_runs_on_cpu_and_fp16_stays_off():
    model = _model("vit", dtype=torch.float32)
    with torch.no_grad(), autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        logits = model(torch.randn(2, 3, 32, 32))
    assert torch.isfinite(logits).all()
    with autocast(torch.device("cpu"), torch.float16):
        assert not torch.is_autocast_enabled("cpu")


def train_tiny_run(run: Path, *options: str) -> dict[str, torch.Tensor]:
    """A one-epoch MoRA run of a 1-block ViT in ``run`` with ``options``; its saved adapter tensors."""
    argv = [
        "train", "mora_synthetic", f"output_dir={run}", "model.img_size=16",
        "model.kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
        "data.num_samples=40", "data.batch_size=16", "missing.grid.etas=[0.9]",
        "train.device=cpu", "data.num_workers=0", "train.epochs=1", *options, "--quiet",
    ]
    assert main(argv) == 0
    tensors = {}
    for path in run.rglob("adapter_model.safetensors"):
        tensors.update(load_file(path))
    return tensors


def test_a_run_trains_with_bf16_frozen_weights_and_cpu_autocast(tmp_path):
    run = tmp_path / "run"
    tensors = train_tiny_run(run, "model.frozen_dtype=bfloat16", "train.amp=true", "train.amp_dtype=bf16")
    assert tensors and {t.dtype for t in tensors.values()} == {torch.float32}
    assert "frozen_dtype: bfloat16" in (run / "config.yaml").read_text()


def test_benchmark_quick_run_compares_every_configuration_with_fp32(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "frozen_dtype.md"
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    subprocess.run([sys.executable, str(root / "benchmarks" / "frozen_dtype.py"), "--quick", "--threads", "1",
                    "--steps", "1", "--out", str(out)], env=env, check=True, capture_output=True, timeout=300)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| frozen_dtype")]
    assert [r[:2] for r in rows] == [["float32", "-"], ["bfloat16", "-"], ["float16", "-"], ["int8", "-"],
                                     ["float32", "bf16"], ["bfloat16", "bf16"], ["int8", "bf16"]]
    assert rows[0][2:4] == ["0", "100%"]
    assert all(0 < float(r[2]) < 0.05 for r in rows[1:])
    build_rss, peak_rss = ([float(r[i].replace(",", "")) for r in rows] for i in (6, 7))
    assert all(0 < built <= peak for built, peak in zip(build_rss, peak_rss))  # after the build, at the end


def _fp32_parameter_peak(build) -> tuple[object, int]:
    """``build()`` and the most bytes of fp32 parameters alive at once while it ran (every
    parameter registered is counted until it is freed: deterministic, no timing)."""
    alive = peak = 0

    def release(nbytes: int) -> None:
        nonlocal alive
        alive -= nbytes

    def on_register(module, name, param) -> None:
        nonlocal alive, peak
        if param is not None and param.dtype == torch.float32 and not param.is_meta:
            alive += param.nbytes
            peak = max(peak, alive)
            weakref.finalize(param, release, param.nbytes)

    handle = torch.nn.modules.module.register_module_parameter_registration_hook(on_register)
    try:
        return build(), peak
    finally:
        handle.remove()


DEEP_VIT = dict(VIT, model_kwargs=dict(depth=6, embed_dim=64, num_heads=2, patch_size=8))


@pytest.mark.parametrize("frozen", [torch.float32, torch.bfloat16])
def test_a_bf16_build_never_holds_the_fp32_backbone(frozen):
    spec = ModelSpec(num_classes=3, method="lora", **DEEP_VIT)
    torch.manual_seed(0)
    model, peak = _fp32_parameter_peak(lambda: build_model(spec, frozen_dtype=frozen))
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    if frozen == torch.float32:  # the measure sees a whole fp32 build
        assert peak >= fp32_bytes
    else:
        assert peak < fp32_bytes / 4
        assert sum(p.dtype == torch.bfloat16 for p in model.parameters()) > 20


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_bf16_build_has_the_frozen_values_of_an_fp32_build_cast(backbone):
    """Same seed: the frozen tensors are bit for bit the fp32 build's, rounded once (a whole-model
    truncated-normal init run in bf16 would put some weights at the +-2 clamp instead)."""
    torch.manual_seed(0)
    built = build_model(ModelSpec(num_classes=3, **BACKBONES[backbone]), frozen_dtype=torch.bfloat16)
    cast = _model(backbone)
    frozen = {n: p for n, p in cast.named_parameters() if not p.requires_grad}
    assert frozen and all(torch.equal(p, built.get_parameter(n)) for n, p in frozen.items())
    trainable = {n: p for n, p in built.named_parameters() if p.requires_grad}
    assert trainable.keys() == {n for n, p in cast.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (built.eval()(x) - cast.eval()(x)).abs().max() < 0.01


def test_weights_loaded_into_a_bf16_build_are_the_file_rounded(tmp_path):
    torch.manual_seed(5)
    source = build_model(ModelSpec(num_classes=3, method="linear", **VIT))
    file = tmp_path / "vit.pth"
    torch.save({n: p for n, p in source.state_dict().items() if not n.startswith("head")}, file)
    model = build_model(ModelSpec(num_classes=3, **VIT), weights=file, frozen_dtype=torch.bfloat16)
    weight = model.get_parameter("blocks.1.mlp.fc1.weight")
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight, source.get_parameter("blocks.1.mlp.fc1.weight").bfloat16())


def test_full_fine_tuning_is_built_in_fp32():
    model = build_model(ModelSpec(num_classes=3, method="full", **VIT), frozen_dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_adapt_builds_in_bf16_and_names_a_bad_dtype():
    import medpeft

    model = medpeft.adapt("vit_tiny_patch16_224", num_classes=3, img_size=32, frozen_dtype="bfloat16",
                          **VIT["model_kwargs"])
    assert model.model.get_parameter("blocks.0.mlp.fc1.weight").dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    with pytest.raises(ConfigError, match=r"^frozen_dtype: 'bf16' is not one of \['float32', 'bfloat16', "
                       r"'float16', 'int8'\]; did you mean 'bfloat16'\?$"):
        medpeft.adapt("vit_tiny_patch16_224", num_classes=3, frozen_dtype="bf16")


def test_a_frozen_layer_returns_fp32_and_under_autocast_the_autocast_dtype():
    """Under autocast every matmul's output is bf16 anyway: casting it to fp32 would only make
    the next layer cast it back and keep fp32 activations for the backward."""
    fc1 = _model("vit").get_submodule("blocks.0.mlp.fc1")
    x = torch.randn(2, 5, fc1.in_features)
    assert fc1.weight.dtype == torch.bfloat16 and fc1(x).dtype == torch.float32
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert fc1(x).dtype == torch.bfloat16
