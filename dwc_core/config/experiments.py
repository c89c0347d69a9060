"""experiments.yaml → validated, resolved, frozen run specs.

The file has two top-level keys: ``defaults`` (sections applied to every experiment) and ``experiments``
(name → experiment). An experiment holds the sections ``dataset``, ``model``, ``trainer`` and ``eval``, plus
``extends`` (another experiment to start from), ``grid`` (dotted option → list of values), ``seeds`` (list of
seeds), ``description`` and ``tags``.

Every value keeps the file and line it came from, so any error names ``file:line``, the key and what is allowed.
Resolution order: schema defaults < ``defaults`` < the ``extends`` chain < the experiment < ``--set`` overrides
< grid values. A grid × seeds experiment resolves to several :class:`RunSpec`.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dwc_core.config.schema import Opt, Section, defaults_of, flatten_section
from dwc_core.config.schema.datasets import DATASET_NAMES, dataset_section
from dwc_core.config.schema.methods import METHOD_NAMES, model_section
from dwc_core.config.schema.trainer import EVAL, REMOVED, TRAINER
from dwc_core.errors import ConfigError

SECTIONS = ("dataset", "model", "trainer", "eval")
EXPERIMENT_KEYS = (*SECTIONS, "extends", "grid", "seeds", "description", "tags")
TOP_KEYS = ("defaults", "experiments")

Path_ = tuple[str, ...]


# ----------------------------------------------------------------------------------------------- YAML with lines
class _Map(dict):
    """A mapping that remembers the line of each of its keys."""

    lines: dict[str, int]


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
    out = _Map()
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        if key in out:
            raise ConfigError(
                f"{loader.name}:{key_node.start_mark.line + 1}: duplicate key '{key}' "
                f"(first given on line {out.lines[key]}). Each key may appear once per mapping."
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml(text: str, name: str) -> Any:
    loader = _LineLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        problem = exc.problem or "malformed YAML"
        context = f" ({exc.context})" if exc.context else ""
        raise ConfigError(
            f"{where}: malformed YAML: {problem}{context}. Fix the syntax and try again."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: malformed YAML: {exc}") from None
    finally:
        loader.dispose()


# ------------------------------------------------------------------------------------------------ values + origins
@dataclass
class Tree:
    """A nested dict of values plus, for every dotted path, where it was set ("file:line" or "--set ...")."""

    data: dict = field(default_factory=dict)
    origin: dict[Path_, str] = field(default_factory=dict)

    def where(self, path: Path_, fallback: str = "") -> str:
        for n in range(len(path), 0, -1):
            if path[:n] in self.origin:
                return self.origin[path[:n]]
        return fallback


def _tree_from_yaml(value: Any, file: str, path: Path_, origin: dict[Path_, str]) -> Any:
    if isinstance(value, _Map):
        out = {}
        for key, sub in value.items():
            origin[(*path, key)] = f"{file}:{value.lines[key]}"
            out[key] = _tree_from_yaml(sub, file, (*path, key), origin)
        return out
    if isinstance(value, list):
        return [_tree_from_yaml(v, file, path, origin) for v in value]
    return value


def _merge(base: dict, over: dict, base_origin: dict, over_origin: dict, bpath: Path_, opath: Path_) -> None:
    """Deep-merge ``over`` into ``base`` in place, moving origins from over's paths to base's paths."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, base_origin, over_origin, (*bpath, key), (*opath, key))
        else:
            base[key] = copy.deepcopy(value)
            _drop_origins(base_origin, (*bpath, key))
            for p, where in over_origin.items():
                if p[: len(opath) + 1] == (*opath, key):
                    base_origin[(*bpath, *p[len(opath) :])] = where


def _drop_origins(origin: dict, prefix: Path_) -> None:
    for p in [p for p in origin if p[: len(prefix)] == prefix]:
        del origin[p]


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _dotted(path: Path_) -> str:
    return ".".join(path)


