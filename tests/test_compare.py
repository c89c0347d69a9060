"""dwc_core.results.compare: grouping, mean ± std and n by hand, best marks, published rows, every format."""

from __future__ import annotations

import csv
import io
import json
import re
import statistics

import pytest
from helpers import invoke
from test_results_registry import config, seed_run

from dwc_core.errors import UsageError
from dwc_core.results import formats
from dwc_core.results.compare import compare_rows, metric_order, shared_summary
from dwc_core.runs.registry import Registry


@pytest.fixture
def reg(tmp_path):
    r = Registry(tmp_path / "runs" / "registry.db")
    yield r
    r.close()


def _by_label(table):
    return {(r.key, r.label): r for r in table.rows}


def test_seeds_average_and_variants_split(reg, tmp_path):
    # two grid variants of "abl" (embed_dim 128 / 256), two seeds each; one `--set trainer.lr` variant of "demo"
    vals = {(128, 1): (10.0, 40.0), (128, 2): (12.0, 44.0), (256, 1): (20.0, 50.0), (256, 2): (23.0, 51.0)}
    for (dim, seed), (r1, r10) in vals.items():
        cfg = config(seed=seed, model={"embed_dim": dim})
        seed_run(reg, tmp_path, "abl", cfg, {"R@1": r1, "R@10": r10, "mean": (r1 + r10) / 2},
                 variant={"model.embed_dim": dim, "seed": seed})  # fmt: skip
    seed_run(reg, tmp_path, "demo", config(seed=5), {"R@1": 30.0, "R@10": 60.0, "mean": 45.0})
    seed_run(
        reg, tmp_path, "demo", config(seed=5, trainer={"lr": 0.1}), {"R@1": 5.0, "R@10": 15.0, "mean": 10.0}
    )

    t = compare_rows(reg)
    rows = _by_label(t)
    assert set(rows) == {
        ("abl", "model.embed_dim=128"), ("abl", "model.embed_dim=256"),
        ("demo", "trainer.lr=0.001"), ("demo", "trainer.lr=0.1"),
    }  # fmt: skip
    r128 = rows[("abl", "model.embed_dim=128")]
    assert r128.n == 2 and sorted(r128.seeds) == [1, 2]
    assert r128.cells["R@1"].mean == round(statistics.mean([10.0, 12.0]), 2) == 11.0
    assert r128.cells["R@1"].std == round(statistics.stdev([10.0, 12.0]), 2) == 1.41
    r256 = rows[("abl", "model.embed_dim=256")]
    assert r256.cells["R@10"].mean == 50.5 and r256.cells["R@10"].std == round(statistics.stdev([50, 51]), 2)
    single = rows[("demo", "trainer.lr=0.1")]
    assert single.n == 1 and single.cells["R@1"].std is None  # std only with n >= 2
    # best per column: R@1 30 (demo lr 0.001), R@10 60 (same), nothing else marked
    best = {(r.key, r.label, m) for r in t.rows for m, c in r.cells.items() if c.best}
    assert best == {("demo", "trainer.lr=0.001", m) for m in ("R@1", "R@10", "mean")}
    assert t.metrics == ["R@1", "R@10", "mean"]
    assert "dataset synthetic" in t.title and "method tirg" in t.title


def test_only_changed_lists_differing_keys_as_columns(reg, tmp_path):
    seed_run(reg, tmp_path, "a", config(model={"embed_dim": 128}), {"R@1": 1.0})
    seed_run(reg, tmp_path, "b", config(model={"embed_dim": 256}, trainer={"lr": 0.5}), {"R@1": 2.0})
    t = compare_rows(reg, only_changed=True)
    assert t.changed_keys == ["model.embed_dim", "trainer.lr"]
    assert [r.changed for r in t.rows] == [
        {"model.embed_dim": 128, "trainer.lr": 0.001},
        {"model.embed_dim": 256, "trainer.lr": 0.5},
    ]
    assert "model.embed_dim" in t.info_columns()
    # the title says once what the rows share: config() sets dataset.num_test 100 (default 1000) and trainer.epochs
    # 3 (default 30); dataset.image_size 64 and trainer.select_on test are the schema defaults
    assert t.title == (
        "best epoch per experiment · dataset synthetic · method tirg"
        " · shared: dataset.num_test=100, trainer.epochs=3; 2 more at their defaults"
    )
    shared = {
        "dataset.name": "synthetic", "dataset.image_size": 64, "dataset.num_test": 100, "model.name": "tirg",
        "trainer.epochs": 3, "trainer.select_on": "test",
    }  # fmt: skip
    assert [d["shared"] for d in json.loads(formats.to_json(t))] == [shared, shared]
    assert "shared" not in formats.to_csv(t).splitlines()[0].split(",")
    # every file format prints the config values as they are (lr 0.001 was "0.00" in csv/md/latex)
    rows = list(csv.DictReader(io.StringIO(formats.to_csv(t))))
    assert [r["trainer.lr"] for r in rows] == ["0.001", "0.5"]
    assert "| 0.001 |" in formats.to_markdown(t).replace("  ", " ")
    assert "0.001" in formats.to_latex(t)


