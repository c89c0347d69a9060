"""`dwc browse --images`: half-block rendering of known images (cells and colours), the images of a synthetic run
drawn beside its text, and the messages when they cannot be drawn."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from dwc_core.config.experiments import ExperimentsFile
from dwc_core.results.images import HALF_BLOCK, RunImages, half_blocks
from dwc_core.runs.registry import Registry
from dwc_tui.cli import app
from dwc_tui.cli.browse_cmd import image_tile

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# ------------------------------------------------------------------------------------------------ the renderer
def test_half_blocks_of_an_image_at_its_own_width_pairs_rows_exactly():
    img = np.array([[RED, GREEN], [BLUE, WHITE], [GREEN, GREEN], [(10, 20, 30), RED]], dtype=np.uint8)  # 4×2
    assert half_blocks(img, 2) == [
        [(RED, BLUE), (GREEN, WHITE)],  # text row 1: pixel rows 0 (upper) and 1 (lower)
        [(GREEN, (10, 20, 30)), (GREEN, RED)],
    ]


def test_half_blocks_resizes_in_proportion_and_to_an_even_row_count():
    quad = np.zeros((8, 8, 3), dtype=np.uint8)  # four 4×4 quadrants
    quad[:4, :4], quad[:4, 4:], quad[4:, :4], quad[4:, 4:] = RED, GREEN, BLUE, WHITE
    assert half_blocks(quad, 2) == [[(RED, BLUE), (GREEN, WHITE)]]  # box filter: exact quadrant colours
    wide = np.full((1, 3, 3), 7, dtype=np.uint8)  # 1 row × 3 columns → at least one full cell row
    cells = half_blocks(wide, 3)
    assert len(cells) == 1 and cells[0] == [((7, 7, 7), (7, 7, 7))] * 3
    tall = np.full((10, 4, 3), 9, dtype=np.uint8)  # 4 wide, 10 high → 2 wide, 5 rows → 6 (even): 3 text rows
    assert [len(r) for r in half_blocks(tall, 2)] == [2, 2, 2]
    grey = np.array([[0, 255], [255, 0]], dtype=np.uint8)  # H×W grey is read as RGB
    assert half_blocks(grey, 2) == [[((0, 0, 0), WHITE), (WHITE, (0, 0, 0))]]
    with pytest.raises(ValueError):
        half_blocks(grey, 0)


def _ansi(lines) -> list[str]:
    console = Console(file=io.StringIO(), color_system="truecolor", force_terminal=True, width=200)
    out = []
    for line in lines:
        with console.capture() as cap:
            console.print(line, end="")
        out.append(cap.get())
    return out


def test_tile_draws_upper_pixel_as_foreground_and_lower_as_background():
    img = np.array([[RED, RED], [BLUE, GREEN]], dtype=np.uint8)
    label, row = image_tile("ref", img, 2)
    assert label.plain == "re" and row.plain == HALF_BLOCK * 2  # every line exactly the tile's width
    label, row = _ansi(image_tile("ref", img, 2))
    assert "\x1b[38;2;255;0;0;48;2;0;0;255m" + HALF_BLOCK in row  # red over blue
    assert "\x1b[38;2;255;0;0;48;2;0;255;0m" + HALF_BLOCK in row  # red over green
    same = _ansi(image_tile("x", np.array([[RED] * 3, [BLUE] * 3], dtype=np.uint8), 3))[1]
    assert same.count("\x1b[38;2") == 1 and HALF_BLOCK * 3 in same  # equal cells share one span
    missing = image_tile("1 ✓", None, 12)
    assert [t.plain for t in missing] == ["1 ✓".ljust(12), "no image".ljust(12)]


# -------------------------------------------------------------------------------------------- through the CLI
@pytest.fixture
def synth(tmp_path):
    """A synthetic run with stored per-query results (no training: the registry is seeded by the test)."""
    (tmp_path / "experiments.yaml").write_text(
        "experiments:\n  tiny:\n"
        "    dataset: {name: synthetic, num_train: 20, num_test: 10, image_size: 16}\n"
        "    model: {name: tirg, embed_dim: 32, cnn: {arch: tiny}}\n"
        "  fiq:\n"
        f"    dataset: {{name: fashioniq, root: {tmp_path / 'nowhere'}, category: dress}}\n"
        "    model: {name: tirg, embed_dim: 32, cnn: {arch: tiny}}\n"
    )
    reg = Registry(tmp_path / "runs" / "registry.db")
    files = ExperimentsFile.load(tmp_path / "experiments.yaml")
    for name in ("tiny", "fiq"):
        (spec,) = files.resolve(name, [])
        run = reg.create_run(spec.experiment, spec.config, tmp_path / "runs", variant=spec.variant)
        eid = reg.add_evaluation(
            run["id"], epoch=1, step=1, kind="epoch", split="test", checkpoint="epoch 1", protocol={"name": name},
            metrics={"R@1": 0.0}, num_queries=1, gallery_size=3, skipped_queries=0,
        )  # fmt: skip
        reg.mark_best(run["id"], eid)
        row = {"eval_set": "test", "qidx": 0, "ref_id": "scene0", "text": "make it so", "target_ids": ["scene1"],
               "topk_ids": ["scene2", "scene1", "nope"], "topk_scores": [0.9, 0.8, 0.1], "target_rank": 2}  # fmt: skip
        reg.add_query_results(run["id"], eid, [row])
        reg.set_status(run["id"], "done")
    reg.close()
    return tmp_path


def _dwc(project, *args, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "COLORTERM")}
    full.update(COLUMNS="80", **env)
    return subprocess.run([sys.executable, "-m", "dwc_tui.cli", "--project", str(project), *args],
                          capture_output=True, text=True, env=full, timeout=120)  # fmt: skip


def test_browse_images_draws_reference_target_and_top_k(synth):
    res = _dwc(synth, "browse", "1", "--images", "--top", "3", "--image-width", "8", FORCE_COLOR="1",
               COLORTERM="truecolor")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "make it so" in res.stdout and "rank 2" in res.stdout  # the text view is still there
    pictures = RunImages(Registry(synth / "runs" / "registry.db").get(1))
    assert pictures.source == "dataset files"  # rendered on demand: no cache was built for this
    assert not list((synth / "runs" / ".cache").rglob("images_*.u8"))
    for scene in ("scene0", "scene1", "scene2"):  # reference, target, rank 1: each drawn as computed here
        for line in _ansi(image_tile("", pictures.pixels(scene), 8)[1:]):
            assert line in res.stdout, scene
    assert "no image" in res.stdout  # the unknown gallery id at rank 3
    tiles = [line for line in res.stdout.splitlines() if HALF_BLOCK in line]
    assert len(tiles) == 4  # 8 columns wide, 8 pixel rows = 4 text rows; the 5 tiles fit 80 columns: 1 line
    assert [line.count(HALF_BLOCK) for line in map(_plain, tiles)] == [8 * 4] * 4
    assert all(len(_plain(line)) <= 80 for line in res.stdout.splitlines() if HALF_BLOCK in line)


def _plain(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_browse_images_wraps_tiles_to_the_terminal_width(synth):
    res = _dwc(synth, "browse", "1", "--images", "--top", "3", "--image-width", "30", FORCE_COLOR="1")
    drawn = [_plain(line) for line in res.stdout.splitlines() if HALF_BLOCK in line]
    assert drawn and all(len(line) <= 80 for line in drawn)  # two 30-wide tiles per line, not five
    assert max(line.count(HALF_BLOCK) for line in drawn) == 60


def test_browse_images_says_why_it_cannot_draw(synth):
    plain = _dwc(synth, "browse", "1", "--images")  # piped, no FORCE_COLOR
    assert plain.returncode == 0 and HALF_BLOCK not in plain.stdout and "make it so" in plain.stdout
    assert "not a colour terminal" in plain.stderr and "FORCE_COLOR=1" in plain.stderr
    away = _dwc(synth, "browse", "2", "--images", FORCE_COLOR="1")  # FashionIQ root not on this machine
    assert away.returncode == 0 and "make it so" in away.stdout and HALF_BLOCK not in away.stdout
    assert "not available on this machine" in away.stderr and "nowhere" in away.stderr
    assert "Traceback" not in away.stderr
    for args, text in (
        (["--format", "jsonl"], "not with --format jsonl"),
        (["--against", "2"], "not with --format jsonl or --against"),
        (["--image-width", "1"], "allowed 2 to 80"),
    ):
        res = CliRunner().invoke(app, ["--project", str(synth), "browse", "1", "--images", *args])
        assert res.exit_code == 2 and text in res.output, (args, res.output)
