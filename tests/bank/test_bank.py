"""AdapterBank: mixed-task batches equal each task alone; lazy LRU cache; names; inputs."""

from __future__ import annotations

import io
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

import medpeft.bank.bank as bank_module
from medpeft.adapters_io.folder import save_adapter
from medpeft.bank import AdapterBank, BadInput, UnknownTask, WrongModality
from medpeft.errors import ConfigError, WeightsError
from medpeft.methods import MorSettings
from medpeft.methods.lora.attach import lora_layers
from medpeft.model import ModelSpec, build_model
from tests.bank.conftest import TASKS, write_task
from tests.methods.conftest import BACKBONE, TINY
from tests.serve.conftest import png_bytes

MIXED = ["tb", "blood", "chest", "tb", "chest", "blood"]


def test_mixed_batch_equals_each_task_alone_in_one_forward(bank_dir, images, alone, monkeypatch):
    bank = AdapterBank.from_directory(bank_dir)
    calls = []
    forward = bank.model.forward_features
    monkeypatch.setattr(bank.model, "forward_features", lambda x: calls.append(len(x)) or forward(x))
    probs = bank.predict(MIXED, [{"image": x} for x in images])
    assert calls == [len(MIXED)]  # ranks 4/8/2, targets q+v / q+v+fc1 / proj: one forward
    for i, name in enumerate(MIXED):
        assert probs[i].shape == (len(TASKS[name][1]),)
        torch.testing.assert_close(probs[i], alone[name][i], rtol=0, atol=1e-5)
    assert probs[2].sum() != pytest.approx(1.0)  # multilabel: sigmoid, not softmax
    assert probs[0].sum() == pytest.approx(1.0)


def test_tasks_served_in_turn_keep_no_merged_weights(bank_dir, images, alone):
    bank = AdapterBank.from_directory(bank_dir)
    for name in ("tb", "blood", "tb"):  # single-task batches, one task after another
        probs = bank.predict([name, name], [{"image": x} for x in images[:2]])
        torch.testing.assert_close(torch.stack(probs), alone[name][:2], rtol=0, atol=1e-5)
    layers = lora_layers(bank.model).values()
    assert layers and not any(layer.cache_merged or layer.merged_bytes() for layer in layers)


def test_tasks_are_lazy_and_the_cache_is_lru_by_count(bank_dir, images):
    bank = AdapterBank.from_directory(bank_dir, max_loaded=2)
    assert [t.name for t in bank.tasks()] == ["blood", "chest", "tb"]
    assert not any(t.loaded for t in bank.tasks())
    info = bank.task("blood")
    assert info.labels == TASKS["blood"][1] and info.method == "lora" and info.modalities == ["image"]
    bank.predict(["tb"], [{"image": images[0]}])
    bank.predict(["blood"], [{"image": images[0]}])
    bank.predict(["tb"], [{"image": images[0]}])  # tb used last: blood is the LRU
    bank.load("chest")
    assert bank.memory()["loaded"] == ["tb", "chest"]
    assert bank.memory()["loaded_bytes"] == bank.task("tb").bytes + bank.task("chest").bytes
    bank.unload("tb")
    assert [t.name for t in bank.tasks() if t.loaded] == ["chest"]


def test_batch_over_the_cache_runs_in_chunks_that_fit(bank_dir, images, alone, shared_bank):
    sizes = {t.name: t.bytes for t in shared_bank.tasks()}
    limit = sizes["blood"] + sizes["tb"]  # never all three at once
    bank = AdapterBank.from_directory(bank_dir, max_bytes=limit)
    probs = bank.predict(MIXED, [{"image": x} for x in images])
    assert bank.memory()["loaded_bytes"] <= limit
    for i, name in enumerate(MIXED):
        torch.testing.assert_close(probs[i], alone[name][i], rtol=0, atol=1e-5)