def test_shared_summary_lists_non_defaults_then_cuts_at_the_width():
    defaults = [{"trainer.epochs": 30, "trainer.lr": 0.0001, "eval.ks": None}]
    at_defaults = {"trainer.epochs": 30, "trainer.lr": 0.0001, "eval.ks": None, "model.name": "tirg"}
    # model.name (and dataset.name) are in the title already: not counted
    assert shared_summary(at_defaults, defaults) == "3 at their defaults"
    assert shared_summary({}, defaults) == "no other settings shared"
    # 12 non-default keys "model.kNN=1", 11 characters each and ", " between them: four fit in 60 characters
    # (4 * 11 + 3 * 2 = 50; a fifth makes 63)
    many = {f"model.k{i:02d}": 1 for i in range(12)} | {"trainer.epochs": 30}
    text = shared_summary(many, defaults)
    shown = ", ".join(f"model.k{i:02d}=1" for i in range(4))
    assert text == f"shared: {shown} +8 more (all: --format json); 1 more at their defaults"
    # a key that is at its default for one (dataset, method) of the rows but not for another is listed
    two_methods = [{"model.embed_dim": 512}, {"model.embed_dim": 1024}]
    assert shared_summary({"model.embed_dim": 512}, two_methods) == "shared: model.embed_dim=512"


def test_tag_filter(reg, tmp_path):
    seed_run(reg, tmp_path, "a", config(tags=["abl"]), {"R@1": 10.0})
    seed_run(reg, tmp_path, "a", config(seed=2, tags=["abl"]), {"R@1": 13.0})
    seed_run(reg, tmp_path, "b", config(tags=["abl", "paper"]), {"R@1": 20.0})
    seed_run(reg, tmp_path, "c", config(), {"R@1": 30.0})
    t = compare_rows(reg, tag="abl")
    assert [(r.key, r.n, r.cells["R@1"].mean, r.cells["R@1"].std) for r in t.rows] == [
        ("a", 2, 11.5, round(statistics.stdev([10.0, 13.0]), 2)), ("b", 1, 20.0, None),
    ]  # fmt: skip
    # best among the rows shown: c's 30.0 is filtered out, so b's 20.0 is the best
    assert [r.cells["R@1"].best for r in t.rows] == [False, True]
    assert [r.key for r in compare_rows(reg, tag="paper").rows] == ["b"]
    with pytest.raises(UsageError, match="no runs with results match --tag nope"):
        compare_rows(reg, tag="nope")


def test_group_by_method_averages_identical_configs_across_experiments(reg, tmp_path):
    # t1 and t2 are the same config (the experiment name is metadata): one tirg row over both
    seed_run(reg, tmp_path, "t1", config(seed=1), {"R@1": 10.0, "R@10": 40.0})
    seed_run(reg, tmp_path, "t2", config(seed=2), {"R@1": 14.0, "R@10": 44.0})
    seed_run(reg, tmp_path, "t3", config(model={"embed_dim": 128}), {"R@1": 5.0, "R@10": 50.0})
    seed_run(reg, tmp_path, "d", config(method="dwc"), {"R@1": 30.0, "R@10": 35.0})
    t = compare_rows(reg, group_by="method")
    got = [(r.key, r.label, r.experiment, r.n, r.cells["R@1"].mean, r.cells["R@1"].std) for r in t.rows]
    assert got == [
        ("dwc", "", "d", 1, 30.0, None),
        ("tirg", "model.embed_dim=128", "t3", 1, 5.0, None),
        ("tirg", "model.embed_dim=256", "t1, t2", 2, 12.0, round(statistics.stdev([10.0, 14.0]), 2)),
    ]
    assert t.key_column == "method" and "experiment" in t.info_columns()
    best = {(r.key, r.label, m) for r in t.rows for m, c in r.cells.items() if c.best}
    assert best == {("dwc", "", "R@1"), ("tirg", "model.embed_dim=128", "R@10")}


