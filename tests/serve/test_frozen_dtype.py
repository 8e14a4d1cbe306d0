"""``medpeft serve --frozen-dtype bfloat16|int8``: the shared backbone's frozen layers in bf16 or
int8, adapters and heads in fp32, answers close to the fp32 server's."""

from __future__ import annotations

import pytest
import torch
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from medpeft.bank import AdapterBank
from medpeft.cli import main
from medpeft.frozen_dtype import is_quantized
from medpeft.methods.lora.layer import LoRALinear
from tests.bank.conftest import TASKS
from tests.serve.conftest import png_bytes

# bf16 keeps 8 significant bits: every frozen weight, and under the server's autocast every matmul
# operand, is rounded by up to 2^-9 relative; int8 rounds each weight to 1/127 of its row's largest.
# Through the tiny ViT the logits (of order 1 to 10: the test tasks' heads are N(0, 1)) move by a
# few hundredths, the probabilities here by at most 0.024 (bf16) and 0.027 (int8), measured; 0.06
# leaves room for other CPUs' bf16 kernels. Another adapter or backbone moves them by tenths.
PROBABILITY_TOLERANCE = 0.06


def served_app(monkeypatch, directory, *options: str) -> FastAPI:
    """The app ``medpeft serve DIRECTORY OPTIONS`` builds (uvicorn not started)."""
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: apps.append(app))
    assert main(["serve", str(directory), "--device", "cpu", "--no-auth", *options]) == 0
    (app,) = apps
    return app


def the_bank(app: FastAPI) -> AdapterBank:
    (bank,) = app.state.medpeft.bank.banks
    return bank


def probabilities(app: FastAPI, requests: list[tuple[str, bytes]]) -> list[list[float]]:
    with TestClient(app) as client:
        answers = [client.post("/predict", data={"task": task}, files={"image": ("x.png", image, "image/png")})
                   for task, image in requests]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    return [[a.json()["probabilities"][label] for label in a.json()["labels"]] for a in answers]


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_low_precision_server_holds_frozen_layers_low_and_answers_as_the_fp32_one(monkeypatch, adapter_dir, dtype):
    requests = [(task, png_bytes(seed)) for seed, task in enumerate(list(TASKS) * 3)]
    fp32_app = served_app(monkeypatch, adapter_dir)
    low_app = served_app(monkeypatch, adapter_dir, "--frozen-dtype", dtype)

    expected, served = probabilities(fp32_app, requests), probabilities(low_app, requests)

    for want, got in zip(expected, served):
        assert got == pytest.approx(want, abs=PROBABILITY_TOLERANCE)
    assert expected != served  # another numeric recipe indeed
    model = the_bank(low_app).model
    held = is_quantized if dtype == "int8" else (lambda weight: weight.dtype == torch.bfloat16)
    lora = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert lora and all(held(m.base.weight) for m in lora)
    assert held(model.blocks[0].mlp.fc2.weight)  # a layer no adapter targets
    trainable = [p for name, p in model.named_parameters() if "lora_" in name or name.startswith("head.")]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert the_bank(fp32_app).model.blocks[0].mlp.fc2.weight.dtype == torch.float32


def test_a_bad_frozen_dtype_is_refused_in_one_line(capsys, adapter_dir):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(adapter_dir), "--frozen-dtype", "float64"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("medpeft serve: error: argument --frozen-dtype: invalid choice: 'float64' (choose from")
    assert "float32" in error and "bfloat16" in error and "int8" in error