def test_evicted_adapters_come_back_from_the_cpu_tier(bank_dir, images, monkeypatch):
    bank = AdapterBank.from_directory(bank_dir, max_loaded=1)
    bank.cpu_tier = True  # as on a GPU backbone
    first = bank.predict(["tb"], [{"image": images[0]}])[0]
    bank.load("blood")
    assert bank.memory()["cpu_tier_bytes"] == bank.task("tb").bytes + bank.task("blood").bytes

    def no_disk(path):
        raise AssertionError(f"read {path} again")

    monkeypatch.setattr(bank_module, "read_state_dict", no_disk)
    again = bank.predict(["tb"], [{"image": images[0]}])[0]
    torch.testing.assert_close(again, first, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["../bank", "/etc", "tb/../blood", "", ".hidden", "TB", None])
def test_unknown_or_unsafe_task_names_are_refused(shared_bank, name):
    bank = shared_bank
    with pytest.raises(UnknownTask, match="unknown task"):
        bank.task(name)
    with pytest.raises(UnknownTask):
        bank.predict([name], [{"image": torch.zeros(3, 32, 32)}])


def test_register_adds_a_lazy_task_and_refuses_unsafe_or_taken_names(bank_dir, tmp_path):
    bank = AdapterBank.from_directory(bank_dir)
    info = bank.register("tb2", bank_dir / "tb")
    assert bank.tasks()[-1] == info
    assert info.name == "tb2" and not info.loaded and info.labels == TASKS["tb"][1]
    for bad in ("..", "a/b", "/abs"):
        with pytest.raises(ConfigError, match="task name"):
            bank.register(bad, bank_dir / "tb")
    with pytest.raises(ConfigError, match="already in the bank"):
        bank.register("tb", bank_dir / "blood")


def test_a_method_that_cannot_mix_adapters_in_a_batch_is_refused(bank_dir, tmp_path):
    weights = bank_dir.parent / "backbone.safetensors"
    spec = ModelSpec(BACKBONE, 3, "mor", MorSettings(), img_size=32, model_kwargs=dict(TINY))
    folder = save_adapter(build_model(spec, weights=weights), tmp_path / "mor", spec, ["a", "b", "c"],
                          "multiclass", backbone_weights=weights)
    bank = AdapterBank.from_directory(bank_dir)
    with pytest.raises(ConfigError, match=r"mor: method 'mor' cannot share a backbone in a mixed batch; "
                                          r"the bank serves \['lora', 'linear'\] adapters"):
        bank.register("mor", folder)


def test_a_task_on_another_backbone_is_refused_naming_its_folder(bank_dir, tmp_path):
    other = tmp_path / "other.safetensors"
    shutil.copy(bank_dir.parent / "backbone.safetensors", other)  # same values, another file
    mixed = tmp_path / "mixed"
    shutil.copytree(bank_dir, mixed)
    write_task(mixed, "tb", other, seed=1)
    with pytest.raises(WeightsError, match=r"mixed/tb.*another backbone"):
        AdapterBank.from_directory(mixed)


def test_a_task_whose_preprocessing_size_does_not_fit_the_backbone_is_refused(bank_dir, tmp_path):
    edited = shutil.copytree(bank_dir, tmp_path / "edited")
    file = edited / "blood" / "adapter_config.json"
    config = json.loads(file.read_text())
    config["preprocessing"]["size"] = 48  # the bank's backbone is built at 32 px
    file.write_text(json.dumps(config))
    with pytest.raises(ConfigError) as error:
        AdapterBank.from_directory(edited)
    assert str(error.value).startswith(f"{file}: preprocessing.size 48 does not fit the model: ")


