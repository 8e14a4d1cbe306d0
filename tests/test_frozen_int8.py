"""Frozen Linear weights held as int8 (``model.frozen_dtype: int8``, torchao weight-only)."""

from __future__ import annotations

import importlib.util
import logging
import sys

import pytest
import torch

from medpeft.checkpointing import enable_checkpointing
from medpeft.cli import main
from medpeft.config.schema import ModelSettings
from medpeft.errors import ConfigError
from medpeft.frozen_dtype import Int8WeightLinear, is_quantized, stored_bytes
from medpeft.heap import trim_heap
from medpeft.methods.lora.attach import merge_lora
from medpeft.mixed_precision import autocast
from medpeft.model import ModelSpec, build_model
from tests.test_frozen_dtype import BACKBONES, train_tiny_run

X = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _build(backbone: str, method: str = "lora", dtype: torch.dtype = torch.int8) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(num_classes=3, method=method, **BACKBONES[backbone]), frozen_dtype=dtype)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_frozen_linear_weights_are_int8_with_a_scale_per_row(backbone):
    model, reference = _build(backbone), _build(backbone, dtype=torch.float32)
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    quantized = {n: p for n, p in frozen.items() if is_quantized(p)}
    assert quantized and all(n.endswith("weight") for n in quantized)
    assert any("base.weight" in n for n in quantized) and any("mlp" in n or "intermediate" in n for n in quantized)
    for name, weight in quantized.items():
        assert weight.qdata.dtype == torch.int8 and weight.scale.shape == (weight.shape[0], 1)
        want = reference.get_parameter(name).detach()
        row_step = want.abs().amax(dim=1, keepdim=True) / 127  # one int8 step of the row
        assert ((weight.dequantize().float() - want).abs() <= row_step * 0.51 + want.abs() * 2**-7).all()
    assert {p.dtype for n, p in model.named_parameters() if p.requires_grad} == {torch.float32}
    int8_bytes = sum(stored_bytes(p) for p in quantized.values())
    assert int8_bytes < 0.3 * sum(p.numel() * 4 for p in quantized.values())


@pytest.mark.parametrize("method", ["lora", "mor", "linear"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_one_int8_step_moves_only_adapter_and_head(backbone, method):
    model = _build(backbone, method)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not is_quantized(p)}
    quantized = {n: p.qdata.clone() for n, p in model.named_parameters() if is_quantized(p)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    logits = model(X[:2])
    assert logits.dtype == torch.float32
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert moved and moved <= {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.equal(model.get_parameter(n).qdata, q) for n, q in quantized.items())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_int8_logits_agree_with_fp32(backbone):
    reference, low = _build(backbone, dtype=torch.float32).eval(), _build(backbone).eval()
    for name, p in reference.named_parameters():  # non-zero adapters: the update path is compared too
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(len(name)))
            low.get_parameter(name).data.copy_(p)
    with torch.no_grad():
        want, got = reference(X), low(X)
    assert not torch.equal(want, got) and (want - got).abs().max() < 0.05
    assert (want.argmax(1) == got.argmax(1)).float().mean() >= 0.85


def test_checkpointed_int8_gradients_equal_stored_ones():
    grads = []
    for checkpointed in (False, True):
        model = _build("vit")
        for p in model.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(p.numel()))
        if checkpointed:
            enable_checkpointing(model)
        model(X).logsumexp(1).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and any(g.abs().sum() > 0 for g in grads[0].values())
    assert all((grads[0][n] - grads[1][n]).abs().max() <= 1e-6 for n in grads[0])


def test_int8_refuses_dora_and_merging_in_one_line():
    with pytest.raises(ConfigError, match=r"^model.frozen_dtype: int8 does not apply to method 'dora': its "
                       r"layers compute with the frozen weights' values; use bfloat16$"):
        _build("vit", "dora")
    with pytest.raises(ConfigError, match=r"^blocks.0.attn.qkv: cannot merge an adapter into int8 frozen "
                       r"weights \(model.frozen_dtype: int8\); build the model in float32 to merge"):
        merge_lora(_build("vit"))


def test_int8_needs_torchao(monkeypatch):
    assert ModelSettings(frozen_dtype="int8").frozen_dtype == "int8"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^model.frozen_dtype: 'int8' needs torchao: pip install "
                       r"'medpeft\[scale\]'$"):
        ModelSettings(frozen_dtype="int8")


def test_a_run_trains_with_int8_frozen_weights_and_checkpointing(tmp_path):
    run = tmp_path / "run"
    tensors = train_tiny_run(run, "model.frozen_dtype=int8", "train.activation_checkpointing=true")
    assert tensors and {t.dtype for t in tensors.values()} == {torch.float32}
    assert "frozen_dtype: int8" in (run / "config.yaml").read_text()


def test_torchao_load_notes_are_dropped_and_other_records_kept(caplog):
    notes = {
        "torchao": "Failed to load /x/_C_mxfp8.so: Could not load this library",
        "torchao.kernel.intmm": "Warning: Detected no triton, on systems without Triton certain kernels will not work",
        "torch.utils._pytree": "%s is an Enum subclass and is now natively supported by torch.compile",
    }
    with caplog.at_level(logging.WARNING):
        for name, message in notes.items():
            args = ("<enum 'X'>",) if "%s" in message else ()
            logging.getLogger(name).warning(message, *args)
            logging.getLogger(name).warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"] * 3


def test_each_quantized_layer_gives_its_freed_heap_back(monkeypatch):
    import medpeft.frozen_dtype as frozen_dtype

    calls = []
    monkeypatch.setattr(frozen_dtype, "trim_heap", lambda: calls.append(1) or True)
    model = _build("vit")
    assert len(calls) == sum(is_quantized(p) for p in model.parameters()) + 1 > 1  # and once at the end
    assert trim_heap() is sys.platform.startswith("linux")  # glibc here; nothing to call elsewhere


def test_int8_backward_keeps_no_dense_copy_of_a_weight_and_matches_the_dequantized_one():
    model = _build("vit")
    quantized = [p for p in model.parameters() if is_quantized(p)]
    shapes = {tuple(p.shape) for p in quantized} | {tuple(p.shape[::-1]) for p in quantized}
    dense_copies = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if tuple(t.shape) in shapes and not is_quantized(t):
            dense_copies.append(tuple(t.shape))
        return t

    x = X[:2].clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    assert not dense_copies and x.grad.abs().sum() > 0
    layer = next(m for m in model.modules() if isinstance(m, Int8WeightLinear))
    inputs = torch.randn(4, layer.in_features, dtype=torch.bfloat16, requires_grad=True)
    dense = inputs.detach().clone().requires_grad_(True)
    layer(inputs).float().pow(2).sum().backward()
    torch.nn.functional.linear(dense, layer.weight.dequantize(), layer.bias).float().pow(2).sum().backward()
    assert torch.allclose(inputs.grad.float(), dense.grad.float(), rtol=0.02, atol=0.02)


def test_a_dora_run_with_int8_weights_stops_before_writing(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "mora_synthetic", f"output_dir={run}", "method=dora", "model.frozen_dtype=int8", "--quiet"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().endswith(
        "model.frozen_dtype: int8 does not apply to method 'dora': its layers compute with the frozen "
        "weights' values; use bfloat16")
    assert not (run / "config.yaml").exists()


def test_an_int8_step_under_bf16_autocast_trains_the_adapters():
    model = _build("vit")
    with autocast(torch.device("cpu"), torch.bfloat16):
        logits = model(X[:2])
    torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 2])).backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