def test_group_by_config_key(reg, tmp_path):
    seed_run(reg, tmp_path, "a", config(seed=1, trainer={"lr": 0.1}), {"R@1": 10.0})
    seed_run(reg, tmp_path, "a", config(seed=2, trainer={"lr": 0.1}), {"R@1": 20.0})
    seed_run(reg, tmp_path, "b", config(model={"embed_dim": 128}), {"R@1": 7.0})
    seed_run(reg, tmp_path, "c", config(), {"R@1": 9.0})
    t = compare_rows(reg, group_by="trainer.lr")
    # key = the value as text; under one key, the configs that still differ are separate rows, labelled
    got = [(r.key, r.label, r.experiment, r.n, r.cells["R@1"].mean) for r in t.rows]
    assert got == [
        ("0.001", "model.embed_dim=128", "b", 1, 7.0),
        ("0.001", "model.embed_dim=256", "c", 1, 9.0),
        ("0.1", "", "a", 2, 15.0),
    ]
    assert t.rows[2].cells["R@1"].std == round(statistics.stdev([10.0, 20.0]), 2) == 7.07
    assert t.title.startswith("best epoch per trainer.lr") and t.info_columns()[0] == "trainer.lr"


def test_metric_picks_the_fashioniq_categories_and_avg(reg, tmp_path):
    seed_run(reg, tmp_path, "fiq", fiq_config(), FIQ)
    seed_run(reg, tmp_path, "syn", config(), {"R@1": 11.0, "R@10": 42.0, "R@50": 70.0, "mean": 41.0})
    t = compare_rows(reg, metrics=["R@10"])
    assert t.metrics == ["R@10", "dress/R@10", "shirt/R@10", "toptee/R@10", "avg/R@10"]
    fiq, syn = t.rows
    assert {m: c.mean for m, c in fiq.cells.items() if m in t.metrics} == {
        "dress/R@10": 30.0, "shirt/R@10": 36.0, "toptee/R@10": 41.0, "avg/R@10": 35.67,
    }  # fmt: skip
    assert syn.cells["R@10"].mean == 42.0
    # R@1 is R@1 only (not R@10, not dress/R@10); a full name picks its one column
    assert compare_rows(reg, metrics=["R@1"]).metrics == ["R@1"]
    assert compare_rows(reg, metrics=["shirt/R@50", "mean"]).metrics == ["shirt/R@50", "mean"]


@pytest.fixture
def proj(reg, tmp_path):
    (tmp_path / "experiments.yaml").write_text("experiments: {}\n")
    return tmp_path


def test_cli_tag_group_by_and_metric(proj, reg):
    seed_run(reg, proj, "a", config(tags=["abl"]), {"R@1": 10.0, "R@10": 40.0})
    seed_run(reg, proj, "a", config(seed=2, tags=["abl"]), {"R@1": 12.0, "R@10": 41.0})
    seed_run(reg, proj, "b", config(method="dwc", tags=["abl"]), {"R@1": 30.0, "R@10": 35.0})
    seed_run(reg, proj, "fiq", fiq_config(), FIQ)
    res = invoke(proj, "compare", "--tag", "abl", "--group-by", "method", "-f", "json")
    assert res.exit_code == 0, res.output
    got = [(d["method"], d["experiment"], d["n"], d["R@1"], d["R@1 std"]) for d in json.loads(res.output)]
    assert got == [("dwc", "b", 1, 30.0, None), ("tirg", "a", 2, 11.0, round(statistics.stdev([10, 12]), 2))]
    res = invoke(proj, "compare", "--metric", "R@10", "-f", "csv")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.output)))
    metric_cols = [c for c in rows[0] if c.endswith("R@10")]
    assert metric_cols == ["R@10", "dress/R@10", "shirt/R@10", "toptee/R@10", "avg/R@10"]
    assert [(r["experiment"], r["R@10"], r["dress/R@10"], r["avg/R@10"]) for r in rows] == [
        ("a", "40.50", "", ""), ("b", "35.00", "", ""), ("fiq", "", "30.00", "35.67"),
    ]  # fmt: skip
    res = invoke(proj, "compare", "--tag", "nope")
    assert res.exit_code == 2 and "no runs with results match --tag nope" in res.output