def test_random_backbones_of_one_seed_but_other_heads_are_not_shared(tmp_path):
    """timm draws a random model's classifier with its backbone: the seed alone does not fix it."""
    for name, labels in (("two", ["a", "b"]), ("three", ["a", "b", "c"])):
        spec = ModelSpec(BACKBONE, len(labels), img_size=32, model_kwargs=dict(TINY))
        torch.manual_seed(0)
        save_adapter(build_model(spec), tmp_path / name, spec, labels, "multiclass", backbone_seed=0)
    with pytest.raises(WeightsError, match=r"two.*another backbone.*random seed 0 with 2 classes vs .*"
                                           r"random seed 0 with 3 classes"):
        AdapterBank.from_directory(tmp_path)


def _png(rgb) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 24, 3), rgb, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_preprocess_reads_paths_and_bytes_alike(shared_bank, tmp_path):
    bank = shared_bank
    data = _png((200, 30, 90))
    (tmp_path / "x.png").write_bytes(data)
    from_bytes = bank.preprocess("tb", {"image": data})["image"]
    from_path = bank.preprocess("tb", {"image": tmp_path / "x.png"})["image"]
    assert from_bytes.shape == (3, 32, 32)
    torch.testing.assert_close(from_bytes, from_path)
    probs = bank.predict(["tb", "chest"], [{"image": from_bytes}, {"image": from_path}])
    assert [p.shape for p in probs] == [(3,), (4,)]


def test_preprocess_errors_name_the_modality(shared_bank):
    bank = shared_bank
    with pytest.raises(BadInput, match="modality 'image'.*unrecognised image data"):
        bank.preprocess("tb", {"image": b"not an image at all"})
    with pytest.raises(BadInput, match="modality 'image'"):
        bank.preprocess("tb", {"image": _png((1, 2, 3))[:40]})  # truncated PNG
    with pytest.raises(WrongModality, match="'text'"):
        bank.preprocess("tb", {"text": b"..."})
    with pytest.raises(BadInput, match="needs an input for modality 'image'"):
        bank.predict(["tb"], [{}])


def test_preprocess_reads_files_with_the_options_training_recorded(bank_dir, tmp_path):
    """An adapter trained with ``data.window`` is served with the same window, not the default scaling."""
    import dataclasses

    from medpeft.adapters_io.folder import read_config
    from medpeft.bank.inputs import Preprocessor

    ramp = np.linspace(-1000.0, 1000.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    np.save(tmp_path / "ct.npy", ramp)
    config = read_config(bank_dir / "tb")
    windowed = dataclasses.replace(config, inputs={**config.inputs, "read": {"window": [0.0, 200.0]}})
    default = Preprocessor("tb", config)({"image": tmp_path / "ct.npy"})["image"]
    narrow = Preprocessor("tb", windowed)({"image": tmp_path / "ct.npy"})["image"]
    # A 200-wide window saturates most of the +-1000 ramp; min-max scaling does not.
    saturated = (narrow == narrow.max()).float().mean() + (narrow == narrow.min()).float().mean()
    assert saturated > 0.8
    assert not torch.allclose(default, narrow)


def test_task_lookups_and_preprocessing_do_not_wait_for_a_running_forward(bank_dir):
    """The server decodes uploads while a batch runs: only the model waits for the model."""
    bank = AdapterBank.from_directory(bank_dir)
    inside, release = threading.Event(), threading.Event()
    forward = bank._forward

    def held_forward(images, names):
        inside.set()
        assert release.wait(30)
        return forward(images, names)

    bank._forward = held_forward
    x = bank.preprocess("tb", {"image": png_bytes(0)})
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(bank.predict, ["tb"], [x])
        assert inside.wait(30)
        lookups = pool.submit(lambda: (bank.task("blood").labels, bank.tasks_by_name(), len(bank.tasks()),
                                       bank.preprocess("blood", {"image": png_bytes(1)})["image"].shape))
        try:
            answered = lookups.result(timeout=30)
        finally:
            release.set()
        assert answered == (TASKS["blood"][1], sorted(TASKS), 3, (3, 32, 32))
        assert running.result(timeout=30)[0].shape == (3,)
