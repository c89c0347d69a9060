"""Helpers that seed a registry for the results tests (compare, browse), and tests of the grouping rules."""

from __future__ import annotations

import copy

from dwc_core.results import grouping
from dwc_core.runs.registry import Registry


def config(dataset: str = "synthetic", method: str = "tirg", seed: int = 1, **sections) -> dict:
    cfg = {
        "dataset": {"name": dataset, "image_size": 64, "num_test": 100, "root": None},
        "model": {"name": method, "embed_dim": 256},
        "trainer": {"seed": seed, "epochs": 3, "lr": 0.001, "select_on": "test", "num_workers": 0},
        "eval": {"batch_size": 128, "store_topk": 50},
        "tags": [],
        "variant": {},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    return cfg


def seed_run(
    reg: Registry,
    tmp_path,
    experiment: str,
    cfg: dict,
    metrics: dict,
    status: str = "done",
    variant: dict | None = None,
    last: dict | None = None,
) -> int:
    cfg = copy.deepcopy(cfg)
    cfg["experiment"] = experiment
    row = reg.create_run(experiment, cfg, tmp_path / "runs", variant=variant or cfg.get("variant"))
    reg.set_status(
        row["id"],
        status,
        best_metrics={**metrics, "epoch": 3},
        last_metrics={**(last or metrics), "epoch": 3},
    )
    return row["id"]


def add_eval(
    reg: Registry, run_id: int, rows: list[dict], epoch: int = 3, best: bool = True, **fields
) -> int:
    """An epoch evaluation with its per-query rows: each row (qidx, text, target, topk ids, rank)."""
    protocol = fields.pop("protocol", {"name": "synthetic"})
    eid = reg.add_evaluation(
        run_id, epoch=epoch, step=epoch * 10, kind=fields.pop("kind", "epoch"), split="test",
        checkpoint=f"epoch {epoch}", protocol=protocol, metrics={"R@1": 0.0},
        num_queries=len(rows), gallery_size=fields.pop("gallery_size", 20), skipped_queries=0, **fields,
    )  # fmt: skip
    if best:
        reg.mark_best(run_id, eid)
    reg.add_query_results(run_id, eid, rows)
    return eid


def qrow(qidx: int, text: str, target: str, topk: list[str], eval_set: str = "test") -> dict:
    rank = topk.index(target) + 1 if target in topk else None
    return {
        "eval_set": eval_set, "qidx": qidx, "ref_id": f"ref{qidx}", "text": text, "target_ids": [target],
        "topk_ids": topk, "topk_scores": [1.0 - 0.01 * i for i in range(len(topk))], "target_rank": rank,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------------ tests
def test_identity_ignores_seed_metadata_and_non_result_settings():
    a = config(seed=1, trainer={"num_workers": 0}, tags=["x"], variant={"seed": 1})
    b = config(seed=2, trainer={"num_workers": 4}, tags=["y"], variant={"seed": 2})
    assert grouping.identity_key(a) == grouping.identity_key(b)
    c = config(seed=1, model={"embed_dim": 128})
    assert grouping.identity_key(a) != grouping.identity_key(c)


def test_differing_keys_puts_variant_keys_first_and_labels():
    ids = [
        grouping.identity(config(model={"embed_dim": 128}, trainer={"lr": 0.1})),
        grouping.identity(config(model={"embed_dim": 256}, trainer={"lr": 0.01})),
    ]
    keys = grouping.differing_keys(ids, first=["trainer.lr"])
    assert keys == ["trainer.lr", "model.embed_dim"]
    assert grouping.label(ids[0], keys) == "trainer.lr=0.1 model.embed_dim=128"
    assert grouping.differing_keys(ids[:1]) == []


def test_with_overrides_adds_grid_values_and_overrides_but_not_the_seed():
    cfg = {"variant": {"model.embed_dim": 128, "seed": 3}, "overrides": ["trainer.lr=0.1", "trainer.seed=4"]}
    assert grouping.with_overrides("", cfg) == "model.embed_dim=128 trainer.lr=0.1"
    # what the listing already names is not repeated
    assert grouping.with_overrides("trainer.lr=0.1", cfg) == "trainer.lr=0.1 model.embed_dim=128"
    assert grouping.with_overrides("", {"variant": {"seed": 3}}) == ""


def test_readme_lists_exactly_the_ignored_keys():
    import re

    from helpers import ROOT

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Comparing runs") :]
    start = section.index("except for the seed and these settings")
    listed = re.findall(r"`([a-z_]+\.[a-z_]+)`", section[start : section.index("A thread count", start)])
    assert sorted(listed) == sorted(grouping.NON_RESULT_KEYS)


def test_a_thread_count_does_not_split_rows_other_settings_do(tmp_path):
    from dwc_core.results.compare import compare_rows

    reg = Registry(tmp_path / "runs" / "registry.db")
    try:
        # inside NON_RESULT_KEYS: thread and worker counts, eval batching → one row over both seeds
        one = config(seed=1, trainer={"cpu_threads": 1, "precision": "fp32"})
        two = config(
            seed=2, trainer={"cpu_threads": 8, "num_workers": 4, "precision": "fp32"}, eval={"batch_size": 16}
        )
        seed_run(reg, tmp_path, "x", one, {"R@1": 10.0})
        seed_run(reg, tmp_path, "x", two, {"R@1": 20.0})
        rows = compare_rows(reg).rows
        assert [(r.n, r.label, r.cells["R@1"].mean) for r in rows] == [(2, "", 15.0)]
        # outside it: trainer.precision (and the device) change what is computed → its own row, labelled
        seed_run(reg, tmp_path, "x", config(seed=3, trainer={"precision": "bf16"}), {"R@1": 40.0})
        rows = compare_rows(reg).rows
        assert sorted((r.n, r.label, r.cells["R@1"].mean) for r in rows) == [
            (1, "trainer.precision=bf16", 40.0), (2, "trainer.precision=fp32", 15.0),
        ]  # fmt: skip
    finally:
        reg.close()