def test_filters_globs_and_errors(reg, tmp_path):
    seed_run(reg, tmp_path, "fiq-dwc", config(dataset="fashioniq", method="dwc"), {"mean": 1.0})
    seed_run(reg, tmp_path, "synth-tirg", config(), {"mean": 2.0})
    assert [r.key for r in compare_rows(reg, names=["fiq-*"]).rows] == ["fiq-dwc"]
    assert [r.key for r in compare_rows(reg, method="tirg").rows] == ["synth-tirg"]
    assert [r.key for r in compare_rows(reg, group_by="dataset").rows] == ["fashioniq", "synthetic"]
    with pytest.raises(UsageError, match="no best-epoch results for: nope"):
        compare_rows(reg, names=["nope"])
    with pytest.raises(UsageError, match="Allowed: synthetic"):
        compare_rows(reg, dataset="imagenet")
    with pytest.raises(UsageError, match="Available"):
        compare_rows(reg, metrics=["R@7"])
    with pytest.raises(UsageError, match="config key"):
        compare_rows(reg, group_by="model.nope")


def test_last_uses_last_metrics(reg, tmp_path):
    seed_run(reg, tmp_path, "x", config(), {"R@1": 50.0}, last={"R@1": 40.0})
    assert compare_rows(reg, which="last").rows[0].cells["R@1"].mean == 40.0
    assert compare_rows(reg).rows[0].cells["R@1"].mean == 50.0


FIQ = {"dress/R@10": 30.0, "dress/R@50": 55.0, "shirt/R@10": 36.0, "shirt/R@50": 61.0,
       "toptee/R@10": 41.0, "toptee/R@50": 67.0, "avg/R@10": 35.67, "avg/R@50": 61.0, "mean": 48.33}  # fmt: skip


def fiq_config(seed: int = 1, **dataset) -> dict:
    cfg = config(dataset="fashioniq", method="dwc", seed=seed)
    cfg["dataset"].update({"category": "all", "gallery": "val_union", "mask_reference": True, "text": "dwc"})
    cfg["dataset"].update(dataset)
    return cfg


def _fiq_registry(reg, tmp_path):
    return seed_run(reg, tmp_path, "fiq-dwc", fiq_config(), FIQ)


def test_fashioniq_layout_and_reference_rows(reg, tmp_path):
    _fiq_registry(reg, tmp_path)
    t = compare_rows(reg, reference=True)
    assert t.metrics == [
        "dress/R@10", "dress/R@50", "shirt/R@10", "shirt/R@50", "toptee/R@10", "toptee/R@50",
        "avg/R@10", "avg/R@50", "mean",
    ]  # fmt: skip
    pub = {r.key: r for r in t.rows if r.kind == "published"}
    dwc = pub["DWC (AAAI'24)"]
    assert "AAAI 2024" in dwc.source
    assert dwc.cells["mean"].mean == 48.75 and dwc.cells["mean"].delta == round(48.33 - 48.75, 2)
    assert dwc.cells["dress/R@10"].delta == round(30.0 - 32.67, 2)
    assert dwc.protocol_diff == []  # same gallery, text, masking and model selection
    clip = pub["Combiner (CLIP4Cir v1) (CVPRW'22)"]
    assert "gallery: val_union vs split_all" in clip.protocol_diff
    assert "mask_reference: true vs false" in clip.protocol_diff
    assert clip.protocol_text.startswith("gallery: val_union vs split_all")
    # best marks include published rows of the same dataset: DQU-CIR has the highest numbers
    assert pub["DQU-CIR (SIGIR'24)"].cells["mean"].best
    assert not t.rows[0].cells["mean"].best
    assert any("delta = ours" in n for n in t.notes)


