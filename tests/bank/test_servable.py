"""What a bank serves of a mixed directory: LoRA and linear probes share the backbone; a fully
fine-tuned model gets one of its own (BankGroup); MoRA is skipped with its reason."""

from __future__ import annotations

import shutil

import pytest
import torch

from medpeft.adapters_io.folder import load_adapter
from medpeft.bank import AdapterBank, BankGroup, UnknownTask
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



def probabilities_alone(folder, images):
    model, _ = load_adapter(folder)
    with torch.no_grad():
        return torch.softmax(model.eval()(images), -1)


def test_a_bank_group_serves_a_fully_fine_tuned_model_on_its_own_backbone(mixed_dir, images):
    group = BankGroup.from_directory(mixed_dir)
    assert [t.name for t in group.tasks()] == ["probe", "tb", "whole"]
    assert list(group.skipped) == ["mora"] and "method 'mora' cannot share" in group.skipped["mora"]
    names = ["whole", "tb", "whole", "probe"]
    mixed = group.predict(names, [{"image": x} for x in images[:4]])
    for name in ("whole", "tb", "probe"):
        alone = probabilities_alone(mixed_dir / name, images[:4])
        for i in (i for i, task in enumerate(names) if task == name):
            torch.testing.assert_close(mixed[i], alone[i], rtol=1e-4, atol=1e-5)
    # the shared backbone is untouched by the fully fine-tuned model's weights
    shared = group.predict(["tb"], [{"image": images[0]}])[0]
    torch.testing.assert_close(shared, probabilities_alone(mixed_dir / "tb", images[:1])[0], rtol=1e-4, atol=1e-5)


def test_a_bank_group_names_unknown_tasks_and_refuses_a_task_beside_a_full_model(mixed_dir, tmp_path):
    group = BankGroup.from_directory(mixed_dir)
    with pytest.raises(UnknownTask, match=r"unknown task 'wole'.*whole"):
        group.task("wole")
    alone = BankGroup.from_directory(mixed_dir / "whole")
    with pytest.raises(ConfigError, match="serves one fully fine-tuned model, its own backbone; it takes no other task"):
        alone.register("tb", mixed_dir / "tb")
