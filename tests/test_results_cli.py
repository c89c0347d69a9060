"""`dwc compare` and `dwc browse` through the CLI: formats, messages, exit codes, import hygiene; and the demo run
end to end (slow)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys

import pytest
from helpers import HEAVY, dwc, heavy_modules_after, invoke, shipped_project
from test_results_registry import add_eval, config, qrow, seed_run

from dwc_core.runs.registry import Registry


@pytest.fixture
def proj(tmp_path):
    (tmp_path / "experiments.yaml").write_text("experiments: {}\n")
    reg = Registry(tmp_path / "runs" / "registry.db")
    for seed, (r1, r10) in {1: (10.0, 40.0), 2: (14.0, 42.0)}.items():
        seed_run(reg, tmp_path, "my_exp", config(seed=seed), {"R@1": r1, "R@10": r10, "mean": (r1 + r10) / 2})
    other = seed_run(reg, tmp_path, "other", config(method="dwc"), {"R@1": 30.0, "R@10": 35.0, "mean": 32.5})
    gallery = [f"g{i}" for i in range(12)]
    rows = [qrow(i, f"make it {c}", f"g{i}", gallery) for i, c in enumerate(["red", "blue", "green"])]
    add_eval(reg, 1, rows)
    add_eval(reg, other, rows[:2], gallery_size=99)
    reg.close()
    return tmp_path


def test_compare_table_md_csv_latex(proj):
    res = invoke(proj, "compare")
    assert res.exit_code == 0, res.output
    assert "12.00 ± 2.83" in res.output and "my_exp" in res.output and "other" in res.output
    md = invoke(proj, "compare", "-f", "md").output
    assert "| my_exp |" in md and "**30.00**" in md and "12.00 ± 2.83" in md
    rows = list(csv.DictReader(io.StringIO(invoke(proj, "compare", "-f", "csv").output)))
    assert rows[0]["R@1"] == "12.00" and rows[0]["R@1 std"] == "2.83" and rows[1]["R@1 std"] == ""
    tex = invoke(proj, "compare", "-f", "latex").output
    assert r"my\_exp" in tex and r"\toprule" in tex and r"$12.00 \pm 2.83$" in tex
    data = json.loads(invoke(proj, "compare", "-f", "json", "--metric", "R@1").output)
    assert [(d["experiment"], d["R@1"], d["R@1 std"], d["n"]) for d in data] == [
        ("my_exp", 12.0, 2.83, 2), ("other", 30.0, None, 1),
    ]  # fmt: skip
    assert "R@10" not in data[0]


def test_compare_errors_are_one_clean_paragraph(proj, tmp_path):
    for args, text in [
        (["compare", "--dataset", "imagenet"], "Allowed: synthetic"),
        (["compare", "nope*"], "no best-epoch results for: nope*"),
        (["compare", "--format", "xml"], "Allowed: table | json | csv | md | latex"),
        (["compare", "--group-by", "model.nope"], "no compared run has this config key"),
    ]:
        res = invoke(proj, *args)
        assert res.exit_code == 2 and text in res.output and "Traceback" not in res.output, (args, res.output)


def test_compare_reference_in_a_fresh_project(tmp_path):
    (tmp_path / "experiments.yaml").write_text("experiments: {}\n")
    res = invoke(tmp_path, "compare", "--reference", "--dataset", "shoes", "-f", "csv")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    dwc = next(r for r in rows if r["method"] == "DWC")
    assert (dwc["R@1"], dwc["R@10"], dwc["R@50"], dwc["kind"]) == ("18.94", "55.55", "80.19", "published")
    assert "AAAI 2024" in dwc["source"]


def test_browse_text_jsonl_and_against_refusal(proj):
    res = invoke(proj, "browse", "1", "--limit", "2", "--top", "3")
    assert res.exit_code == 0, res.output
    assert (
        "#0 [test]  rank 1" in res.output
        and "make it blue" in res.output
        and "make it green" not in res.output
    )
    assert "✓" in res.output and "3 queries" in res.output
    lines = invoke(proj, "browse", "1", "--misses", "--k", "1", "-f", "jsonl").output.splitlines()
    assert [json.loads(x)["qidx"] for x in lines] == [1, 2]
    res = invoke(proj, "browse", "1", "--against", "3")
    assert res.exit_code == 2 and "not evaluated on the same evaluation set" in res.output
    res = invoke(proj, "browse", "2")
    assert res.exit_code == 2 and "no best-epoch evaluation with per-query results" in res.output


def test_compare_and_browse_stay_torch_free(proj):
    assert heavy_modules_after(["compare", "--reference"], proj) == []
    assert heavy_modules_after(["browse", "1", "--limit", "1"], proj) == []
    code = "import sys, dwc_core.results.compare, dwc_core.results.browse, dwc_core.results.formats; " + (
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "[]"


# -------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_browse_misses_on_the_demo_run(tmp_path):
    """The shipped demo, shrunk (~20 s on 2 cores): `dwc browse --misses --limit 5` prints five missed queries
    with their text, target description and top-K with scores, as plain text."""
    shipped_project(tmp_path)
    shrink = ["--set", "dataset.num_train=320", "--set", "dataset.num_test=60", "--set", "trainer.epochs=1",
              "--set", "dataset.image_size=32"]  # fmt: skip
    res = dwc(tmp_path, "run", "demo", *shrink, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    res = dwc(tmp_path, "browse", "1", "--misses", "--limit", "5")
    assert res.returncode == 0, res.stderr
    reg = Registry(tmp_path / "runs" / "registry.db")
    best = next(e for e in reg.evaluations(1) if e["is_best"])
    missed = [q for q in reg.query_results(best["id"]) if q["target_rank"] is None or q["target_rank"] > 10]
    assert len(missed) >= 5  # a one-epoch tiny model misses some
    blocks = res.stdout.split("\n\n")[1:]
    assert len(blocks) == 5
    for block, q in zip(blocks, missed[:5], strict=True):
        lines = block.splitlines()
        assert lines[0].startswith(f"#{q['qidx']} [test]")
        assert f"  text    {q['text']}" in lines
        target = next(x for x in lines if x.startswith("  target  "))
        assert (
            target.startswith(f"  target  {q['target_ids'][0]}: ") and " at " in target
        )  # scene description
        ranked = [x for x in lines if x[:6].strip().isdigit()]
        assert len(ranked) == 5 and all(x.split()[0] == str(i + 1) for i, x in enumerate(ranked))
        assert ranked[0].split()[1] == f"{q['topk_scores'][0]:.4f}" and q["topk_ids"][0] in ranked[0]
    assert "\x1b[" not in res.stdout  # plain text when piped


# ------------------------------------------------------------------------------------------------ dwc runs / show
def test_runs_listing_machine_formats_variants_and_filters(proj):
    reg = Registry(proj / "runs" / "registry.db")
    lr = seed_run(reg, proj, "my_exp", config(seed=1, trainer={"lr": 0.5}, tags=["grid"]), {"R@1": 1.0})
    reg.close()
    rows = list(csv.DictReader(io.StringIO(invoke(proj, "runs", "-f", "csv").stdout)))
    assert [r["id"] for r in rows] == ["1", "2", "3", str(lr)]
    assert [r["variant"] for r in rows] == ["trainer.lr=0.001", "trainer.lr=0.001", "", "trainer.lr=0.5"]
    first = rows[0]
    # metrics at compare's precision: the same text as `dwc compare -f csv` writes
    assert (
        first["R@1"] == "10.00" and first["mean"] == "25.00" and first["error"] == "" and first["tags"] == ""
    )
    assert "recall" not in first and "{" not in ",".join(first.values())
    data = json.loads(invoke(proj, "runs", "-f", "json").stdout)
    assert data[0]["started"] is None and data[0]["duration_s"] is None  # never started: nulls, not "–"
    sorted_ = json.loads(invoke(proj, "runs", "-f", "json", "--sort", "mean", "--limit", "2").stdout)
    assert [r["id"] for r in sorted_] == [3, 2]  # mean 32.5, then 28.0
    tagged = json.loads(invoke(proj, "runs", "-f", "json", "--tag", "grid").stdout)
    assert [r["id"] for r in tagged] == [lr]
    disk = json.loads(invoke(proj, "runs", "-f", "json", "--disk").stdout)
    assert all(isinstance(r["disk_bytes"], int) and r["disk_bytes"] > 0 for r in disk)  # config.json at least
    table = invoke(proj, "runs", "--disk")
    assert table.exit_code == 0 and "trainer.lr=0.5" in table.output and "disk" in table.output


def test_runs_messages_for_no_match_bad_status_and_no_project(proj, tmp_path_factory):
    res = invoke(proj, "runs", "nope")
    assert res.exit_code == 0 and "no runs match" in res.output
    res = invoke(proj, "runs", "--status", "finished")
    assert res.exit_code == 2 and "Allowed: queued | starting | running | done" in res.output
    res = invoke(proj, "runs", "--sort", "colour")
    assert res.exit_code == 2 and "Allowed: id | experiment" in res.output
    elsewhere = tmp_path_factory.mktemp("not_a_project")
    res = invoke(elsewhere, "runs")
    assert res.exit_code == 2 and "not a dwc project" in res.output and "experiments.yaml" in res.output
    fresh = tmp_path_factory.mktemp("fresh")
    (fresh / "experiments.yaml").write_text("experiments: {}\n")
    res = invoke(fresh, "runs")
    assert res.exit_code == 0 and "no runs yet" in res.output


def test_show_lists_reevaluations_with_their_protocol_and_the_variant(proj):
    reg = Registry(proj / "runs" / "registry.db")
    seed_run(reg, proj, "my_exp", config(seed=3, trainer={"lr": 0.5}), {"R@1": 1.0})
    reg.add_evaluation(
        1, epoch=3, step=30, kind="reeval", split="test", checkpoint="/x/best.pt",
        protocol={"name": "fashioniq", "gallery": "split_all", "overrides": ["dataset.gallery=split_all"]},
        metrics={"R@10": 12.5, "mean": 20.0}, num_queries=3, gallery_size=12, skipped_queries=0,
    )  # fmt: skip
    reg.close()
    res = invoke(proj, "show", "1")
    assert res.exit_code == 0, res.output
    assert "re-evaluations" in res.output and "gallery=split_all" in res.output
    assert "dataset.gallery=split_all" in res.output and "12.50" in res.output
    assert "differs from the other my_exp runs in: trainer.lr=0.001" in res.output


def test_compare_reference_table_flags_protocol_differences(tmp_path):
    from test_compare import FIQ, fiq_config

    (tmp_path / "experiments.yaml").write_text("experiments: {}\n")
    reg = Registry(tmp_path / "runs" / "registry.db")
    seed_run(
        reg, tmp_path, "fiq-clip4cir-protocol", fiq_config(gallery="split_all", mask_reference=False), FIQ
    )
    reg.close()
    res = invoke(tmp_path, "compare", "--reference")
    assert res.exit_code == 0, res.output
    assert "DWC (AAAI'24)" in res.output and "Avg R@10" in res.output and "differs" in res.output
    assert "DWC (AAAI'24): gallery: split_all vs val_union; mask_reference: false vs true" in res.output
    assert "DWC (Huang et al., AAAI 2024)" in res.output  # the source


def test_compare_reference_table_gives_every_published_rows_source(tmp_path):
    # a run on DWC's own protocol: DWC's row is "same", and its source is still printed (a numbered footnote)
    from test_compare import FIQ, fiq_config

    (tmp_path / "experiments.yaml").write_text("experiments: {}\n")
    reg = Registry(tmp_path / "runs" / "registry.db")
    seed_run(reg, tmp_path, "fiq-dwc", fiq_config(), FIQ)
    reg.close()
    res = invoke(tmp_path, "compare", "--reference")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    dwc_row = next(line for line in lines if line.startswith("DWC (AAAI'24)"))
    number = dwc_row.rsplit("[", 1)[1].rstrip(" ]")
    assert "same [" in dwc_row and number.isdigit()
    assert f"  [{number}] DWC (Huang et al., AAAI 2024), FashionIQ comparison table" in res.stdout
    # every published row points at a listed source
    from dwc_core.results.reference import rows_for

    published = [
        line for line in lines if line.split(" │")[0].strip() in {p.label for p in rows_for("fashioniq")}
    ]
    assert len(published) == len(rows_for("fashioniq"))
    for line in published:
        n = line.rsplit("[", 1)[1].rstrip(" ]")
        assert any(x.startswith(f"  [{n}] ") for x in lines), line


def test_compare_reference_without_runs_lists_each_rows_protocol(tmp_path):
    (tmp_path / "experiments.yaml").write_text("experiments: {}\n")
    res = invoke(tmp_path, "compare", "--reference", "--dataset", "shoes")
    assert res.exit_code == 0, res.output
    assert "same" not in res.stdout
    assert "DWC (AAAI'24): gallery=eval_im_names.txt, text=caption, mask_reference=true" in res.stdout


def test_browse_k_beyond_the_stored_lists_exits_2(proj):
    # the fixture stores 12 items per query of a 20-image gallery
    res = invoke(proj, "browse", "1", "--misses", "--k", "13")
    assert res.exit_code == 2, res.output
    assert "stored each query's top 12 only" in res.output and "Traceback" not in res.output
    assert invoke(proj, "browse", "1", "--misses", "--k", "12").exit_code == 0


def test_compare_table_marks_the_best_in_text_when_piped(proj):
    # no terminal, so no bold/colour: the best value per column carries a "*", explained under the table
    res = invoke(proj, "compare")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    other = next(line for line in lines if line.startswith("other"))
    mine = next(line for line in lines if line.startswith("my_exp"))
    # R@1 and mean: other (30.00, 32.50); R@10: my_exp (41.00 ± 1.41 beats 35.00); nothing else marked
    assert re.findall(r"[0-9.]+(?: ± [0-9.]+)?\*", other) == ["30.00*", "32.50*"]
    assert re.findall(r"[0-9.]+(?: ± [0-9.]+)?\*", mine) == ["41.00 ± 1.41*"]
    assert "* best in its column" in res.stdout
    for fmt in ("csv", "md", "latex"):
        assert "*" not in invoke(proj, "compare", "-f", fmt).stdout.replace("**", "")


def test_runs_metrics_have_compares_precision_in_every_machine_format(proj):
    reg = Registry(proj / "runs" / "registry.db")
    seed_run(
        reg, proj, "prec", config(seed=9, trainer={"lr": 0.2}), {"R@1": 75.4, "R@10": 80.0, "mean": 77.7}
    )
    reg.close()
    run = next(
        r
        for r in csv.DictReader(io.StringIO(invoke(proj, "runs", "-f", "csv").stdout))
        if r["experiment"] == "prec"
    )
    cmp = next(r for r in csv.DictReader(io.StringIO(invoke(proj, "compare", "prec", "-f", "csv").stdout)))
    assert (
        (run["R@1"], run["R@10"], run["mean"])
        == (cmp["R@1"], cmp["R@10"], cmp["mean"])
        == ("75.40", "80.00", "77.70")
    )
    md = invoke(proj, "runs", "prec", "-f", "md").stdout
    assert "| 75.40 |" in md
    data = json.loads(invoke(proj, "runs", "prec", "-f", "json").stdout)
    assert (
        data[0]["R@1"] == 75.4 == json.loads(invoke(proj, "compare", "prec", "-f", "json").stdout)[0]["R@1"]
    )


def test_held_and_deleted_runs_are_marked(proj):
    from dwc_core.runs.control import remove, set_hold

    reg = Registry(proj / "runs" / "registry.db")
    held = reg.create_run("waits", config(), proj / "runs")["id"]
    queued = reg.create_run("waits", config(seed=2), proj / "runs")["id"]
    set_hold(reg, [held], True)
    remove(reg, [3])  # "other", done
    reg.close()
    data = {r["id"]: r for r in json.loads(invoke(proj, "runs", "--all", "-f", "json").stdout)}
    assert (data[held]["status"], data[held]["held"], data[held]["deleted"]) == ("queued", True, False)
    assert (data[queued]["held"], data[3]["deleted"], data[3]["held"]) == (False, True, False)
    rows = {
        r["id"]: r for r in csv.DictReader(io.StringIO(invoke(proj, "runs", "--all", "-f", "csv").stdout))
    }
    assert (rows[str(held)]["held"], rows["3"]["deleted"], rows["1"]["deleted"]) == ("true", "true", "false")
    table = invoke(proj, "runs", "--all").stdout
    line = {int(x.split()[0]): x for x in table.splitlines() if x.split() and x.split()[0].isdigit()}
    assert "queued (held)" in line[held] and "(held)" not in line[queued] and "queued" in line[queued]
    assert "done (deleted)" in line[3] and "deleted" not in line[1]
    assert 3 not in {r["id"] for r in json.loads(invoke(proj, "runs", "-f", "json").stdout)}
    assert "status queued (held)" in invoke(proj, "show", str(held)).stdout
    assert "status done (deleted)" in invoke(proj, "show", "3").stdout
    assert "status queued  seed" in invoke(proj, "show", str(queued)).stdout


# ----------------------------------------------------------------------- machine formats: times and durations
def _started_and_ended(proj) -> tuple[int, dict]:
    """A run that started, heartbeat and ended at known times (sub-second parts included), done."""
    import time

    reg = Registry(proj / "runs" / "registry.db")
    rid = seed_run(reg, proj, "timed", config(seed=5, trainer={"lr": 0.3}), {"R@1": 50.0, "R@10": 60.0})
    t0 = time.time() - 3600.25
    reg.update(rid, claimed=t0 - 2.5, started=t0, heartbeat=t0 + 120.0, ended=t0 + 125.37)
    reg.update(rid, versions={"dwc": "9.8.7", "python": "3.11.2", "torch": "2.4.0", "platform": "Linux-x"})
    reg.event(rid, "note", "a recorded event")
    row = reg.get(rid)
    reg.close()
    return rid, row


def _parsed(text: str):
    from datetime import datetime

    value = datetime.fromisoformat(text)
    assert value.tzinfo is not None, text  # an aware time: its zone is part of it
    return value


def test_show_json_gives_iso_times_with_zone_and_the_duration_in_seconds(proj):
    rid, row = _started_and_ended(proj)
    res = invoke(proj, "show", str(rid), "-f", "json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    run = data["run"]
    for key in ("created", "claimed", "started", "heartbeat", "ended"):
        assert isinstance(run[key], str), (key, run[key])
        assert abs(_parsed(run[key]).timestamp() - row[key]) < 1, key  # the same instant, to the second
    assert run["deleted_at"] is None
    assert run["duration_s"] == pytest.approx(row["ended"] - row["started"], abs=0.05)
    assert run["duration_s"] == pytest.approx(125.4)
    assert (_parsed(run["ended"]) - _parsed(run["started"])).total_seconds() == pytest.approx(125, abs=1)
    # every column of the registry row is still there, the others as they are
    assert set(row) <= set(run)
    for key in ("config", "variant", "versions", "best_metrics", "status", "run_dir", "seed", "error"):
        assert run[key] == row[key], key
    # the `dwc runs -f json` record's fields too, with the same values
    listed = next(r for r in json.loads(invoke(proj, "runs", "-f", "json").stdout) if r["id"] == rid)
    for key in ("started", "ended", "duration_s", "held", "R@1", "R@10"):
        assert run[key] == listed[key], key
    assert data["events"] and all(_parsed(e["time"]) for e in data["events"])
    assert "a recorded event" in [e["message"] for e in data["events"]]


def test_show_json_of_a_queued_run_has_null_times(proj):
    reg = Registry(proj / "runs" / "registry.db")
    rid = reg.create_run("waits", config(seed=4), proj / "runs")["id"]
    reg.close()
    run = json.loads(invoke(proj, "show", str(rid), "-f", "json").stdout)["run"]
    assert run["started"] is None and run["ended"] is None and run["duration_s"] is None
    assert _parsed(run["created"])


def test_runs_json_and_csv_give_iso_times_with_zone_and_duration_s(proj):
    rid, row = _started_and_ended(proj)
    (rec,) = [r for r in json.loads(invoke(proj, "runs", "-f", "json").stdout) if r["id"] == rid]
    assert abs(_parsed(rec["started"]).timestamp() - row["started"]) < 1
    assert abs(_parsed(rec["ended"]).timestamp() - row["ended"]) < 1
    assert rec["duration_s"] == pytest.approx(row["ended"] - row["started"], abs=0.05)
    (line,) = [
        r
        for r in csv.DictReader(io.StringIO(invoke(proj, "runs", "-f", "csv").stdout))
        if r["id"] == str(rid)
    ]
    assert line["started"] == rec["started"] and line["ended"] == rec["ended"]
    assert float(line["duration_s"]) == pytest.approx(row["ended"] - row["started"], abs=0.05)


def test_show_names_the_dwc_version_on_the_versions_line(proj):
    rid, _ = _started_and_ended(proj)
    res = invoke(proj, "show", str(rid))
    assert res.exit_code == 0, res.output
    (line,) = [x for x in res.stdout.splitlines() if "versions " in x]
    assert "versions dwc 9.8.7, python 3.11.2, torch 2.4.0" in line
    assert "platform" not in line  # the long ones stay in `dwc show -f json`


# -------------------------------------------------------------------------------------------- dwc runs --watch
def test_runs_watch_is_for_the_table_only(proj):
    for fmt in ("json", "csv"):
        res = invoke(proj, "runs", "--watch", "-f", fmt)
        assert res.exit_code == 2 and "--watch redraws a table" in res.output, res.output


def test_runs_watch_redraws_until_ctrl_c(proj):
    """On a terminal, `dwc runs --watch` draws the table again every 2 s (a run's new status shows up) and leaves
    quietly, exit 0, on SIGINT."""
    import os
    import pty
    import select
    import signal
    import time

    from helpers import dwc_argv

    reg = Registry(proj / "runs" / "registry.db")
    watched = reg.create_run("watched", config(seed=8), proj / "runs")["id"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: `dwc runs --watch` on a terminal
        os.environ["COLUMNS"] = "120"
        try:
            os.execv(sys.executable, dwc_argv(proj, "runs", "--watch"))
        finally:
            os._exit(127)
    out, status = b"", None

    def text() -> str:
        return out.decode(errors="replace")

    def read_until(pred, seconds: float) -> bool:
        nonlocal out
        deadline = time.time() + seconds
        while time.time() < deadline and not pred(text()):
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    out += os.read(fd, 65536)
                except OSError:  # the terminal closed: the command ended
                    break
        return pred(text())

    try:
        assert read_until(lambda t: "watched" in t and "queued" in t, 60), text()
        drawn = text().count("dwc runs ·")
        assert "failed" not in text()
        reg.set_status(watched, "failed", "boom")
        assert read_until(lambda t: "failed" in t, 15), text()  # drawn again, from the registry
        assert text().count("dwc runs ·") > drawn
        os.kill(pid, signal.SIGINT)
        read_until(lambda t: False, 3)  # what it writes as it leaves
        deadline = time.time() + 15
        while status is None and time.time() < deadline:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = code
            else:
                time.sleep(0.1)
        assert status is not None, "dwc runs --watch did not exit on SIGINT"
    finally:
        reg.close()
        if status is None:  # not reaped yet: the pid is still its own
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert "Traceback" not in text() and "KeyboardInterrupt" not in text()