def test_single_category_fashioniq_lines_up_with_paper_columns(reg, tmp_path):
    cfg = fiq_config(category="dress", gallery="split_all", mask_reference=False, text="joined")
    seed_run(reg, tmp_path, "fiq-dress", cfg, {"R@10": 31.0, "R@50": 58.0, "mean": 44.5})
    t = compare_rows(reg, reference=True)
    ours = t.rows[0]
    assert set(ours.cells) == {"dress/R@10", "dress/R@50", "dress/mean"}
    dwc = next(r for r in t.rows if r.key == "DWC (AAAI'24)")
    assert dwc.cells["dress/R@10"].delta == round(31.0 - 32.67, 2)
    assert dwc.cells["mean"].delta is None  # our dress-only run has no 3-category mean
    assert "gallery: split_all vs val_union" in dwc.protocol_diff


def test_reference_without_runs_and_on_synthetic(reg, tmp_path):
    t = compare_rows(reg, reference=True, dataset="shoes")
    assert [r.kind for r in t.rows] == ["published"] * len(t.rows) and len(t.rows) >= 7
    dwc = next(r for r in t.rows if r.method == "DWC")
    assert (
        dwc.cells["R@1"].mean == 18.94 and dwc.cells["mean"].mean == 51.56 and dwc.cells["R@1"].delta is None
    )
    assert any("what to beat" in n for n in t.notes)
    seed_run(reg, tmp_path, "demo", config(), {"R@1": 1.0})
    t = compare_rows(reg, reference=True)
    assert [r.kind for r in t.rows] == ["ours"]
    assert any("synthetic: no published rows" in n for n in t.notes)
    with pytest.raises(UsageError, match="no runs with results"):
        compare_rows(reg, dataset="shoes")


def test_reference_without_runs_states_each_rows_own_protocol(reg, tmp_path):
    # nothing of ours on Shoes to compare with: each published row says its protocol, never "same"
    rows = {r.key: r for r in compare_rows(reg, reference=True, dataset="shoes").rows}
    assert all(r.protocol_text != "same" for r in rows.values())
    assert rows["DWC (AAAI'24)"].protocol_text == (
        "gallery=eval_im_names.txt, text=caption, mask_reference=true, model_selection=test, outside_eval_list=skip"
    )
    tirg = rows["TIRG (CVPR'19)"]
    assert tirg.protocol_text == "text=caption; not stated: gallery, mask_reference, model_selection"
    csv_rows = list(csv.DictReader(io.StringIO(formats.render(compare_rows(reg, reference=True, dataset="shoes"),
                                                              "csv"))))  # fmt: skip
    assert {r["protocol"] for r in csv_rows} >= {rows["DWC (AAAI'24)"].protocol_text, tirg.protocol_text}
    # with a run on Shoes the rows are compared with it again: DWC's protocol matches ours
    seed_run(reg, tmp_path, "s", config(dataset="shoes"), {"R@1": 10.0, "R@10": 40.0, "R@50": 70.0})
    rows = {r.key: r for r in compare_rows(reg, reference=True, dataset="shoes").rows}
    assert rows["DWC (AAAI'24)"].protocol_text == "same"


def shoes_config(**dataset) -> dict:
    cfg = config(dataset="shoes", method="dwc")
    cfg["dataset"].update(dataset)
    return cfg


SHOES = {"R@1": 15.0, "R@10": 50.0, "R@50": 75.0, "mean": 46.67}


def test_shoes_query_set_settings_are_part_of_the_protocol(reg, tmp_path):
    # outside_eval_list: keep scores 29 more test pairs than DWC's code can: flagged, not "same"
    seed_run(
        reg, tmp_path, "shoes-keep", shoes_config(outside_eval_list="keep", missing_images="error"), SHOES
    )
    rows = {r.key: r for r in compare_rows(reg, reference=True).rows}
    assert rows["DWC (AAAI'24)"].protocol_diff == ["outside_eval_list: keep vs skip"]
    assert rows["DWC (AAAI'24)"].protocol_text == "outside_eval_list: keep vs skip"
    assert rows["AMC (TOMM'23)"].protocol_diff == ["outside_eval_list: keep vs skip"]
    # a source that does not state its gallery does not state which pairs it scored either
    tirg = rows["TIRG (CVPR'19)"]
    assert tirg.protocol_diff == [] and tirg.not_stated == [
        "gallery", "mask_reference", "model_selection", "outside_eval_list",
    ]  # fmt: skip
    # VAL scores those pairs too (its gallery holds every test pair's images): only its gallery and selection differ
    assert rows["VAL (GloVe) (CVPR'20)"].protocol_diff == [
        "gallery: eval_im_names.txt vs test images and pairs", "model_selection: test vs fixed_step",
    ]  # fmt: skip
    # the deltas are still given (the row is flagged, not dropped): 15.00 − 18.94
    assert rows["DWC (AAAI'24)"].cells["R@1"].delta == round(15.0 - 18.94, 2)


