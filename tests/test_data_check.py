"""``check_dataset`` and the ``dwc data`` sub-app (check, synth): reports, JSON keys, exit codes, messages."""

from __future__ import annotations

import json
import subprocess
import sys

from data_fixtures import (
    config,
    write_css3d,
    write_fashion200k,
    write_fashioniq,
    write_mitstates,
    write_shoes,
)
from typer.testing import CliRunner

from dwc_core.data.check import SPLIT_KEYS, check_dataset
from dwc_tui.cli.data_cmd import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_report_per_category(tmp_path):
    root = write_fashioniq(tmp_path / "fiq")
    report = check_dataset(config("fashioniq", root, category="all"), tmp_path / "cache")
    assert list(report["splits"]) == ["dress", "shirt", "toptee"]
    for split in report["splits"].values():
        assert {k: split[k] for k in SPLIT_KEYS} == {
            "train_samples": 3, "test_queries": 3, "gallery_size": 4, "missing_images": 0, "skipped_queries": 0,
        }  # fmt: skip
    assert report["ok"] is True and report["images"] == 24 and report["dataset"] == "fashioniq"
    json.dumps(report)


def test_report_for_every_dataset(tmp_path):
    cases = {
        "shoes": (
            write_shoes,
            {},
            {"train_samples": 5, "test_queries": 4, "gallery_size": 4, "skipped_queries": 1},
        ),
        "fashion200k": (write_fashion200k, {}, {"train_samples": 6, "test_queries": 2, "gallery_size": 4}),
        "css3d": (write_css3d, {}, {"train_samples": 4, "test_queries": 2, "gallery_size": 4}),
        "mitstates": (write_mitstates, {}, {"train_samples": 6, "test_queries": 10, "gallery_size": 6}),
    }
    for name, (write, options, expected) in cases.items():
        report = check_dataset(config(name, write(tmp_path / name), **options), tmp_path / "cache")
        split = report["splits"]["test"]
        assert set(SPLIT_KEYS) <= set(split)
        assert {k: split[k] for k in expected} == expected, name
        json.dumps(report)


def test_synthetic_report(tmp_path):
    report = check_dataset(config("synthetic", None, num_train=40, num_test=12), tmp_path / "cache")
    assert {k: report["splits"]["test"][k] for k in ("train_samples", "test_queries", "missing_images")} == {
        "train_samples": 40, "test_queries": 12, "missing_images": 0,
    }  # fmt: skip


def test_missing_images_are_reported_not_raised(tmp_path):
    root = write_fashioniq(tmp_path / "fiq", categories=("dress",), skip_images=("d02", "d11"))
    report = check_dataset(config("fashioniq", root), tmp_path / "cache")
    assert report["ok"] is False and report["policy"] == "error"
    assert report["missing_images"] == 2
    assert report["splits"]["dress"]["skipped_queries"] == 2
    assert any(p.endswith("d02.png") for p in report["missing_examples"])
    assert check_dataset(config("fashioniq", root, missing_images="skip"), tmp_path / "cache")["ok"] is True


def test_verify_finds_corrupt_files(tmp_path):
    root = write_fashioniq(tmp_path / "fiq", categories=("dress",))
    (root / "all_imgs" / "d12.png").write_bytes(b"\x89PNG truncated")
    report = check_dataset(config("fashioniq", root), tmp_path / "cache", verify=True)
    assert report["corrupt_images"] == 1 and report["ok"] is False
    assert "d12.png: unreadable or corrupt image file" in report["corrupt_examples"][0]


# ------------------------------------------------------------------------------------------------------- CLI
def test_cli_check_json(tmp_path):
    root = write_fashioniq(tmp_path / "fiq")
    res = run("check", "fashioniq", "--root", root, "--set", "category=all", "--format", "json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert list(report["splits"]) == ["dress", "shirt", "toptee"]
    assert all(set(SPLIT_KEYS) <= set(s) for s in report["splits"].values())
    res = run("check", "fashioniq", "--root", root, "--set", "dataset.protocol=clip4cir", "--format", "json")
    assert json.loads(res.stdout)["splits"]["dress"]["gallery_size"] == 6


def test_cli_check_table(tmp_path):
    root = write_shoes(tmp_path / "shoes")
    res = run("check", "shoes", "--root", root)
    assert res.exit_code == 0, res.output
    for text in ("shoes", "train samples", "test", "skipped", "outside eval_im_names.txt"):
        assert text in res.stdout


def test_cli_missing_images_exit_2_with_report(tmp_path):
    root = write_fashioniq(tmp_path / "fiq", categories=("dress",), skip_images=("d02",))
    res = run("check", "fashioniq", "--root", root, "--format", "json")
    assert res.exit_code == 2
    assert json.loads(res.stdout)["missing_images"] == 1
    assert "missing_images=skip" in res.stderr and "Traceback" not in res.output
    assert run("check", "fashioniq", "--root", root, "--set", "missing_images=skip").exit_code == 0


def test_cli_bad_input(tmp_path):
    root = write_fashioniq(tmp_path / "fiq", categories=("dress",))
    cases = [
        (("check", "fashioniq", "--root", tmp_path / "absent"), "does not exist"),
        (("check", "fashioniq"), "dataset.root is not set"),
        (("check", "imagenet", "--root", root), "unknown dataset 'imagenet'"),
        (("check", "fashioniq", "--root", root, "--set", "categroy=all"), "is not an option"),
        (
            ("check", "fashioniq", "--root", root, "--set", "category=pants"),
            "Allowed: dress | shirt | toptee | all",
        ),
        (("check", "fashioniq", "--root", root, "--set", "trainer.epochs=3"), "only dataset options"),
        (("check", "fashioniq", "--root", root, "--set", "category"), "expected key=value"),
        (("check", "fashioniq", "--root", root, "--set", "name=shoes"), "the dataset is the NAME argument"),
    ]
    for args, message in cases:
        res = run(*args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.output and res.stdout == ""
    (root / "captions" / "cap.dress.train.json").write_text("[{")
    res = run("check", "fashioniq", "--root", root)
    assert res.exit_code == 2 and "cap.dress.train.json:1:3: FashionIQ: malformed JSON" in res.stderr


def test_cli_synth(tmp_path):
    cache = tmp_path / "cache"
    args = (
        "synth",
        "--set",
        "num_train=30",
        "--set",
        "num_test=10",
        "--set",
        f"cache_dir={cache}",
        "--threads",
        1,
    )
    res = run(*args, "--format", "json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["train_samples"] == 30 and out["test_queries"] == 10 and out["cache_existed"] is False
    assert (cache / out["folder"].rsplit("/", 1)[1] / "meta.json").is_file()
    assert out["image_cache"].startswith(str(cache)) and (tmp_path / out["image_cache"]).is_file()
    again = json.loads(run(*args, "--format", "json").stdout)
    assert again["cache_existed"] is True
    res = run("synth", "--set", "num_train=3")
    assert res.exit_code == 2 and "below the minimum 10" in res.stderr


def test_no_torch_import():
    code = (
        "import sys, dwc_tui.cli.data_cmd, dwc_core.data.check, dwc_core.data.fashioniq, dwc_core.data.shoes, "
        "dwc_core.data.fashion200k, dwc_core.data.css3d, dwc_core.data.mitstates; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
