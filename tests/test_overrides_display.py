"""A run made with `--set` shows what was set — in `dwc runs` (table and json), `dwc show` and `compare --runs` —
also when no other run of its experiment is listed to differ from (the overrides are recorded in its config)."""

from __future__ import annotations

import json

from helpers import dwc, write_project
from test_results_registry import config, seed_run

from dwc_core.results.compare import compare_rows
from dwc_core.runs.registry import Registry

EXPERIMENTS = """\
experiments:
  tiny:
    dataset: {name: synthetic, num_train: 64, num_test: 48, image_size: 32}
    model: {name: tirg, embed_dim: 32, cnn: {arch: tiny}, text: {word_dim: 16, hidden: 32}}
    trainer: {epochs: 1, num_workers: 0}
    eval: {ks: [1, 5, 10]}
"""


def test_a_lone_set_run_shows_its_override_in_runs_and_show(tmp_path):
    write_project(tmp_path, EXPERIMENTS)
    res = dwc(tmp_path, "queue", "tiny", "--set", "trainer.lr=0.1", "--set", "trainer.seed=7")
    assert res.returncode == 0, res.stderr
    row = Registry(tmp_path / "runs" / "registry.db").get(1)
    assert row["config"]["overrides"] == ["trainer.lr=0.1", "trainer.seed=7"]
    listed = json.loads(dwc(tmp_path, "runs", "--format", "json").stdout)
    assert listed[0]["variant"] == "trainer.lr=0.1"  # the seed has its own column
    table = dwc(tmp_path, "runs", env={"COLUMNS": "200"}).stdout
    assert "trainer.lr=0.1" in table
    shown = dwc(tmp_path, "show", "1").stdout
    assert "--set trainer.lr=0.1 --set trainer.seed=7" in " ".join(shown.split())


def test_compare_runs_labels_a_run_by_its_overrides(tmp_path):
    reg = Registry(tmp_path / "runs" / "registry.db")
    cfg = config(trainer={"lr": 0.1})
    cfg["overrides"] = ["trainer.lr=0.1"]
    seed_run(reg, tmp_path, "tiny", cfg, {"R@1": 3.0, "mean": 3.0})
    (row,) = compare_rows(reg, per_run=True).rows
    assert "trainer.lr=0.1" in row.label


def test_a_lone_grid_variant_and_a_set_run_through_the_cli(tmp_path):
    # one run of a grid experiment (its sibling variant not run yet) and one `--set` run: both say what they are
    from helpers import invoke

    (tmp_path / "experiments.yaml").write_text("experiments: {}\n")
    reg = Registry(tmp_path / "runs" / "registry.db")
    grid = config(model={"embed_dim": 128}, variant={"model.embed_dim": 128, "seed": 1})
    seed_run(reg, tmp_path, "abl", grid, {"R@1": 3.0, "mean": 3.0})
    cfg = config(trainer={"lr": 0.1})
    cfg["overrides"] = ["trainer.lr=0.1"]
    seed_run(reg, tmp_path, "tiny", cfg, {"R@1": 4.0, "mean": 4.0})
    reg.close()
    listed = {
        r["experiment"]: r["variant"] for r in json.loads(invoke(tmp_path, "runs", "-f", "json").stdout)
    }
    assert listed == {"abl": "model.embed_dim=128", "tiny": "trainer.lr=0.1"}
    table = invoke(tmp_path, "compare", "--runs").stdout
    assert "model.embed_dim=128 seed=1" in table and "trainer.lr=0.1 seed=1" in table
    rows = json.loads(invoke(tmp_path, "compare", "-f", "json").stdout)
    assert {r["experiment"]: r["variant"] for r in rows} == listed
