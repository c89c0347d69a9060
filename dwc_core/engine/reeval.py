"""Re-evaluating a finished run (``dwc eval``): a checkpoint under the run's protocol or another one, recorded as
a separate evaluation of that run (kind ``reeval``) with its own per-query rankings."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

from dwc_core.config.checks import check_eval_sizes
from dwc_core.config.experiments import apply_overrides
from dwc_core.data import load_dataset
from dwc_core.data.loading import ImageCache
from dwc_core.engine import checkpoint, runtime
from dwc_core.engine.evaluate import evaluate, query_rows
from dwc_core.errors import RegistryError, UsageError
from dwc_core.models import BuildContext, build_method
from dwc_core.runs.registry import Registry


@contextlib.contextmanager
def library_warnings_to(log_path: Path):
    """Route library log records and Python warnings (open_clip's "No pretrained weights loaded", ...) to the run's
    train.log instead of the terminal, each once."""
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    seen: set[tuple[str, str]] = set()

    def once(record: logging.LogRecord) -> bool:
        key = (record.name, record.getMessage())
        if key in seen:
            return False
        seen.add(key)
        return True

    handler.addFilter(once)
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [handler]
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("once")
            yield
    finally:
        logging.captureWarnings(False)
        root.handlers = saved
        handler.close()


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    path = run_dir / f"{which}.pt" if which in ("best", "last") else Path(which).expanduser()
    if not path.is_file():
        raise UsageError(
            f"no checkpoint at {path} (allowed: best | last | a path to a .pt file of this run's method)."
        )
    return path


def reevaluate(
    registry_path: Path, run_id: int, which: str = "best", overrides: list[str] | None = None
) -> dict:
    registry = Registry(registry_path)
    row = registry.get(run_id)
    if registry.readonly:  # say so before minutes of evaluation, not after
        raise RegistryError(
            f"{registry.path} is read-only: dwc eval records its evaluation there. Re-evaluate where the project is "
            "writable."
        )
    config = apply_overrides(row["config"], list(overrides or []), allowed_sections=("dataset", "eval"))
    path = resolve_checkpoint(Path(row["run_dir"]), which)
    device = runtime.pick_device(config["trainer"]["device"])
    precision = runtime.effective_precision(config["trainer"]["precision"], device)
    autocast = runtime.autocast_factory(precision, device)
    project = Path(registry_path).resolve().parent.parent
    cache_dir = config["dataset"].get("cache_dir") or str(project / "runs" / ".cache")
    original = load_dataset(
        row["config"]["dataset"], cache_dir
    )  # the vocabulary is built from training texts
    ds = (
        load_dataset(config["dataset"], cache_dir)
        if config["dataset"] != row["config"]["dataset"]
        else original
    )
    check_eval_sizes(
        config, ds.eval_sets
    )  # an R@K with K ≥ the gallery is 100 for any model: refused, as in training
    cache = ImageCache(ds, int(config["dataset"]["image_size"]), cache_dir)
    cache.ensure()
    seed = int(config["trainer"]["seed"])
    ctx = BuildContext(
        train_texts=[t.text for t in original.train_triplets(0, seed)],
        num_labels=original.num_labels,
        image_size=int(config["dataset"]["image_size"]),
        device=device,
        precision=precision,
    )
    # seeded as the training process was at build time: frozen modules without pretrained weights (random CLIP
    # in tests and the demo) are not in checkpoints and must come out identical
    runtime.seed_everything(seed)
    with library_warnings_to(Path(row["run_dir"]) / "train.log"):
        method = build_method(config["model"], ctx).to(device)
    mine = which in ("best", "last")  # an explicit PATH may come from another run on purpose
    try:
        state = checkpoint.load(
            path, map_location=device, run_uid=row.get("uid") if mine else None,
            cfg_hash=checkpoint.config_hash(row["config"]) if mine else None,
        )  # fmt: skip
    except checkpoint.CheckpointError as exc:
        others = [n for n in ("best", "last") if n != which and (Path(row["run_dir"]) / f"{n}.pt").is_file()]
        way = f"another checkpoint of this run (--checkpoint {others[0]}) or" if others else ""
        raise checkpoint.CheckpointError(
            f"{exc.message} Evaluate {way} a .pt file by path.".replace("  ", " ")
        ) from None
    method.load_checkpoint_state(state["model"])
    result = evaluate(method, ds, cache, device, config["eval"], autocast)
    protocol = {
        k: config["dataset"].get(k) for k in ("name", "gallery", "mask_reference", "text", "category")
    }
    protocol["overrides"] = list(overrides or [])
    foreign = state.get("run_uid") and state["run_uid"] != row.get("uid")
    # another run's weights: allowed on purpose (an explicit PATH), never silently — the evaluation says whose
    if foreign:
        protocol["checkpoint_run_uid"] = state["run_uid"]
    eval_id = registry.add_evaluation(
        run_id, epoch=int(state.get("epoch", -1)), step=int(state.get("step", -1)), kind="reeval", split="test",
        checkpoint=str(path), protocol=protocol, metrics=result.metrics, num_queries=result.num_queries,
        gallery_size=result.gallery_size, skipped_queries=result.skipped_queries,
    )  # fmt: skip
    rows = []
    for name, sres in result.sets.items():
        rows += query_rows(ds, ds.eval_sets[name], sres, int(config["eval"]["store_topk"]))
    registry.add_query_results(run_id, eval_id, rows)
    registry.event(
        run_id,
        "reeval",
        f"evaluation {eval_id} of {path.name} with {protocol['overrides'] or 'the run protocol'}"
        + (f"; the checkpoint belongs to another run (uid {state['run_uid']}, this run's is {row.get('uid')})"
           if foreign else ""),
    )  # fmt: skip
    return registry.evaluations(run_id, kind="reeval")[-1]