def test_missing_images_skip_is_flagged_on_every_dataset(reg, tmp_path):
    seed_run(reg, tmp_path, "shoes-skip", shoes_config(missing_images="skip"), SHOES)
    seed_run(reg, tmp_path, "fiq-skip", fiq_config(missing_images="skip"), FIQ)
    cfg = config(dataset="fashion200k", method="dwc")
    cfg["dataset"].update({"text": "dwc", "missing_images": "skip"})
    seed_run(reg, tmp_path, "f200k", cfg, {"R@1": 30.0, "R@10": 60.0, "R@50": 75.0, "mean": 55.0})
    rows = {(r.dataset, r.key): r for r in compare_rows(reg, reference=True).rows}
    assert rows[("shoes", "DWC (AAAI'24)")].protocol_diff == ["missing_images: skip vs error"]
    assert rows[("fashioniq", "DWC (AAAI'24)")].protocol_diff == ["missing_images: skip vs error"]
    assert rows[("fashion200k", "DWC (AAAI'24)")].protocol_diff == ["missing_images: skip vs error"]
    # Fashion200k's text comes from the run's config too: TIRG's row used "replace X with Y"
    assert "text: dwc vs tirg" in rows[("fashion200k", "TIRG (CVPR'19)")].protocol_diff


def test_cli_reference_flags_a_shoes_run_that_keeps_the_outside_pairs(proj, reg):
    seed_run(reg, proj, "shoes-keep", shoes_config(outside_eval_list="keep"), SHOES)
    res = invoke(proj, "compare", "--reference")
    assert res.exit_code == 0, res.output
    dwc_row = next(line for line in res.stdout.splitlines() if line.startswith("DWC (AAAI'24)"))
    assert "differs [" in dwc_row
    assert "  DWC (AAAI'24): outside_eval_list: keep vs skip" in res.stdout
    # --only-changed through the CLI: one row, so every setting is shared; json carries them all
    shared = json.loads(invoke(proj, "compare", "--only-changed", "-f", "json").output)[0]["shared"]
    assert shared["dataset.outside_eval_list"] == "keep" and shared["trainer.epochs"] == 3


def test_run_protocol_reads_the_recorded_config():
    from dwc_core.results.reference import run_protocol

    # defaults where an older config lacks the keys: the loader's preset (FashionIQ), skip / error
    assert run_protocol({"dataset": {"name": "fashioniq", "protocol": "clip4cir"}}) == {
        "gallery": "split_all", "text": "joined", "mask_reference": False, "model_selection": "test",
        "missing_images": "error",
    }  # fmt: skip
    assert run_protocol({"dataset": {"name": "shoes"}, "trainer": {"select_on": "last"}}) == {
        "gallery": "eval_im_names.txt", "text": "caption", "mask_reference": True, "model_selection": "last",
        "outside_eval_list": "skip", "missing_images": "error",
    }  # fmt: skip
    # outside_eval_list is a Shoes option only; datasets with no published rows get model selection alone
    assert "outside_eval_list" not in run_protocol({"dataset": {"name": "fashion200k"}})
    assert run_protocol({"dataset": {"name": "synthetic", "missing_images": "skip"}}) == {
        "model_selection": "test"
    }


