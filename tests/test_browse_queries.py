"""The registry query browse relies on (no raw SQL in dwc_core.results.browse): which evaluations of a run kept
per-query results, and the refusal naming them when the chosen evaluation kept none."""

from __future__ import annotations

import pytest
from test_results_registry import add_eval, config, qrow, seed_run

from dwc_core.errors import UsageError
from dwc_core.results import browse
from dwc_core.runs.registry import Registry


def test_evaluations_with_query_results_is_per_run_and_skips_evaluations_without_rows(tmp_path):
    reg = Registry(tmp_path / "runs" / "registry.db")
    a = seed_run(reg, tmp_path, "demo", config(), {"R@1": 1.0})
    b = seed_run(reg, tmp_path, "demo", config(seed=2), {"R@1": 1.0})
    kept = add_eval(reg, a, [qrow(0, "t", "g0", ["g0", "g1"]), qrow(1, "u", "g1", ["g1"])], epoch=1)
    bare = add_eval(reg, a, [], epoch=2, best=False)  # an epoch whose per-query rows were pruned
    other = add_eval(reg, b, [qrow(0, "t", "g0", ["g0"])], epoch=1)
    assert reg.evaluations_with_query_results(a) == {kept}
    assert reg.evaluations_with_query_results(b) == {other}
    assert reg.evaluations_with_query_results(999) == set()
    with pytest.raises(
        UsageError, match=rf"evaluation {bare} of run {a} kept no per-query results.*: {kept} "
    ):
        browse.pick_evaluation(reg, a, eval_id=bare)
    assert browse.pick_evaluation(reg, a)["id"] == kept
    reg.close()
