"""fit / evaluate / predict on tiny models and synthetic tensors."""

import csv

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medpeft.errors import ConfigError
from medpeft.model import ModelSpec, build_model
from medpeft.train import TrainSettings, evaluate, fit, predict, to_device
from medpeft.train.files import BEST, CHECKPOINT, METRICS_CSV

CPU = dict(device="cpu", amp=False)


def mlp(seed: int = 0, classes: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, classes))


def tabular(n: int = 48, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long())


class Interrupted(Exception):
    pass


class CountingLoader:
    """Wraps a loader, counts passes, and raises Interrupted on pass ``fail_on`` (1-based)."""

    def __init__(self, loader, fail_on: int | None = None):
        self.loader, self.fail_on, self.passes = loader, fail_on, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.passes += 1
        if self.passes == self.fail_on:
            raise Interrupted
        return iter(self.loader)


def test_tiny_vit_learns_above_chance(tmp_path):
    torch.manual_seed(0)
    kwargs = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8)
    model = build_model(ModelSpec("vit_tiny_patch16_224", 2, img_size=32, model_kwargs=kwargs))

    def images(n: int, seed: int) -> TensorDataset:
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.randn(n, 3, 32, 32, generator=g) * 0.5
        x[:, 0] += (2 * y.float() - 1)[:, None, None]  # class shifts the red channel
        return TensorDataset(x, y)

    train = DataLoader(images(64, 1), batch_size=16, shuffle=True)
    val = DataLoader(images(32, 2), batch_size=32)
    result = fit(model, train, val, "multiclass", TrainSettings(epochs=3, lr=1e-2, **CPU), tmp_path,
                 class_names=["neg", "pos"], progress=False)
    assert result.best_metrics["accuracy"] > 0.85 and result.best_metrics["auroc"] > 0.9
    assert "auroc/pos" in result.best_metrics
    assert result.best_metrics == result.history[result.best_epoch]
    best = load_file(str(tmp_path / BEST))
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable.keys() == best.keys()
    assert all(torch.equal(value, best[name]) for name, value in trainable.items())
    with open(tmp_path / METRICS_CSV) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and "val_loss" in rows[0]


def test_multilabel_fit_lowers_loss(tmp_path):
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    data = TensorDataset(x, (x[:, :3] > 0).float())
    settings = TrainSettings(epochs=4, lr=1e-2, monitor="f1_macro", tensorboard=True, log_every=1,
                             **CPU)
    train, val = DataLoader(data, batch_size=16, shuffle=True), DataLoader(data, batch_size=64)
    result = fit(mlp(classes=3), train, val, "multilabel", settings, tmp_path, progress=False)
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    assert {"f1_micro", "f1_samples", "subset_accuracy"} <= result.history[0].keys()
    assert any((tmp_path / "tensorboard").glob("events.*"))


def test_resume_equals_uninterrupted_run(tmp_path):
    data = tabular()
    settings = TrainSettings(epochs=4, lr=1e-2, warmup=1.0, **CPU)
    val = DataLoader(data, batch_size=48)

    def loader(fail_on=None):
        return CountingLoader(DataLoader(data, batch_size=8, shuffle=True), fail_on)

    full_model = mlp()
    full = fit(full_model, loader(), val, "multiclass", settings, tmp_path / "full", progress=False)
    with pytest.raises(Interrupted):
        fit(mlp(), loader(fail_on=3), val, "multiclass", settings, tmp_path / "cut", progress=False)
    resumed_model, second_half = mlp(), loader()
    resumed = fit(resumed_model, second_half, val, "multiclass", settings, tmp_path / "cut",
                  progress=False)
    assert second_half.passes == 2
    assert resumed.history == full.history and resumed.best_epoch == full.best_epoch
    for name, value in full_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name
    last_full = torch.load(tmp_path / "full" / CHECKPOINT)["trainable"]
    last_cut = torch.load(tmp_path / "cut" / CHECKPOINT)["trainable"]
    assert all(torch.equal(last_full[k], last_cut[k]) for k in last_full)
    csv_text = [(tmp_path / run / METRICS_CSV).read_text() for run in ("cut", "full")]
    assert csv_text[0] == csv_text[1]