def test_metric_order_is_the_papers():
    names = ["mean", "avg/R@10", "toptee/R@10", "dress/R@50", "dress/R@10", "R@50", "R@5", "R@1"]
    assert sorted(names, key=metric_order) == [
        "R@1", "R@5", "R@50", "dress/R@10", "dress/R@50", "toptee/R@10", "avg/R@10", "mean",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------------- formats
NUM = r"-?\d+\.\d\d"


def _parse_plain(text: str) -> tuple[float | None, float | None, float | None]:
    """'17.50 ± 0.71 (+1.20)' → (17.5, 0.71, 1.2) from md (with ** marks) or latex ($…\\pm…$)."""
    text = text.replace("**", "").replace(r"\mathbf{", "").replace("}", "").replace("$", "")
    m = re.fullmatch(rf"\s*({NUM})?(?:\s*(?:±|\\pm)\s*({NUM}))?(?:\s*\(([+-]\d+\.\d\d)\))?\s*", text)
    assert m, text
    return tuple(float(g) if g else None for g in m.groups())


def _expected(table):
    return [
        [(r.cells[m].mean, r.cells[m].std, r.cells[m].delta) if m in r.cells else (None, None, None)
         for m in table.metrics]
        for r in table.rows
    ]  # fmt: skip


def _table(reg, tmp_path):
    _fiq_registry(reg, tmp_path)
    extra = dict(FIQ, mean=47.0)
    seed_run(reg, tmp_path, "fiq-dwc", fiq_config(seed=9), extra)
    return compare_rows(reg, reference=True)


def test_every_format_round_trips_the_same_numbers(reg, tmp_path):
    t = _table(reg, tmp_path)
    want = _expected(t)
    assert t.rows[0].cells["mean"].std == round(statistics.stdev([48.33, 47.0]), 2)

    doc = json.loads(formats.to_json(t))
    got = [[(r[m], r[f"{m} std"], r[f"{m} delta"]) for m in t.metrics] for r in doc]
    assert got == want

    rows = list(csv.DictReader(io.StringIO(formats.to_csv(t))))
    fl = lambda s: float(s) if s else None  # noqa: E731
    got = [[(fl(r[m]), fl(r[f"{m} std"]), fl(r[f"{m} delta"])) for m in t.metrics] for r in rows]
    assert got == want
    assert rows[0]["runs"] == "1 2" and rows[0]["n"] == "2"
    assert [r["best"].split() for r in rows] == [
        [m for m in t.metrics if c.cells.get(m) and c.cells[m].best] for c in t.rows
    ]  # noqa: E501

    md = formats.to_markdown(t).splitlines()
    body = [line for line in md if line.startswith("| ") and not line.startswith("| experiment")]
    ncols = len(t.info_columns())
    got = [
        [_parse_plain(c) for c in line.strip("| ").split(" | ")[ncols : ncols + len(t.metrics)]]
        for line in body
    ]
    assert got == want
    assert "**" in md[-1] or any("**" in line for line in body)

    tex = formats.to_latex(t)
    assert re.search(r" \(\$[+-]\d+\.\d\d\$\)", tex)  # deltas in math mode: a minus sign, not a hyphen
    lines = [line for line in tex.splitlines() if line.endswith(r"\\") and not line.startswith("experiment")]
    ninfo = len([c for c in t.info_columns(compact=True) if c != "n"]) + 1
    got = [[_parse_plain(c) for c in line[:-2].split(" & ")[ninfo:]] for line in lines]
    assert got == want


def test_latex_is_booktabs_and_escapes(reg, tmp_path):
    seed_run(reg, tmp_path, "my_exp 100%", config(), {"R@1": 10.0, "mean": 10.0})
    seed_run(reg, tmp_path, "my_exp 100%", config(seed=2), {"R@1": 12.0, "mean": 12.0})
    seed_run(reg, tmp_path, "b&w", config(), {"R@1": 30.0, "mean": 30.0})
    tex = formats.to_latex(compare_rows(reg))
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    assert r"my\_exp 100\%" in tex and r"b\&w" in tex
    assert r"$11.00 \pm 1.41$" in tex and r"$\mathbf{30.00}$" in tex
    assert "\\begin{tabular}" in tex and "\\end{tabular}" in tex


def test_given_runs_without_results_are_left_out_not_counted(reg, tmp_path):
    """The TUI compares the marked runs: a queued seed beside a finished one must not make n say 2 for a mean over
    one value; it is left out, and a note says so."""
    done = seed_run(reg, tmp_path, "tiny", config(seed=1), {"R@1": 25.0, "R@10": 63.0, "mean": 44.0})
    queued = reg.create_run("tiny", {**config(seed=2), "experiment": "tiny"}, tmp_path / "runs")["id"]
    t = compare_rows(reg, runs=[reg.get(done), reg.get(queued)], only_changed=True)
    (row,) = t.rows
    assert row.n == 1 and row.runs == [done] and row.cells["R@10"].mean == 63.0
    assert f"left out, no best-epoch results yet: #{queued}" in t.notes
    with pytest.raises(UsageError, match="no runs with results"):
        compare_rows(reg, runs=[reg.get(queued)])
