"""A bank refuses tasks trained on other backbone weights than those it runs (another sha256)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import uvicorn
from safetensors.torch import save_file

from medpeft.bank import AdapterBank
from medpeft.cli import main
from medpeft.errors import WeightsError
from tests.bank.conftest import TASKS, write_task
from tests.methods.conftest import _tiny_vit
from tests.runs.conftest import one_line


def write_backbone(path: Path, seed: int) -> str:
    """Save a tiny backbone of ``seed``; its sha256."""
    save_file({k: v.contiguous() for k, v in _tiny_vit(seed=seed).state_dict().items()}, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def swapped(tmp_path) -> tuple[Path, Path, str]:
    """``(directory, weights, recorded sha256)``: tasks trained on ``weights``, then replaced."""
    weights = tmp_path / "backbone.safetensors"
    recorded = write_backbone(weights, seed=123)
    for seed, name in enumerate(TASKS, start=1):
        write_task(tmp_path / "bank", name, weights, seed)
    write_backbone(weights, seed=7)
    return tmp_path / "bank", weights, recorded


def test_a_bank_on_a_replaced_weights_file_is_refused(swapped) -> None:
    directory, weights, recorded = swapped
    now = hashlib.sha256(weights.read_bytes()).hexdigest()
    with pytest.raises(WeightsError) as error:
        AdapterBank.from_directory(directory)
    assert str(error.value).startswith(
        f"{directory / 'blood'} was trained on other backbone weights: {weights} has sha256 {now}, "
        f"the adapter records sha256 {recorded}"
    )


def test_the_override_serves_each_task_with_a_warning(swapped) -> None:
    directory, _, _ = swapped
    with pytest.warns(UserWarning, match="runs on other backbone weights") as caught:
        bank = AdapterBank.from_directory(directory, allow_other_weights=True)
    assert sorted(t.name for t in bank.tasks()) == sorted(TASKS)
    assert len([w for w in caught if "runs on other backbone weights" in str(w.message)]) == len(TASKS)


def test_one_checkpoint_given_for_every_task_is_checked_against_each(bank_dir, tmp_path) -> None:
    other = tmp_path / "other.safetensors"
    write_backbone(other, seed=7)
    with pytest.raises(WeightsError, match=f"{other} has sha256"):
        AdapterBank.from_directory(bank_dir, weights=other)
    copy = tmp_path / "copy.safetensors"
    shutil.copy(bank_dir.parent / "backbone.safetensors", copy)  # the same bytes: served
    assert len(AdapterBank.from_directory(bank_dir, weights=copy).tasks()) == len(TASKS)


def test_serve_refuses_to_start_in_one_line(swapped, monkeypatch, capsys) -> None:
    directory, weights, _ = swapped
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: started.append(args))
    assert main(["serve", str(directory), "--no-auth", "--device", "cpu"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"medpeft serve: error: {directory / 'blood'} was trained on other backbone weights: {weights}")
    assert started == []
    with pytest.warns(UserWarning, match="runs on other backbone weights"):
        assert main(["serve", str(directory), "--no-auth", "--device", "cpu", "--allow-other-weights"]) == 0
    assert len(started) == 1


def test_cli_predict_of_several_tasks_refuses_in_one_line(swapped, tmp_path, capsys, write_image) -> None:
    directory, _, _ = swapped
    image = tmp_path / "x.png"
    write_image(image, (10, 200, 30))
    argv = ["predict", "--adapter", f"tb={directory / 'tb'}", "--adapter", f"chest={directory / 'chest'}",
            str(image), "--quiet", "--device", "cpu"]
    assert main(argv) == 2
    assert "tb was trained on other backbone weights" in one_line(capsys.readouterr().err)
