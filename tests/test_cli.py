"""The `dwc` command: import hygiene, exit codes and messages for bad input, listing formats."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import heavy_modules_after, invoke, write_project

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
experiments:
  demo:
    dataset: {name: synthetic, num_train: 64, num_test: 16, image_size: 32}
    model: {name: tirg, embed_dim: 32, cnn: {arch: tiny}, text: {word_dim: 16, hidden: 32}}
    trainer: {epochs: 1, num_workers: 0}
    eval: {ks: [1, 5, 10]}
"""


def project(tmp_path: Path, text: str = GOOD) -> Path:
    return write_project(tmp_path, text)


@pytest.mark.parametrize("args", [["--help"], ["runs"], ["runs", "--format", "json"], ["compare", "--help"]])
def test_listing_commands_do_not_import_heavy_modules(tmp_path, args):
    project(tmp_path)
    assert heavy_modules_after(args, tmp_path) == []


def test_dwc_core_never_imports_dwc_tui():
    offenders = []
    for path in (ROOT / "dwc_core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "dwc_tui"]
    assert offenders == []
    code = "import sys, pkgutil, importlib, dwc_core\n" \
           "for m in pkgutil.walk_packages(dwc_core.__path__, 'dwc_core.'):\n" \
           "    importlib.import_module(m.name)\n" \
           "print(any(k.startswith('dwc_tui') for k in sys.modules))\n"  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "False", res.stderr


def assert_clean_error(res, *fragments: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in res.output, res.output


def test_unknown_experiment_suggests(tmp_path):
    res = invoke(project(tmp_path), "run", "dmeo")
    assert_clean_error(res, "no experiment named 'dmeo'", "'demo'")


def test_malformed_yaml(tmp_path):
    res = invoke(project(tmp_path, GOOD.replace("image_size: 32}", "image_size: 32")), "run", "demo")
    assert_clean_error(res, "experiments.yaml:", "malformed YAML")


def test_unknown_key(tmp_path):
    res = invoke(project(tmp_path, GOOD.replace("epochs: 1", "epohcs: 1")), "run", "demo")
    assert_clean_error(res, "experiments.yaml:5", "epohcs", "epochs")


def test_wrong_type(tmp_path):
    res = invoke(project(tmp_path, GOOD.replace("epochs: 1", "epochs: one")), "run", "demo")
    assert_clean_error(res, "experiments.yaml:5", "trainer.epochs", "an integer")


def test_set_on_missing_key(tmp_path):
    res = invoke(project(tmp_path), "run", "demo", "--set", "trainer.lrr=3")
    assert_clean_error(res, "--set trainer.lrr=3", "'lr'")


def test_missing_experiments_file(tmp_path):
    res = invoke(tmp_path, "run", "demo")
    assert_clean_error(res, "no such file")


def test_runs_empty_project_and_json(tmp_path):
    res = invoke(project(tmp_path), "runs", "--format", "json")
    assert res.exit_code == 0 and json.loads(res.stdout) == []
    res = invoke(tmp_path, "runs", "--format", "xml")
    assert_clean_error(res, "--format 'xml'")


def test_show_unknown_run_is_a_usage_error(tmp_path):
    invoke(project(tmp_path), "run", "demo", "--queue")
    res = invoke(tmp_path, "show", "99")
    assert (
        res.exit_code == 2 and "no run with id 99" in res.output
    )  # a wrong argument, not a registry failure


def test_queue_only_creates_rows(tmp_path):
    res = invoke(project(tmp_path), "run", "demo", "--queue")
    assert res.exit_code == 0, res.output
    rows = json.loads(invoke(tmp_path, "runs", "--format", "json").stdout)
    assert [r["status"] for r in rows] == ["queued"]
    assert (tmp_path / "runs" / "1-demo" / "config.json").is_file()
