"""Smoke test of benchmarks/mora_missing.py: structure of the results, not who wins."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mora_missing.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mora_missing", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def tiny_run(bench, tmp_path_factory):
    cfg = bench.ExperimentConfig(
        seeds=(0, 1),
        n=120,
        epochs=1,
        pretrain_n=120,
        pretrain_epochs=1,
        test_etas=(0.0, 0.7),
        device="cpu",
    )
    out = tmp_path_factory.mktemp("mora_missing")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest, above all on a busy CPU
    try:
        with warnings.catch_warnings():  # metrics undefined for classes absent from tiny splits
            warnings.simplefilter("ignore", RuntimeWarning)
            return cfg, out, bench.run_experiment(cfg, out)
    finally:
        torch.set_num_threads(threads)


def test_every_method_has_every_grid_cell_per_seed(tiny_run):
    cfg, _, result = tiny_run
    cells = set(itertools.product(cfg.test_kinds, cfg.test_etas))
    assert set(result["per_seed"]) == set(cfg.methods)
    for name in cfg.methods:
        assert len(result["per_seed"][name]) == len(cfg.seeds)
        for grid in [*result["per_seed"][name], result["mean"][name], result["std"][name]]:
            assert set(grid) == cells
            assert all(set(metrics) == {"accuracy", "f1_macro"} for metrics in grid.values())


def test_metrics_are_fractions_and_gains_are_paired(tiny_run):
    cfg, _, result = tiny_run
    for grids in result["per_seed"].values():
        for grid in grids:
            values = [v for metrics in grid.values() for v in metrics.values()]
            assert all(0.0 <= v <= 1.0 for v in values)
    assert ("mora-missing", "lora-complete") in result["gains"]
    for diffs in result["gains"].values():
        assert len(diffs) == len(cfg.seeds) and all(math.isfinite(d) for d in diffs)


def test_report_and_plots_are_written(tiny_run, bench):
    cfg, out, result = tiny_run
    names = {p.name for p in out.iterdir()}
    plots = itertools.product(("heatmap", "curves"), cfg.methods)
    expected = {"mora_missing.md", *(f"mora_missing_{p}_{m}.png" for p, m in plots)}
    assert names == expected == {Path(p).name for p in result["files"]}
    report = (out / "mora_missing.md").read_text(encoding="utf-8")
    assert report == bench.render_report(result)
    assert all(f"| {m} |" in report for m in cfg.methods)


def test_a_grid_without_the_headline_setting_is_rejected(bench):
    with pytest.raises(bench.ConfigError, match="headline"):
        bench.ExperimentConfig(test_etas=(0.0, 0.5))
