"""Attribute groups from a ``groups.yaml`` file (or a mapping): ``{group: [attribute, ...]}``.

File format (YAML mapping, order kept)::

    color: [black, white, blue]       # attribute names ...
    texture: [9, 10, 11, 12, 13, 14]  # ... or 1-based indices (as in AwA's predicates.txt)

Every listed attribute must exist and belong to one group only; attributes listed nowhere get a
singleton group each (after the listed groups) and a warning naming them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from apcnn.data.errors import LabelValueError, MissingFileError


def load_groups_file(path: str | Path, names: Sequence[str]) -> list[tuple[str, tuple[int, ...]]]:
    """Read ``path`` (YAML mapping group -> attributes) into ``(group, indices)`` pairs."""
    import yaml

    from apcnn.data.base import read_text

    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"{p}: groups file not found; pass an existing groups.yaml")
    try:
        spec = yaml.safe_load(read_text(p, "groups file"))
    except yaml.YAMLError as e:
        raise LabelValueError(f"{p}: not valid YAML ({e}); fix the file") from None
    return parse_groups(spec, names, source=str(p))


def parse_groups(
    spec: Any, names: Sequence[str], source: str = "groups"
) -> list[tuple[str, tuple[int, ...]]]:
    """Validate a mapping ``group -> [name or 1-based index]`` against ``names``."""
    if not isinstance(spec, Mapping) or not spec:
        raise LabelValueError(
            f"{source}: expected a non-empty mapping 'group: [attribute, ...]', got "
            f"{type(spec).__name__}"
        )
    lookup = {n: i for i, n in enumerate(names)}
    owner: dict[int, str] = {}
    out: list[tuple[str, tuple[int, ...]]] = []
    for g, members in spec.items():
        if isinstance(members, (str, int)):
            members = [members]
        if not isinstance(members, Sequence) or not members:
            raise LabelValueError(f"{source}: group {g!r} must list at least one attribute")
        idx = []
        for a in members:
            if isinstance(a, bool):
                raise LabelValueError(f"{source}: group {g!r}: {a!r} is not an attribute")
            if isinstance(a, int):
                if not 1 <= a <= len(names):
                    raise LabelValueError(
                        f"{source}: group {g!r}: index {a} outside 1..{len(names)} (indices are "
                        "1-based)"
                    )
                i = a - 1
            elif str(a) in lookup:
                i = lookup[str(a)]
            else:
                raise LabelValueError(
                    f"{source}: group {g!r}: unknown attribute {a!r}; valid attributes: "
                    f"{', '.join(names)}"
                )
            if i in owner:
                raise LabelValueError(
                    f"{source}: attribute {names[i]!r} is in groups {owner[i]!r} and {g!r}; "
                    "groups must be disjoint"
                )
            owner[i] = str(g)
            idx.append(i)
        out.append((str(g), tuple(idx)))
    rest = [i for i in range(len(names)) if i not in owner]
    if rest:
        warnings.warn(
            f"{source}: {len(rest)} attribute(s) in no group get a group of their own: "
            f"{', '.join(names[i] for i in rest)}",
            UserWarning,
            stacklevel=3,
        )
        used = {g for g, _ in out}
        out += [(_fresh(names[i], used), (i,)) for i in rest]
    return out


def _fresh(name: str, used: set[str]) -> str:
    cand, k = str(name), 2
    while cand in used:
        cand, k = f"{name}_{k}", k + 1
    used.add(cand)
    return cand


def singleton_groups(names: Sequence[str]) -> list[tuple[str, tuple[int, ...]]]:
    """One group per attribute, named after it."""
    return [(str(n), (i,)) for i, n in enumerate(names)]


__all__ = ["load_groups_file", "parse_groups", "singleton_groups"]
