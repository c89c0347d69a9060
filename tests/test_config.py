"""experiments.yaml loading, resolution and the errors users see."""

from __future__ import annotations

import json
import textwrap

import pytest

from dwc_core.config.experiments import ExperimentsFile
from dwc_core.errors import ConfigError

BASE = """\
defaults:
  trainer: {epochs: 30, batch_size: 32, lr: 1.0e-4, seed: 599}
experiments:
  demo:
    dataset: {name: synthetic, num_train: 100}
    model: {name: tirg, embed_dim: 64}
    trainer: {epochs: 3}
  child:
    extends: demo
    trainer: {lr: 0.01}
  grid:
    extends: demo
    grid: {model.embed_dim: [16, 32], trainer.lr: [0.1, 0.2]}
    seeds: [1, 2, 3]
"""


def load(text: str) -> ExperimentsFile:
    return ExperimentsFile(textwrap.dedent(text), "exp.yaml")


def error_of(text: str, name: str = "demo", overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load(text).resolve(name, overrides)
    return info.value.message


def test_defaults_extends_and_schema_defaults():
    ef = load(BASE)
    (spec,) = ef.resolve("child")
    cfg = spec.config
    assert cfg["trainer"]["epochs"] == 3  # from the parent
    assert cfg["trainer"]["lr"] == 0.01  # the child's own
    assert cfg["trainer"]["batch_size"] == 32  # from defaults
    assert cfg["trainer"]["select_on"] == "test"  # schema default
    assert cfg["dataset"]["num_train"] == 100 and cfg["dataset"]["image_size"] == 64
    assert cfg["model"]["cnn"]["arch"] == "resnet18"
    json.dumps(cfg)  # frozen configs are JSON-serialisable


def test_grid_times_seeds():
    specs = load(BASE).resolve("grid")
    assert len(specs) == 2 * 2 * 3
    combos = {(s.config["model"]["embed_dim"], s.config["trainer"]["lr"], s.seed) for s in specs}
    assert len(combos) == 12
    assert specs[0].variant == {"model.embed_dim": 16, "trainer.lr": 0.1, "seed": 1}


def test_set_override_and_type_coercion():
    (spec,) = load(BASE).resolve("demo", ["trainer.epochs=7", "trainer.lr=1", "model.cnn.arch=tiny"])
    assert spec.config["trainer"]["epochs"] == 7
    assert spec.config["trainer"]["lr"] == 1.0 and isinstance(spec.config["trainer"]["lr"], float)
    assert spec.config["model"]["cnn"]["arch"] == "tiny"


def test_unknown_key_names_file_line_and_suggests():
    text = BASE.replace("trainer: {epochs: 3}", "trainer: {epohcs: 3}")
    msg = error_of(text)
    assert "exp.yaml:7" in msg
    assert "epohcs" in msg and "Did you mean 'epochs'" in msg


def test_wrong_type_names_line_and_allowed():
    text = BASE.replace("trainer: {epochs: 3}", "trainer: {epochs: three}")
    msg = error_of(text)
    assert "exp.yaml:7" in msg and "trainer.epochs" in msg and "an integer" in msg


def test_bad_choice_lists_allowed_values():
    text = BASE.replace("model: {name: tirg, embed_dim: 64}", "model: {name: tirg, loss: triplet}")
    msg = error_of(text)
    assert "exp.yaml:6" in msg and "batch_based_classification | soft_triplet" in msg


def test_unknown_experiment_suggests_close_names():
    with pytest.raises(ConfigError) as info:
        load(BASE).resolve("dmeo")
    assert "no experiment named 'dmeo'" in info.value.message and "'demo'" in info.value.message


def test_malformed_yaml_reports_line():
    with pytest.raises(ConfigError) as info:
        load("experiments:\n  demo:\n    dataset: {name: synthetic\n    model: x\n")
    assert "exp.yaml:" in info.value.message and "malformed YAML" in info.value.message


def test_duplicate_key_is_an_error():
    with pytest.raises(ConfigError) as info:
        load("experiments:\n  demo: {}\n  demo: {}\n")
    assert "duplicate key 'demo'" in info.value.message and "exp.yaml:3" in info.value.message


def test_set_on_missing_key():
    msg = error_of(BASE, overrides=["trainer.epoch=3"])
    assert "--set trainer.epoch=3" in msg and "Did you mean 'epochs'" in msg
    msg = error_of(BASE, overrides=["nonsense=1"])
    assert "is not an option" in msg


def test_extends_cycle_and_unknown_parent():
    text = BASE + "  a: {extends: b}\n  b: {extends: a}\n"
    assert "cycle" in error_of(text, "a")
    text = BASE + "  c: {extends: demoo}\n"
    assert "not an experiment" in error_of(text, "c") and "'demo'" in error_of(text, "c")


def test_missing_dataset_name():
    msg = error_of("experiments:\n  x:\n    model: {name: tirg}\n", "x")
    assert "dataset.name" in msg and "synthetic" in msg


def test_changing_method_in_child_starts_section_afresh():
    text = BASE + "  other:\n    extends: demo\n    model: {name: tirg}\n"
    (spec,) = load(text).resolve("other")
    assert spec.config["model"]["embed_dim"] == 64  # same method: merged
    text2 = BASE.replace("embed_dim: 64}", "embed_dim: 64, loss: soft_triplet}")
    (spec2,) = load(text2).resolve("child")
    assert spec2.config["model"]["loss"] == "soft_triplet"


def test_fashioniq_protocol_presets():
    text = """\
    experiments:
      a: {dataset: {name: fashioniq, root: /data, protocol: clip4cir}, model: {name: tirg}}
      b: {dataset: {name: fashioniq, root: /data, protocol: clip4cir, mask_reference: true}, model: {name: tirg}}
    """
    (a,) = load(text).resolve("a")
    assert (a.config["dataset"]["gallery"], a.config["dataset"]["mask_reference"], a.config["dataset"]["text"]) == (
        "split_all", False, "joined",
    )  # fmt: skip
    (b,) = load(text).resolve("b")
    assert b.config["dataset"]["mask_reference"] is True and b.config["dataset"]["gallery"] == "split_all"


def test_shipped_experiments_file_resolves_everything():
    from pathlib import Path

    ef = ExperimentsFile.load(Path(__file__).parent.parent / "experiments.yaml")
    assert "demo" in ef.names()
    for name in ef.names():
        assert ef.resolve(name)