# ------------------------------------------------------------------------------------------------------ the file
@dataclass(frozen=True)
class RunSpec:
    """One fully resolved run: what is frozen into the registry and the run directory."""

    experiment: str
    config: dict
    variant: dict

    @property
    def seed(self) -> int:
        return int(self.config["trainer"]["seed"])

    def to_json(self) -> str:
        return json.dumps(self.config, sort_keys=True)


class ExperimentsFile:
    """A loaded experiments.yaml. ``resolve(name)`` gives the run specs of one experiment."""

    def __init__(self, text: str, name: str = "experiments.yaml"):
        self.name = name
        raw = _load_yaml(text, name)
        if raw is None:
            raw = _Map()
            raw.lines = {}
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{name}:1: the file must be a mapping with the keys 'defaults' and 'experiments'."
            )
        for key in raw:
            if key not in TOP_KEYS:
                line = raw.lines[key] if isinstance(raw, _Map) else 1
                raise ConfigError(
                    f"{name}:{line}: unknown top-level key '{key}'.{_suggest(key, TOP_KEYS)} "
                    f"Allowed: {', '.join(TOP_KEYS)}."
                )
        self.tree = Tree()
        self.tree.data = _tree_from_yaml(raw, name, (), self.tree.origin)
        defaults = self.tree.data.get("defaults") or {}
        experiments = self.tree.data.get("experiments") or {}
        for key, value in (("defaults", defaults), ("experiments", experiments)):
            if not isinstance(value, dict):
                raise ConfigError(f"{self.tree.where((key,), name)}: '{key}' must be a mapping.")
        for key in defaults:
            if key not in SECTIONS:
                raise ConfigError(
                    f"{self.tree.where(('defaults', key), name)}: unknown key 'defaults.{key}'."
                    f"{_suggest(key, SECTIONS)} Allowed in defaults: {', '.join(SECTIONS)}."
                )
        for exp_name, exp in experiments.items():
            if not isinstance(exp, dict):
                raise ConfigError(
                    f"{self.tree.where(('experiments', exp_name), name)}: experiment '{exp_name}' must be a mapping "
                    f"with keys such as {', '.join(EXPERIMENT_KEYS)}."
                )
            for key in exp:
                if key not in EXPERIMENT_KEYS:
                    raise ConfigError(
                        f"{self.tree.where(('experiments', exp_name, key), name)}: unknown key "
                        f"'experiments.{exp_name}.{key}'.{_suggest(key, EXPERIMENT_KEYS)} "
                        f"Allowed: {', '.join(EXPERIMENT_KEYS)}."
                    )
        self.experiments: dict[str, dict] = experiments
        self.defaults: dict = defaults

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExperimentsFile:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"{p}: no such file. Create an experiments.yaml or pass --experiments FILE."
            ) from None
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read: {exc.strerror}.") from None
        return cls(text, str(p))

    # ------------------------------------------------------------------------------------------------ names
    def names(self) -> list[str]:
        return list(self.experiments)

    def description(self, name: str) -> str:
        return str(self.experiments.get(name, {}).get("description", ""))

    def check_name(self, name: str) -> None:
        if name not in self.experiments:
            known = ", ".join(self.names()) or "(none)"
            raise ConfigError(
                f"{self.name}: no experiment named '{name}'.{_suggest(name, self.names())} Known experiments: {known}."
            )

    # ------------------------------------------------------------------------------------------------ resolve
    def _chain(self, name: str) -> list[str]:
        chain: list[str] = []
        current: str | None = name
        while current is not None:
            if current in chain:
                cycle = " → ".join([*chain, current])
                raise ConfigError(f"{self.name}: 'extends' forms a cycle: {cycle}.")
            self.check_name(current)
            chain.append(current)
            parent = self.experiments[current].get("extends")
            if parent is not None and not isinstance(parent, str):
                where = self.tree.where(("experiments", current, "extends"), self.name)
                raise ConfigError(f"{where}: 'extends' must be the name of another experiment.")
            if parent is not None and parent not in self.experiments:
                where = self.tree.where(("experiments", current, "extends"), self.name)
                raise ConfigError(
                    f"{where}: experiments.{current}.extends names '{parent}', which is not an experiment."
                    f"{_suggest(parent, self.names())}"
                )
            current = parent
        return list(reversed(chain))

    def merged(self, name: str) -> Tree:
        """The experiment's raw values after defaults and extends, before validation."""
        out = Tree()
        for section in SECTIONS:
            out.data[section] = {}
        _merge(out.data, copy.deepcopy(self.defaults), out.origin, self.tree.origin, (), ("defaults",))
        for exp_name in self._chain(name):
            exp = self.experiments[exp_name]
            epath = ("experiments", exp_name)
            for key, value in exp.items():
                if key == "extends":
                    continue
                if (
                    key in ("dataset", "model")
                    and isinstance(value, dict)
                    and isinstance(out.data.get(key), dict)
                ):
                    new_name = value.get("name")
                    if new_name is not None and new_name != out.data[key].get("name"):
                        out.data[key] = {}  # a different dataset/method: start its section afresh
                        _drop_origins(out.origin, (key,))
                if isinstance(value, dict) and key in SECTIONS:
                    if not isinstance(out.data.get(key), dict):
                        out.data[key] = {}
                    _merge(out.data[key], value, out.origin, self.tree.origin, (key,), (*epath, key))
                else:
                    out.data[key] = copy.deepcopy(value)
                    _drop_origins(out.origin, (key,))
                    for p, where in self.tree.origin.items():
                        if p[: len(epath) + 1] == (*epath, key):
                            out.origin[p[len(epath) :]] = where
        return out

    def resolve(
        self, name: str, overrides: list[str] | None = None, seeds: list[int] | None = None
    ) -> list[RunSpec]:
        """All run specs of experiment ``name`` (grid × seeds), each validated and frozen; ``seeds`` (e.g. from
        ``dwc queue --seeds``) replaces the experiment's own seeds."""
        seeds_override = seeds
        self.check_name(name)
        tree = self.merged(name)
        for item in overrides or []:
            _apply_override(tree, item)
        grid = tree.data.pop("grid", None) or {}
        seeds = tree.data.pop("seeds", None)
        description = tree.data.pop("description", "")
        tags = tree.data.pop("tags", []) or []
        if not isinstance(grid, dict):
            raise ConfigError(
                f"{tree.where(('grid',), self.name)}: 'grid' must map dotted options to lists of values."
            )
        if seeds is not None and (
            not isinstance(seeds, list)
            or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        ):
            raise ConfigError(
                f"{tree.where(('seeds',), self.name)}: 'seeds' must be a non-empty list of integers."
            )
        if seeds_override is not None:
            seeds = list(seeds_override)
        if not isinstance(tags, list) or not all(
            isinstance(t, str | int) and not isinstance(t, bool) for t in tags
        ):
            raise ConfigError(
                f"{tree.where(('tags',), self.name)}: 'tags' must be a list of strings, e.g. tags: [ablation, fiq]."
            )
        if not isinstance(description, str | None):
            raise ConfigError(f"{tree.where(('description',), self.name)}: 'description' must be a string.")
        grid_keys = list(grid)
        for key in grid_keys:
            values = grid[key]
            if not isinstance(values, list) or not values:
                raise ConfigError(
                    f"{tree.where(('grid', key), self.name)}: grid.{key} must be a non-empty list of values."
                )
        base = validate(tree, self.name)
        specs = []
        combos = list(itertools.product(*(grid[k] for k in grid_keys))) if grid_keys else [()]
        for combo in combos:
            for seed in seeds or [None]:
                variant_tree = Tree(copy.deepcopy(tree.data), dict(tree.origin))
                variant: dict[str, Any] = {}
                for key, value in zip(grid_keys, combo, strict=True):
                    path = tuple(key.split("."))
                    _set_path(
                        variant_tree, path, value, tree.where(("grid", key), self.name), must_exist=True
                    )
                    variant[key] = value
                if seed is not None:
                    variant_tree.data.setdefault("trainer", {})["seed"] = seed
                    variant_tree.origin[("trainer", "seed")] = tree.where(("seeds",), self.name)
                    variant["seed"] = seed
                config = validate(variant_tree, self.name) if (combo or seed is not None) else base
                config["experiment"] = name
                config["description"] = str(description or "")
                config["tags"] = [str(t) for t in tags]
                config["variant"] = variant
                config["overrides"] = [
                    str(o) for o in overrides or []
                ]  # `--set` as given: listings show them
                specs.append(RunSpec(name, config, variant))
        return specs