class ConstantModel(nn.Module):
    """Frozen linear map plus a trainable parameter with zero effect: metrics never change."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 2).requires_grad_(False)
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.linear(x) + 0 * self.unused


def test_early_stopping_stops_and_stays_stopped(tmp_path):
    data = DataLoader(tabular(), batch_size=16)
    settings = TrainSettings(epochs=10, patience=2, **CPU)
    result = fit(ConstantModel(), data, data, "multiclass", settings, tmp_path, progress=False)
    assert len(result.history) == 3 and result.best_epoch == 0
    again = fit(ConstantModel(), data, data, "multiclass", settings, tmp_path, progress=False)
    assert len(again.history) == 3


def test_grad_accumulation_matches_larger_batch(tmp_path):
    data = tabular(n=12)  # batch 4 x accum 2 -> groups of 8 and a final partial 4, like batch 8

    def weights(batch_size: int, accum: int, name: str) -> dict:
        torch.manual_seed(0)
        model = nn.Linear(8, 2)
        settings = TrainSettings(epochs=1, optimizer="sgd", momentum=0.0, lr=0.5,
                                 schedule="constant", label_smoothing=0.0,
                                 grad_accum_steps=accum, **CPU)
        train, val = DataLoader(data, batch_size=batch_size), DataLoader(data, batch_size=12)
        fit(model, train, val, "multiclass", settings, tmp_path / name, progress=False)
        return torch.load(tmp_path / name / CHECKPOINT)["trainable"]

    accumulated, large = weights(4, 2, "accum"), weights(8, 1, "large")
    small = weights(4, 1, "small")
    for name in large:
        torch.testing.assert_close(accumulated[name], large[name], rtol=0, atol=1e-6)
    assert not torch.allclose(small["weight"], large["weight"])


def test_bad_monitor_names_field(tmp_path):
    data = DataLoader(tabular(n=16), batch_size=8)
    with pytest.raises(ConfigError, match="monitor"):
        settings = TrainSettings(epochs=1, monitor="auc", **CPU)
        fit(mlp(), data, data, "multiclass", settings, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="task"):
        settings = TrainSettings(epochs=1, **CPU)
        fit(mlp(), data, data, "regression", settings, tmp_path, progress=False)


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 2)

    def forward(self, inputs):
        return self.head(inputs["images"]["a"] * inputs["present"][:, :1])


def test_dict_inputs_evaluate_and_predict():
    x = torch.randn(6, 8)
    batch = ({"images": {"a": x}, "present": torch.ones(6, 2)}, torch.tensor([0, 1, 0, 1, 0, 1]))
    model = DictModel()
    result = evaluate(model, [batch], "multiclass")
    logits = model.head(x)
    assert result.scores.shape == (6, 2)
    expected_loss = nn.functional.cross_entropy(logits, batch[1]).item()
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(predict(model, [batch[:1]], "multiclass"), result.scores)
    moved = to_device({"a": [x, (x,)], "b": 3}, torch.device("cpu"))
    assert isinstance(moved["a"][1], tuple) and moved["b"] == 3


def test_aux_loss_is_added_to_the_training_loss(tmp_path):
    loader = DataLoader(tabular(), batch_size=16, shuffle=False)
    settings = TrainSettings(epochs=2, lr=1e-2, **CPU)
    plain = fit(mlp(), loader, loader, "multiclass", settings, tmp_path / "plain", progress=False)
    calls = []

    def constant(model: nn.Module) -> torch.Tensor:
        calls.append(model)
        return torch.tensor(5.0)  # no gradient: training is unchanged, the logged loss is not

    extra = fit(
        mlp(), loader, loader, "multiclass", settings, tmp_path / "aux", progress=False, aux_loss=constant
    )
    assert len(calls) == 2 * len(loader)
    for a, b in zip(plain.history, extra.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"] + 5.0, abs=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-6)
