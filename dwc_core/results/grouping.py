"""Which runs may be averaged together, and how to label the ones that may not.

Two runs are *replicates* when their resolved configs are identical except for the seed and the settings in
:data:`NON_RESULT_KEYS`, which do not change what is measured: thread and worker counts, evaluation batching,
logging cadence, what is stored, paths to the same data. Replicates form one row (mean ± std over seeds); every
other difference makes its own row, labelled by the keys that differ.

Thread counts (``trainer.cpu_threads``) can change floating-point rounding and so the last digits of a result, like
another CPU or torch build does; that is noise of the kind the seeds' std already shows, not a different
experiment, so they are ignored too. (The count a run actually used is mostly not in its config anyway: with
``cpu_threads: null`` the worker divides its cores among its slots.) The README's "Comparing runs" section lists
these keys; a test keeps the two lists equal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

METADATA_KEYS = ("experiment", "description", "tags", "variant", "overrides")
NON_RESULT_KEYS = frozenset(
    {
        "trainer.seed",
        "trainer.num_workers",
        "trainer.cpu_threads",
        "trainer.log_every",
        "trainer.heartbeat_s",
        "eval.batch_size",
        "eval.chunk_size",
        "eval.store_topk",
        "eval.query_results",
        "dataset.root",
        "dataset.cache_dir",
    }
)


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """``{"model": {"cnn": {"arch": "x"}}}`` → ``{"model.cnn.arch": "x"}`` (lists stay values)."""
    out: dict[str, object] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def identity(config: dict) -> dict[str, object]:
    """The flattened settings that decide a run's results (no seed, no metadata, no non-result settings)."""
    flat = flatten({k: v for k, v in config.items() if k not in METADATA_KEYS})
    return {k: v for k, v in flat.items() if k not in NON_RESULT_KEYS}


def identity_key(config: dict) -> str:
    return json.dumps(identity(config), sort_keys=True, default=str)


def differing_keys(identities: Iterable[dict[str, object]], first: Iterable[str] = ()) -> list[str]:
    """Keys whose value is not the same in every identity (a key missing from one counts as different).
    Keys in ``first`` (a grid's variant keys) come first, the rest in sorted order."""
    idents = list(identities)
    if len(idents) < 2:
        return []
    keys = set().union(*idents)
    missing = object()
    diff = {k for k in keys if len({json.dumps(i.get(k, missing), default=str) for i in idents}) > 1}
    head = [k for k in first if k in diff]
    return head + sorted(diff - set(head))


def fmt_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def label(ident: dict[str, object], keys: list[str]) -> str:
    """``model.embed_dim=128 trainer.lr=0.001`` for the given keys."""
    return " ".join(f"{k}={fmt_value(ident.get(k))}" for k in keys)


def with_overrides(text: str, config: dict) -> str:
    """``text`` (what sets a run apart from the runs listed with it), then the run's grid variant values and its
    recorded ``--set`` overrides that it does not already name, all as ``key=value`` (the seed has its own
    column): a lone ``--set trainer.lr=0.1`` run, or a lone grid variant, still shows what it is."""
    parts = text.split()
    shown = {part.partition("=")[0] for part in parts}
    grid = [f"{k}={fmt_value(v)}" for k, v in (config.get("variant") or {}).items() if k != "seed"]
    for item in [*grid, *(str(o) for o in config.get("overrides") or [])]:
        key = item.partition("=")[0].strip()
        if key not in shown and key not in ("seed", "trainer.seed"):
            parts.append(item.strip())
            shown.add(key)
    return " ".join(parts)


def variant_labels(rows: list[dict]) -> dict[int, str]:
    """Run id → what sets the run apart from the other listed runs of its experiment: the config keys whose
    values differ among them (grid keys first; ``--set`` overrides show up the same way), seed excluded."""
    by_exp: dict[str, list[dict]] = {}
    for r in rows:
        by_exp.setdefault(r["experiment"], []).append(r)
    out: dict[int, str] = {}
    for group in by_exp.values():
        idents = {r["id"]: identity(r.get("config") or {}) for r in group}
        first = [k for r in group for k in (r.get("variant") or {}) if k != "seed"]
        keys = differing_keys(idents.values(), list(dict.fromkeys(first)))
        for r in group:
            out[r["id"]] = label(idents[r["id"]], keys)
    return out