# --------------------------------------------------------------------------------------------------- overrides
def _apply_override(tree: Tree, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected key=value, e.g. --set trainer.epochs=5.")
    key, _, raw_value = item.partition("=")
    key = key.strip()
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError:
        value = raw_value
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string; on the command line it means a number
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
    path = tuple(key.split("."))
    if not key or path[0] not in SECTIONS:
        raise ConfigError(
            f"--set {item}: '{key}' is not an option. Options start with one of: {', '.join(SECTIONS)} "
            f"(e.g. trainer.epochs=5).{_suggest(path[0], SECTIONS)}"
        )
    _set_path(tree, path, value, f"--set {item}", must_exist=True)


def _set_path(tree: Tree, path: Path_, value: Any, where: str, must_exist: bool) -> None:
    section = path[0]
    if must_exist:
        if section == "dataset" and path[1:] != ("name",):
            schema = dataset_section(tree.data.get("dataset", {}).get("name", ""))
        elif section == "model" and path[1:] != ("name",):
            schema = model_section(tree.data.get("model", {}).get("name", ""))
        else:
            schema = {
                "dataset": dataset_section(""),
                "model": model_section(""),
                "trainer": TRAINER,
                "eval": EVAL,
            }[section]
        flat = flatten_section(schema)
        rel = _dotted(path[1:])
        if rel not in flat:
            raise ConfigError(
                f"{where}: '{_dotted(path)}' is not an option of this experiment.{_suggest(rel, flat)} "
                f"Options of {section}: {', '.join(sorted(flat))}."
            )
    node = tree.data
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    _drop_origins(tree.origin, path)
    tree.origin[path] = where


# -------------------------------------------------------------------------------------------------- validation
def _check_value(opt: Opt, value: Any, where: str, dotted: str) -> Any:
    def bad(what: str) -> ConfigError:
        return ConfigError(f"{where}: {dotted} = {value!r} {what}. Allowed: {opt.describe()}.")

    if value is None:
        if opt.nullable:
            return None
        raise bad("is empty")
    t = opt.type
    if t == "bool":
        if not isinstance(value, bool):
            raise bad("is not true/false")
    elif t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("is not an integer")
    elif t == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("is not a number")
        value = float(value)
    elif t in ("str", "path"):
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise bad("is not a string")
        value = str(value)
        if t == "path":
            value = os.path.expanduser(value)
    elif t.startswith("list["):
        inner = t[5:-1]
        if not isinstance(value, list):
            raise bad("is not a list")
        item_opt = Opt(inner)
        value = [_check_value(item_opt, v, where, dotted) for v in value]
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(
            f"{where}: {dotted} = {value!r} is not allowed.{_suggest(str(value), [str(c) for c in opt.choices])} "
            f"Allowed: {opt.describe()}."
        )
    if opt.min is not None and isinstance(value, int | float) and value < opt.min:
        raise bad(f"is below the minimum {opt.min}")
    if opt.max is not None and isinstance(value, int | float) and value > opt.max:
        raise bad(f"is above the maximum {opt.max}")
    return value


def _validate_section(schema: Section, values: Any, tree: Tree, path: Path_, file: str) -> dict:
    where = tree.where(path, file)
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: '{_dotted(path)}' must be a mapping of options ({', '.join(schema)}).")
    out = {}
    for key, _value in values.items():
        if (*path, key) in REMOVED:
            raise ConfigError(
                f"{tree.where((*path, key), file)}: '{_dotted((*path, key))}' {REMOVED[(*path, key)]}"
            )
        if key not in schema:
            raise ConfigError(
                f"{tree.where((*path, key), file)}: unknown key '{_dotted((*path, key))}'.{_suggest(key, schema)} "
                f"Allowed keys in {_dotted(path)}: {', '.join(schema)}."
            )
    for key, spec in schema.items():
        kpath = (*path, key)
        if isinstance(spec, Opt):
            if key in values:
                out[key] = _check_value(spec, values[key], tree.where(kpath, file), _dotted(kpath))
            else:
                out[key] = copy.deepcopy(spec.default)
        else:
            out[key] = _validate_section(spec, values.get(key), tree, kpath, file)
    return out


def validate(tree: Tree, file: str) -> dict:
    """Validate merged values against the schema; returns a plain, JSON-serialisable config with defaults."""
    data = tree.data
    dataset_name = (data.get("dataset") or {}).get("name")
    model_name = (data.get("model") or {}).get("name")
    if dataset_name is None:
        raise ConfigError(
            f"{tree.where(('dataset',), file)}: no dataset.name is set for this experiment. "
            f"Allowed: {' | '.join(DATASET_NAMES)}."
        )
    if model_name is None:
        raise ConfigError(
            f"{tree.where(('model',), file)}: no model.name is set for this experiment. "
            f"Allowed: {' | '.join(METHOD_NAMES)}."
        )
    for section, name, allowed in (
        ("dataset", dataset_name, DATASET_NAMES),
        ("model", model_name, METHOD_NAMES),
    ):
        if name not in allowed:  # an unknown name alone: its options cannot be checked against anything yet
            raise ConfigError(
                f"{tree.where((section, 'name'), file)}: {section}.name = {name!r} is not a known "
                f"{'dataset' if section == 'dataset' else 'method'}.{_suggest(str(name), allowed)} "
                f"Allowed: {' | '.join(allowed)}."
            )
    out = {
        "dataset": _validate_section(
            dataset_section(str(dataset_name)), data.get("dataset"), tree, ("dataset",), file
        ),
        "model": _validate_section(model_section(str(model_name)), data.get("model"), tree, ("model",), file),
        "trainer": _validate_section(TRAINER, data.get("trainer"), tree, ("trainer",), file),
        "eval": _validate_section(EVAL, data.get("eval"), tree, ("eval",), file),
    }
    from dwc_core.config.schema.datasets import finalize_dataset

    finalize_dataset(out["dataset"])
    json.dumps(out)  # frozen configs must be JSON-serialisable
    return out


def default_config(dataset: str = "synthetic", method: str = "tirg") -> dict:
    """A complete config of schema defaults (used by tests and benchmarks)."""
    cfg = {
        "dataset": defaults_of(dataset_section(dataset)),
        "model": defaults_of(model_section(method)),
        "trainer": defaults_of(TRAINER),
        "eval": defaults_of(EVAL),
    }
    cfg["dataset"]["name"] = dataset
    cfg["model"]["name"] = method
    from dwc_core.config.schema.datasets import finalize_dataset

    finalize_dataset(cfg["dataset"])
    return cfg


def find_project(start: str | os.PathLike | None = None) -> Path:
    """The project directory: $DWC_PROJECT, else the nearest folder upwards holding experiments.yaml, else cwd."""
    env = os.environ.get("DWC_PROJECT")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "experiments.yaml").is_file():
            return folder
    return here


def apply_overrides(config: dict, overrides: list[str], allowed_sections: tuple[str, ...] = SECTIONS) -> dict:
    """A frozen run config with ``--set key=value`` overrides applied and validated again."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key.split(".")[0] not in allowed_sections:
            raise ConfigError(
                f"--set {item}: only options of {', '.join(allowed_sections)} can be changed here."
            )
    tree = Tree({k: copy.deepcopy(config[k]) for k in SECTIONS if k in config})
    for item in overrides:
        _apply_override(tree, item)
    out = validate(tree, "the run's frozen config")
    for key in ("experiment", "description", "tags", "variant", "overrides"):
        if key in config:
            out[key] = copy.deepcopy(config[key])
    return out
