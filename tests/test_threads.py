"""The thread policy: cores from the affinity mask and cgroup quota, --threads / env precedence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medpeft import threads
from medpeft.errors import ConfigError
from medpeft.threads import available_cores, cgroup_cpu_quota, configure_threads, resolve_threads


def _cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(("files", "cores"), [
    ({"cpu.max": "200000 100000\n"}, 2),
    ({"cpu.max": "150000 100000\n"}, 1),  # 1.5 cores: one thread, not two on one and a half
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu.max": "garbage\n"}, None),
    ({}, None),
])
def test_cgroup_quota_v2_and_v1(tmp_path, files, cores):
    assert cgroup_cpu_quota(_cgroup(tmp_path, files)) == cores


def test_available_cores_is_the_affinity_mask_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert available_cores(tmp_path) == 4
    assert available_cores(_cgroup(tmp_path, {"cpu.max": "200000 100000"})) == 2
    assert available_cores(_cgroup(tmp_path, {"cpu.max": "800000 100000"})) == 4


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)


def test_threads_option_beats_env_which_beats_omp_which_beats_the_cores(four_cores):
    assert resolve_threads(3, {"MEDPEFT_THREADS": "2", "OMP_NUM_THREADS": "1"}) == 3
    assert resolve_threads(None, {"MEDPEFT_THREADS": "2", "OMP_NUM_THREADS": "1"}) == 2
    assert resolve_threads(None, {"OMP_NUM_THREADS": "1"}) == 1
    assert resolve_threads(None, {}) == 4
    assert resolve_threads(None, {"LOCAL_WORLD_SIZE": "2"}) == 2  # accelerate launch: cores shared
    assert resolve_threads(None, {}, command_default=1) == 1  # the demo's own default
    assert resolve_threads(None, {"MEDPEFT_THREADS": "2"}, command_default=1) == 2


def test_the_demo_defaults_to_one_thread_and_other_commands_to_the_cores(four_cores):
    from medpeft.cli import build_parser

    demo = build_parser().parse_args(["demo"])
    train = build_parser().parse_args(["train", "some.yaml"])
    assert resolve_threads(demo.threads, {}, command_default=getattr(demo, "default_threads", None)) == 1
    assert resolve_threads(train.threads, {}, command_default=getattr(train, "default_threads", None)) == 4


@pytest.mark.parametrize(("requested", "environ", "message"), [
    (0, {}, "--threads: expected a whole number of threads >= 1, got 0"),
    (None, {"MEDPEFT_THREADS": "many"}, "MEDPEFT_THREADS: expected a whole number of threads >= 1, got 'many'"),
    (None, {"OMP_NUM_THREADS": "-2"}, "OMP_NUM_THREADS: expected a whole number of threads >= 1, got '-2'"),
])
def test_bad_thread_counts_are_one_line_errors(requested, environ, message):
    with pytest.raises(ConfigError) as error:
        resolve_threads(requested, environ)
    assert str(error.value) == message


def test_configure_threads_sets_the_env_and_a_running_torch():
    before = torch.get_num_threads()
    environ = {"KMP_BLOCKTIME": "200"}
    try:
        configure_threads(2, environ)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert environ == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE",
                       "KMP_BLOCKTIME": "200"}  # a user's own wait settings stay
