"""``dwc data``: validate a dataset folder without training, and build the synthetic benchmark explicitly.

Torch-free. Data goes to stdout (table or JSON), messages to stderr; a problem the user can fix exits with 2 and
one clear paragraph, never a traceback.
"""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from dwc_core.errors import DwcError, UsageError

app = typer.Typer(
    help="Check dataset folders in their official layout; generate the synthetic benchmark.",
    no_args_is_help=True,
)

OTHER_SECTIONS = ("model", "trainer", "eval")
SPLIT_COLUMNS = ("train_samples", "test_queries", "gallery_size", "missing_images", "skipped_queries")


class Format(str, Enum):
    table = "table"
    json = "json"


def dataset_config(name: str, root: str | None, overrides: list[str]) -> dict:
    """The validated ``dataset:`` section: schema defaults of ``name`` + ``root`` + ``--set`` overrides."""
    from dwc_core.config.experiments import Tree, _apply_override, default_config, validate
    from dwc_core.config.schema.datasets import DATASET_NAMES

    if name not in DATASET_NAMES:
        raise UsageError(f"unknown dataset '{name}'. Allowed: {' | '.join(DATASET_NAMES)}.")
    if name == "synthetic" and root is not None:
        raise UsageError(
            f"--root {root}: the synthetic set has no folder to check; it is generated (under runs/.cache/). "
            "Leave out --root, or name a real dataset (fashioniq | shoes | fashion200k | css3d | mitstates)."
        )
    defaults = default_config(dataset=name)
    tree = Tree()
    tree.data = {"dataset": {"name": name}, "model": {"name": defaults["model"]["name"]}}
    if root is not None:
        tree.data["dataset"]["root"] = str(root)
        tree.origin[("dataset", "root")] = "--root"
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key.split(".")[0] in OTHER_SECTIONS:
            raise UsageError(f"--set {item}: only dataset options can be set here (e.g. --set category=all).")
        if key.removeprefix("dataset.") == "name":
            raise UsageError(f"--set {item}: the dataset is the NAME argument, not an option.")
        _apply_override(tree, item if key.startswith("dataset.") else f"dataset.{item}")
    return validate(tree, "command line")["dataset"]


def cache_root(cfg: dict) -> Path:
    from dwc_core.config.experiments import find_project

    return Path(cfg["cache_dir"]) if cfg.get("cache_dir") else find_project() / "runs" / ".cache"


def _fail(exc: DwcError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(exc.exit_code)


def _print_report(report: dict) -> None:
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"{report['dataset']}  root: {report['root'] or '-'}  images: {report['images']}", markup=False)
    table = Table("split")
    for header in ("train samples", "queries", "gallery", "missing images", "skipped queries"):
        table.add_column(header, justify="right")
    for name, s in report["splits"].items():
        table.add_row(name, *(str(s[k]) for k in SPLIT_COLUMNS))
    out.print(table, soft_wrap=False)
    for name, s in report["splits"].items():
        if s.get("notes"):
            out.print(f"{name}: {s['notes']}", markup=False)
    if report["missing_examples"]:
        out.print("missing, e.g.: " + ", ".join(report["missing_examples"]), markup=False)
    for msg in report.get("corrupt_examples", []):
        out.print(f"corrupt: {msg}", markup=False)


@app.command()
def check(
    name: str = typer.Argument(
        ..., help="dataset: fashioniq | shoes | fashion200k | css3d | mitstates | synthetic"
    ),
    root: Path = typer.Option(None, "--root", help="dataset folder in its official layout"),
    sets: list[str] = typer.Option(
        [], "--set", help="dataset option, key=value (e.g. category=all); repeatable"
    ),
    fmt: Format = typer.Option(Format.table, "--format", help="table or json"),
    verify: bool = typer.Option(
        False, "--verify-images", help="also decode every image once to find corrupt files"
    ),
) -> None:
    """Validate a dataset folder without training: per split, training samples, test queries, gallery size,
    missing images and skipped queries. Exits 2 when a run with these options would stop (e.g. missing images
    with missing_images: error)."""
    from dwc_core.data.check import check_dataset

    try:
        cfg = dataset_config(name, str(root) if root is not None else None, sets)
        report = check_dataset(cfg, cache_root(cfg), verify=verify)
    except DwcError as exc:
        raise _fail(exc) from None
    if fmt == Format.json:
        typer.echo(json.dumps(report, indent=2, sort_keys=False))
    else:
        _print_report(report)
    if not report["ok"]:
        problems = []
        if report["missing_images"] and report["policy"] == "error":
            problems.append(
                f"{report['missing_images']} images are missing; with dataset.missing_images: error a run stops. "
                "Download them, or pass --set missing_images=skip to drop the affected queries and triplets"
            )
        if report.get("corrupt_images"):
            problems.append(f"{report['corrupt_images']} image files cannot be decoded; replace them")
        typer.echo("error: " + "; ".join(problems) + ".", err=True)
        raise typer.Exit(2)


@app.command()
def synth(
    sets: list[str] = typer.Option([], "--set", help="synthetic option, key=value (e.g. num_train=40000)"),
    threads: int = typer.Option(0, "--threads", help="decoding threads (0 = automatic)", min=0),
    fmt: Format = typer.Option(Format.table, "--format", help="table or json"),
) -> None:
    """Generate the synthetic benchmark (scenes, queries and the rendered image cache) and print where it is."""
    from dwc_core.data import load_dataset
    from dwc_core.data.loading import ImageCache

    try:
        cfg = dataset_config("synthetic", None, sets)
        root = cache_root(cfg)
        t0 = time.perf_counter()
        ds = load_dataset(cfg, root)
        t_meta = time.perf_counter() - t0
        cache = ImageCache(ds, int(cfg["image_size"]), root)
        cached = cache.is_built()
        t1 = time.perf_counter()
        cache.ensure(threads=threads)
        t_cache = time.perf_counter() - t1
    except DwcError as exc:
        raise _fail(exc) from None
    result = {
        "folder": str(cache.folder),
        "metadata": str(cache.folder / "meta.json"),
        "image_cache": str(cache.path),
        "images": len(ds.images),
        "train_samples": len(ds.train),
        "test_queries": sum(len(e.queries) for e in ds.eval_sets.values()),
        "gallery_size": sum(len(e.gallery) for e in ds.eval_sets.values()),
        "image_size": int(cfg["image_size"]),
        "metadata_seconds": round(t_meta, 3),
        "cache_seconds": round(t_cache, 3),
        "cache_existed": cached,
    }
    if fmt == Format.json:
        typer.echo(json.dumps(result, indent=2))
        return
    out = Console(highlight=False)
    for key, value in result.items():
        out.print(f"{key.replace('_', ' ')}: {value}", markup=False)
