"""The results views through the `dwc` command, on registries the tests seed: `dwc browse A --against B` (counts
first, the two "only" groups with both rankings side by side, in text and jsonl; refused for another dataset or
split), and the key column of `dwc runs` / `dwc compare` kept whole on a narrow terminal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import dwc
from test_browse import _ranking
from test_results_registry import add_eval, config, qrow, seed_run

from dwc_core.runs.registry import Registry

# first-hit ranks per query (None: not in the stored top 60); within K = 10, A alone gets 1, 2 and 5, B alone 3, 4
RANKS_A = [1, 5, 10, 11, None, 3, 50, None]
RANKS_B = [2, 11, None, 4, 9, 30, None, None]
K = 10


def _project(tmp_path: Path) -> Path:
    (tmp_path / "experiments.yaml").write_text("experiments: {}\n")
    return tmp_path


def _rows(ranks: list[int | None]) -> list[dict]:
    return [qrow(i, f"make object {i} red", f"g{i}", _ranking(f"g{i}", r)) for i, r in enumerate(ranks)]


def _seed_pair(project: Path) -> tuple[int, int]:
    reg = Registry(project / "runs" / "registry.db")
    try:
        a = seed_run(reg, project, "demo", config(), {"R@1": 1.0})
        add_eval(reg, a, _rows(RANKS_A))
        b = seed_run(reg, project, "rival", config(seed=2), {"R@1": 1.0})
        add_eval(reg, b, _rows(RANKS_B))
    finally:
        reg.close()
    return a, b


def _within(rank: int | None) -> bool:
    return rank is not None and rank <= K


def _expected() -> tuple[list[int], list[int], dict[str, int]]:
    pairs = list(zip(RANKS_A, RANKS_B, strict=True))
    a_only = [i for i, (x, y) in enumerate(pairs) if _within(x) and not _within(y)]
    b_only = [i for i, (x, y) in enumerate(pairs) if _within(y) and not _within(x)]
    both = sum(_within(x) and _within(y) for x, y in pairs)
    counts = {"both": both, "a_only": len(a_only), "b_only": len(b_only)}
    counts["neither"] = len(pairs) - both - len(a_only) - len(b_only)
    return a_only, b_only, counts


def _rank_words(rank: int | None) -> str:
    return f"rank {rank}" if rank is not None else "not in the stored top-K"


# ------------------------------------------------------------------------------------------- browse --against
def test_against_text_counts_first_then_each_only_group_with_both_rankings_side_by_side(tmp_path):
    project = _project(tmp_path)
    a, b = _seed_pair(project)
    a_only, b_only, counts = _expected()
    assert a_only == [1, 2, 5] and b_only == [3, 4]  # the data says what the test means
    res = dwc(project, "browse", str(a), "--against", str(b))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr == ""
    lines = res.stdout.splitlines()
    assert lines[0] == (
        f"run {a} demo (A) vs run {b} rival (B), within top-{K}: both {counts['both']} · only A "
        f"{counts['a_only']} · only B {counts['b_only']} · neither {counts['neither']}"
    )
    sections = [i for i, line in enumerate(lines) if re.match(r"[AB] gets within top-", line)]
    assert [lines[i] for i in sections] == [
        f"A gets within top-{K}, B misses: {len(a_only)}",
        f"B gets within top-{K}, A misses: {len(b_only)}",
    ]
    heads = [(i, line) for i, line in enumerate(lines) if line.startswith("#")]
    in_a = [int(line[1:].split()[0]) for i, line in heads if sections[0] < i < sections[1]]
    in_b = [int(line[1:].split()[0]) for i, line in heads if i > sections[1]]
    assert in_a == a_only and in_b == b_only
    for i, line in heads:
        q = int(line[1:].split()[0])
        assert line == f"#{q} [test]  A {_rank_words(RANKS_A[q])} · B {_rank_words(RANKS_B[q])}"
        assert lines[i + 1 : i + 4] == [
            f"  ref     ref{q}",
            f"  text    make object {q} red",
            f"  target  g{q}",
        ]
        assert lines[i + 4].split() == ["A", "B"]
        # five rows (--top 5): A's ranking on the left of "│", B's on the right, each hit marked on its side
        rows = lines[i + 5 : i + 10]
        assert all(row.count("│") == 1 for row in rows), rows
        for side, ranks, col in (("A", RANKS_A, 0), ("B", RANKS_B, 1)):
            cells = [row.split("│")[col].split() for row in rows]
            want = _ranking(f"g{q}", ranks[q])[:5]
            assert [c[-1] for c in cells] == want, (side, q, cells)
            assert [c[0] for c in cells] == ["1", "2", "3", "4", "5"]
            marked = [n + 1 for n, c in enumerate(cells) if "✓" in c]
            assert marked == ([ranks[q]] if ranks[q] is not None and ranks[q] <= 5 else []), (side, q)
        assert lines[i + 10 : i + 11] in ([], [""])  # nothing else belongs to the query
    # the reverse pairing swaps the groups
    rev = dwc(project, "browse", str(b), "--against", str(a)).stdout.splitlines()
    assert rev[0].startswith(f"run {b} rival (A) vs run {a} demo (B)")
    assert f"only A {counts['b_only']} · only B {counts['a_only']}" in rev[0]


def test_against_limit_shows_the_first_of_each_group_and_says_how_many_there_are(tmp_path):
    project = _project(tmp_path)
    a, b = _seed_pair(project)
    res = dwc(project, "browse", str(a), "--against", str(b), "--limit", "1", "--top", "2")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert f"A gets within top-{K}, B misses: 3 (showing 1)" in lines
    assert f"B gets within top-{K}, A misses: 2 (showing 1)" in lines
    assert [line.split()[0] for line in lines if line.startswith("#")] == ["#1", "#3"]
    first = lines.index("#1 [test]  A rank 5 · B rank 11")
    assert [row.split("│")[0].split()[0] for row in lines[first + 5 : first + 7]] == ["1", "2"]
    assert lines[first + 7] == ""  # --top 2: two ranked rows


def test_against_jsonl_one_object_per_paired_query_with_both_rankings(tmp_path):
    project = _project(tmp_path)
    a, b = _seed_pair(project)
    a_only, b_only, _ = _expected()
    res = dwc(project, "browse", str(a), "--against", str(b), "--format", "jsonl")
    assert res.returncode == 0, res.stderr
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(d["side"], d["a"]["qidx"]) for d in docs] == [("a_only", q) for q in a_only] + [
        ("b_only", q) for q in b_only
    ]
    for d in docs:
        q = d["a"]["qidx"]
        assert d["k"] == K and d["b"]["qidx"] == q
        assert d["a"]["text"] == d["b"]["text"] == f"make object {q} red"
        assert (d["a"]["target_rank"], d["b"]["target_rank"]) == (RANKS_A[q], RANKS_B[q])
        assert [t["id"] for t in d["a"]["topk"]] == _ranking(f"g{q}", RANKS_A[q])  # the whole stored top-K
        assert [t["id"] for t in d["b"]["topk"]] == _ranking(f"g{q}", RANKS_B[q])
        assert [t["rank"] for t in d["a"]["topk"] if t["hit"]] == ([RANKS_A[q]] if RANKS_A[q] else [])
    # --k 3: only A's ranks 1 and 3 count (query 0 is "both" no more: B ranks it 2), B has none of its own
    res = dwc(project, "browse", str(a), "--against", str(b), "--format", "jsonl", "--k", "3")
    assert [(d["side"], d["a"]["qidx"]) for d in map(json.loads, res.stdout.splitlines())] == [("a_only", 5)]


@pytest.mark.parametrize("what", ["dataset", "split"])
def test_against_refuses_another_dataset_or_split(tmp_path, what):
    """Exit 2, one clear line naming the difference, nothing listed, no traceback."""
    project = _project(tmp_path)
    a, _ = _seed_pair(project)
    reg = Registry(project / "runs" / "registry.db")
    try:
        if what == "dataset":
            other = seed_run(reg, project, "shoes", config(dataset="shoes"), {"R@1": 1.0})
            add_eval(reg, other, _rows(RANKS_B), protocol={"name": "shoes"})
            difference = "dataset: shoes vs synthetic"
        else:  # training and `dwc eval` keep per-query results of the test split: a val one is chosen by --eval
            other = seed_run(reg, project, "valsplit", config(seed=3), {"R@1": 1.0})
            eid = reg.add_evaluation(
                other, epoch=3, step=30, kind="epoch", split="val", checkpoint="epoch 3",
                protocol={"name": "synthetic"}, metrics={"R@1": 0.0}, num_queries=len(RANKS_B), gallery_size=20,
                skipped_queries=0,
            )  # fmt: skip
            reg.add_query_results(other, eid, [{**r, "eval_set": "val"} for r in _rows(RANKS_B)])
            difference = "split: val vs test"
    finally:
        reg.close()
    # A is the run that differs (its evaluation picked by --eval for the split), B the demo run's best test one
    pick = ["--eval", "3"] if what == "split" else []
    for fmt in ("text", "jsonl"):
        res = dwc(project, "browse", str(other), *pick, "--against", str(a), "--format", fmt)
        assert res.returncode == 2, res.stdout + res.stderr
        assert res.stdout == ""
        assert "Traceback" not in res.stderr
        assert res.stderr.startswith(
            f"error: runs {other} (evaluation 3) and {a} (evaluation 1) were not evaluated on the same evaluation set"
        ), res.stderr
        assert f"cannot be paired: {difference}." in " ".join(res.stderr.split()), res.stderr
    if (
        what == "split"
    ):  # without --eval: no test evaluation to browse, and the one there is named with its split
        res = dwc(project, "browse", str(other), "--against", str(a))
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert "has no best-epoch evaluation" in res.stderr
        assert "Evaluations with per-query results: 3 (epoch 3, val split)." in " ".join(res.stderr.split())


# ------------------------------------------------------------------------------------- key column at 60 columns
LONG = "fashioniq_dwc_ablation_without_the_editable_module_and_long_name"  # 64 characters: wider than the terminal


def _seed_long_names(project: Path) -> None:
    reg = Registry(project / "runs" / "registry.db")
    try:
        for name, dim in ((LONG, 256), (LONG + "_b", 512), ("short", 256)):
            for seed in (1, 2):
                metrics = {"R@1": 10.0 + seed, "R@5": 20.0, "R@10": 30.0 + seed, "R@50": 60.0, "mean": 30.0}
                seed_run(reg, project, name, config(seed=seed, model={"embed_dim": dim}), metrics)
    finally:
        reg.close()


def _rows_naming(output: str, name: str) -> list[str]:
    return [line for line in output.splitlines() if re.search(rf"(^|\s){re.escape(name)}(\s|$)", line)]


@pytest.mark.parametrize("command", [["runs"], ["compare"], ["compare", "--runs"]])
def test_key_column_is_never_cut_at_60_columns(tmp_path, command):
    """COLUMNS=60, output piped (plain): every experiment name is printed whole on its row, however long, and
    the rows keep their other columns (the line grows past 60 rather than cutting or wrapping the name)."""
    project = _project(tmp_path)
    _seed_long_names(project)
    res = dwc(project, *command, env={"COLUMNS": "60"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "…" not in res.stdout, res.stdout
    rows_per_name = 1 if command == ["compare"] else 2  # compare groups the two seeds; the others list runs
    for name in (LONG, LONG + "_b", "short"):
        rows = _rows_naming(res.stdout, name)
        assert len(rows) == rows_per_name, (name, res.stdout)
        for row in rows:
            cells = [c.strip() for c in re.split(r"[│┃]", row)]
            assert name in cells, (name, row)  # a cell of its own, whole
            assert len(cells) >= 4, row  # the other columns are on the same line
    header = [c.strip() for c in next(line for line in res.stdout.splitlines() if "┃" in line).split("┃")]
    assert "experiment" in header and "R@10" in header, header


def _on_terminal(project: Path, args: list[str], columns: int) -> str:
    """What `dwc ARGS` prints on a pseudo-terminal of ``columns`` × 24 (colours stripped)."""
    import fcntl
    import os
    import pty
    import struct
    import sys
    import termios
    import time

    from helpers import dwc_argv, read_to_end

    pid, fd = pty.fork()
    if pid == 0:  # the child: set the terminal's size, then run dwc on it
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        os.execve(sys.executable, dwc_argv(project, *args), env)
    out = read_to_end(fd, time.time() + 60)
    os.waitpid(pid, 0)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace")).replace("\r", "")


DESCRIBED = """\
experiments:
  an-experiment-with-a-long-name:
    description: a description long enough that a table of every column at its natural width is far wider than
      an 80-column terminal, so its words must wrap inside their cell
    tags: [synthetic, methods]
    dataset: {name: synthetic}
    model: {name: tirg}
"""


def test_a_table_that_can_fit_the_terminal_wraps_its_free_text_there_and_stays_whole_when_piped(tmp_path):
    (tmp_path / "experiments.yaml").write_text(DESCRIBED)
    shown = _on_terminal(tmp_path, ["experiments"], 80)
    lines = [line for line in shown.splitlines() if line.strip()]
    assert lines and all(len(line) <= 80 for line in lines), shown  # nothing for the terminal to wrap
    assert "an-experiment-with-a-long-name" in shown  # the key column whole
    words = " ".join(" ".join(line.split("│")[1].split()) for line in lines if "│" in line)
    assert "must wrap inside their cell" in words  # the description whole, wrapped inside its column
    piped = dwc(tmp_path, "experiments", env={"COLUMNS": "80"})
    rows = [line for line in piped.stdout.splitlines() if "an-experiment" in line]
    assert len(rows) == 1 and "must wrap inside their cell" in rows[0] and len(rows[0]) > 80  # natural width
