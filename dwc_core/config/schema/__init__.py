"""Declarative option schemas for experiments.yaml (torch-free).

A *section* is a dict mapping option names to :class:`Opt` (a leaf) or to another section (a nested mapping).
Sections that depend on a chosen name (the dataset's or the method's) are assembled by
:func:`dataset_section` and :func:`model_section`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Section = dict[str, Any]  # str -> Opt | Section

TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "path": "a path",
    "list[int]": "a list of integers",
    "list[float]": "a list of numbers",
    "list[str]": "a list of strings",
}


@dataclass(frozen=True)
class Opt:
    """One leaf option: its type, default, allowed values and a help line."""

    type: str
    default: Any = None
    choices: tuple | None = None
    help: str = ""
    nullable: bool = False
    min: float | None = None
    max: float | None = None

    def describe(self) -> str:
        if self.choices:
            allowed = " | ".join(str(c) for c in self.choices)
        else:
            allowed = TYPE_NAMES.get(self.type, self.type)
        if self.nullable:
            allowed += " (or null)"
        if self.min is not None or self.max is not None:
            lo = "" if self.min is None else f"≥ {self.min}"
            hi = "" if self.max is None else f"≤ {self.max}"
            allowed += f" ({', '.join(x for x in (lo, hi) if x)})"
        return allowed


def defaults_of(section: Section) -> dict:
    """The default values of a section, recursively (a nested section becomes a dict)."""
    out: dict = {}
    for key, spec in section.items():
        out[key] = spec.default if isinstance(spec, Opt) else defaults_of(spec)
    return out


def flatten_section(section: Section, prefix: str = "") -> dict[str, Opt]:
    out: dict[str, Opt] = {}
    for key, spec in section.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(spec, Opt):
            out[path] = spec
        else:
            out.update(flatten_section(spec, path))
    return out
