"""dwc_core.results.compare: grouping, mean ± std and n by hand, best marks, published rows, every format."""

from __future__ import annotations

import csv
import io
import json
import re
import statistics

import pytest
from test_results_registry import config, seed_run

from dwc_core.errors import UsageError
from dwc_core.results import formats
from dwc_core.results.compare import compare_rows, metric_order
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
    assert "model.embed_dim" in t.info_columns() and "other settings shared" in t.title
    # every file format prints the config values as they are (lr 0.001 was "0.00" in csv/md/latex)
    rows = list(csv.DictReader(io.StringIO(formats.to_csv(t))))
    assert [r["trainer.lr"] for r in rows] == ["0.001", "0.5"]
    assert "| 0.001 |" in formats.to_markdown(t).replace("  ", " ")
    assert "0.001" in formats.to_latex(t)


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
        "gallery=eval_im_names.txt, text=caption, mask_reference=true, model_selection=test"
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
