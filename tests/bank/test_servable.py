"""What a bank serves of a mixed directory: LoRA and linear probes; MoRA and full fine-tuning skipped."""

from __future__ import annotations

import shutil

import pytest
import torch

from medpeft.adapters_io.folder import load_adapter
from medpeft.bank import AdapterBank
from medpeft.errors import ConfigError
from tests.bank.conftest import write_method_task


@pytest.fixture(scope="module")
def mixed_dir(bank_dir, tmp_path_factory):
    """``tb`` (LoRA), ``probe`` (linear), ``mora`` (MoRA), ``whole`` (full fine-tuning)."""
    root = tmp_path_factory.mktemp("mixed") / "adapters"
    shutil.copytree(bank_dir / "tb", root / "tb")
    weights = bank_dir.parent / "backbone.safetensors"
    for seed, (name, method) in enumerate({"probe": "linear", "mora": "mora", "whole": "full"}.items()):
        write_method_task(root, name, method, weights, seed)
    return root


def test_a_mixed_directory_serves_lora_and_linear_probes_and_names_what_it_skips(mixed_dir):
    bank = AdapterBank.from_directory(mixed_dir, skip_unservable=True)
    assert [t.name for t in bank.tasks()] == ["probe", "tb"]
    assert sorted(bank.skipped) == ["mora", "whole"]
    assert "method 'mora' cannot share a backbone in a mixed batch; the bank serves ['lora', 'linear']" \
        in bank.skipped["mora"]
    assert "method 'full' trains the whole backbone" in bank.skipped["whole"]


def test_a_linear_probe_in_a_mixed_batch_equals_the_probe_alone(mixed_dir, images):
    bank = AdapterBank.from_directory(mixed_dir, skip_unservable=True)
    names = ["probe", "tb", "probe", "tb"]
    mixed = bank.predict(names, [{"image": x} for x in images[:4]])
    for name in ("probe", "tb"):
        model, _ = load_adapter(mixed_dir / name)
        with torch.no_grad():
            alone = torch.softmax(model.eval()(images[:4]), -1)
        for i, task in enumerate(names):
            if task == name:
                torch.testing.assert_close(mixed[i], alone[i], rtol=1e-4, atol=1e-5)


def test_without_skipping_an_unservable_task_is_still_refused(mixed_dir):
    with pytest.raises(ConfigError, match="mora: method 'mora' cannot share a backbone"):
        AdapterBank.from_directory(mixed_dir)


def test_a_directory_with_nothing_servable_names_every_reason(mixed_dir, tmp_path):
    only = tmp_path / "only"
    shutil.copytree(mixed_dir / "mora", only / "mora")
    with pytest.raises(ConfigError, match=r"no servable task among \['mora'\]: .*mora: method 'mora'"):
        AdapterBank.from_directory(only, skip_unservable=True)


def test_a_run_folder_and_a_folder_of_run_folders_are_task_directories(mixed_dir, tmp_path):
    runs = tmp_path / "runs"
    for name in ("tb", "probe"):
        shutil.copytree(mixed_dir / name, runs / f"run-{name}" / "adapter")
    (runs / "data").mkdir()  # not a run: ignored
    bank = AdapterBank.from_directory(runs)
    assert [t.name for t in bank.tasks()] == ["run-probe", "run-tb"]
    single = AdapterBank.from_directory(runs / "run-tb")
    assert [t.name for t in single.tasks()] == ["run-tb"]

