"""Animals with Attributes: ``create_dataset("awa2")`` (AwA2) and ``create_dataset("awa")`` (AwA1).

Layout (``root`` is ``Animals_with_Attributes2/`` (AwA1: ``Animals_with_Attributes/``) or its
parent)::

    classes.txt                      "     1\\tantelope"  (index, TAB, name; '+' for spaces)
    predicates.txt                   "     1\\tblack" ... "    85\\tdomestic"
    predicate-matrix-binary.txt      C rows x P ints in {0, 1}, rows in classes.txt order
    predicate-matrix-continuous.txt  C rows x P floats 0..100 (AwA1: -1 = missing)  [optional]
    trainclasses.txt, testclasses.txt  one class name per line              [for the splits]
    JPEGImages/<class>/<class>_<id>.jpg

Labels are class-level: image ``i`` of class ``c`` gets ``2 * binary[c] - 1`` (all labelled).
``schema.class_names`` are the names of classes.txt (stripped, ``+`` kept) and
``schema.class_attributes`` is the binary matrix, or with ``continuous=True`` the continuous one
as ``clip(x, 0, 100) / 100`` (``-1`` entries, AwA1's missing values, become 0 as in
Jayaraman's loader).

Groups: with 85 predicates, the 9 groups of Jayaraman, Sha & Grauman (CVPR 2014) used by the
paper (1-based): color 1-8, texture 9-14, shape 15-18, parts 19-33 + 45 + 46, activity 34-44,
behavior 47-51, nutrition 52-62, habitat 63-78, character 79-85. ``groups=PATH`` or a
``groups.yaml`` next to classes.txt overrides them (format: :mod:`apcnn.data.groups`). Another
predicate count without a groups file falls back to one group per attribute, with a warning.

Splits: ``"all"``; ``"train"`` / ``"test"`` = images of the classes in trainclasses.txt /
testclasses.txt (the standard 40/10 zero-shot protocol); a name there that is not in classes.txt
raises :class:`UnknownClassError` naming the file and line. Images are ordered by class (in
classes.txt order), then file name. A class or predicate listed twice, or a class in both
trainclasses.txt and testclasses.txt, raises :class:`DuplicateRowError`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from apcnn.data.base import AttributeDataset, read_lines, require_root
from apcnn.data.errors import (
    DuplicateRowError,
    LabelShapeError,
    LabelValueError,
    MissingFileError,
    UnknownClassError,
)
from apcnn.data.groups import load_groups_file, parse_groups, singleton_groups
from apcnn.data.images import is_image_file
from apcnn.data.registry import register_dataset
from apcnn.data.schema import AttributeSchema

#: (group, 1-based predicate indices) for the 85 AwA predicates (docs/design.md §2).
AWA_GROUPS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("color", tuple(range(1, 9))),
    ("texture", tuple(range(9, 15))),
    ("shape", tuple(range(15, 19))),
    ("parts", (*range(19, 34), 45, 46)),
    ("activity", tuple(range(34, 45))),
    ("behavior", tuple(range(47, 52))),
    ("nutrition", tuple(range(52, 63))),
    ("habitat", tuple(range(63, 79))),
    ("character", tuple(range(79, 86))),
)


def read_index_names(path: Path, what: str) -> list[str]:
    """Names of an ``"<index>\\t<name>"`` file (index 1..n in order), stripped."""
    names: list[str] = []
    line_of: dict[str, int] = {}
    for lineno, tok in read_lines(path, what):
        if len(tok) == 1:
            name = tok[0]
        elif len(tok) == 2 and tok[0].isdigit():
            if int(tok[0]) != len(names) + 1:
                raise LabelValueError(
                    f"{path}:{lineno}: index {tok[0]} out of order, expected {len(names) + 1}; "
                    "restore the file"
                )
            name = tok[1]
        else:
            raise LabelValueError(
                f"{path}:{lineno}: expected '<index> TAB <name>', got {' '.join(tok)!r}"
            )
        name = name.strip()
        if name in line_of:
            raise DuplicateRowError(
                f"{path}:{lineno}: {name!r} is already listed on line {line_of[name]}; names in "
                f"{what} must be unique"
            )
        line_of[name] = lineno
        names.append(name)
    if not names:
        raise LabelShapeError(f"{path}: {what} is empty; restore it from the dataset archive")
    return names


def read_matrix(path: Path, rows: int, cols: int, what: str) -> np.ndarray:
    """A whitespace-separated ``rows x cols`` float matrix, with the line of any bad row named."""
    lines = read_lines(path, what)
    if len(lines) != rows:
        raise LabelShapeError(
            f"{path}: {len(lines)} rows but classes.txt has {rows} classes; expected one row per "
            "class"
        )
    out = np.empty((rows, cols), dtype=np.float64)
    for r, (lineno, tok) in enumerate(lines):
        if len(tok) != cols:
            raise LabelShapeError(
                f"{path}:{lineno}: {len(tok)} values but predicates.txt has {cols} attributes"
            )
        try:
            out[r] = [float(t) for t in tok]
        except ValueError:
            raise LabelValueError(f"{path}:{lineno}: non-numeric value in {what}") from None
    return out


def read_class_list(path: Path, classes: list[str]) -> list[int]:
    """Class ids (0-based, classes.txt order) of a one-name-per-line split file."""
    lookup = {c: k for k, c in enumerate(classes)}
    ids: list[int] = []
    line_of: dict[int, int] = {}
    for lineno, tok in read_lines(path, "class split file"):
        name = " ".join(tok).strip()
        if name not in lookup:
            raise UnknownClassError(
                f"{path}:{lineno}: unknown class {name!r}; it must be one of the names in "
                "classes.txt (with '+' for spaces)"
            )
        if lookup[name] in line_of:
            raise DuplicateRowError(
                f"{path}:{lineno}: class {name!r} is already listed on line "
                f"{line_of[lookup[name]]}; list each class once"
            )
        line_of[lookup[name]] = lineno
        ids.append(lookup[name])
    return ids


class _AwABase(AttributeDataset):
    FOLDER = "Animals_with_Attributes2"
    SPLITS = ("all", "train", "test")

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        split: str = "all",
        transform=None,
        image_size: int = 224,
        continuous: bool = False,
        groups: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        check_images: bool = False,
        skip_bad_images: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._check_split(split)
        base = _find_awa_root(self.name, root, self.FOLDER)
        classes = read_index_names(base / "classes.txt", "classes.txt")
        predicates = read_index_names(base / "predicates.txt", "predicates.txt")
        c, p = len(classes), len(predicates)
        binary = read_matrix(base / "predicate-matrix-binary.txt", c, p, "binary matrix")
        if not np.all(np.isin(binary, (0, 1))):
            r, k = np.argwhere(~np.isin(binary, (0, 1)))[0]
            raise LabelValueError(
                f"{base / 'predicate-matrix-binary.txt'}: value {binary[r, k]:g} in row {r + 1}, "
                f"column {k + 1}; expected 0 or 1"
            )
        class_attr = binary
        if continuous:
            cont = read_matrix(base / "predicate-matrix-continuous.txt", c, p, "continuous matrix")
            class_attr = np.clip(cont, 0.0, 100.0) / 100.0
        schema = AttributeSchema(
            names=tuple(predicates),
            groups=tuple(_awa_groups(base, predicates, groups)),
            class_names=tuple(classes),
            class_attributes=class_attr,
        )
        split_classes: dict[str, set[int]] = {"all": set(range(c))}
        for s in ("train", "test"):
            f = base / f"{s}classes.txt"
            if f.is_file():
                split_classes[s] = set(read_class_list(f, classes))
            elif split == s:
                raise MissingFileError(
                    f"{f}: split file not found; split={s!r} needs {s}classes.txt (or use "
                    "--split all)"
                )
        both = split_classes.get("train", set()) & split_classes.get("test", set())
        if both:
            raise DuplicateRowError(
                f"{base}: class {classes[min(both)]!r} is in both trainclasses.txt and "
                f"testclasses.txt ({len(both)} class(es) in both); its images would be in train "
                "and test"
            )
        paths, cids = _list_images(base, classes)
        cids_arr = np.asarray(cids, dtype=np.int64)
        sizes = {s: int(np.isin(cids_arr, list(v)).sum()) for s, v in split_classes.items()}
        keep = np.flatnonzero(np.isin(cids_arr, list(split_classes[split])))
        targets = (2.0 * binary[cids_arr[keep]] - 1.0).astype(np.float32)
        super().__init__(
            schema=schema,
            targets=targets.reshape(len(keep), p),
            mask=np.ones((len(keep), p), dtype=bool),
            sample_ids=[paths[k].relative_to(base).as_posix() for k in keep],
            sources=[paths[k] for k in keep],
            class_ids=cids_arr[keep],
            transform=transform,
            image_size=image_size,
            root=base,
            split=split,
            options={
                "continuous": bool(continuous),
                "groups": groups if not isinstance(groups, Mapping) else dict(groups),
                "image_size": image_size,
            },
            check_images=check_images,
            skip_bad_images=skip_bad_images,
            cache_dir=cache_dir,
            split_sizes=sizes,
        )


def _find_awa_root(name: str, root: Any, folder: str) -> Path:
    base = require_root(name, root)
    for cand in (
        base,
        base / folder,
        base / "Animals_with_Attributes2",
        base / "Animals_with_Attributes",
    ):
        if (cand / "classes.txt").is_file():
            return cand
    raise MissingFileError(
        f"{name}: {str(base / 'classes.txt')!r} not found (also looked in {str(base / folder)!r}); "
        "pass root=DIR where DIR contains classes.txt and predicates.txt"
    )


def _awa_groups(
    base: Path, predicates: list[str], groups: Any
) -> list[tuple[str, tuple[int, ...]]]:
    if isinstance(groups, Mapping):
        return parse_groups(groups, predicates, source="groups option")
    if groups is not None:
        return load_groups_file(groups, predicates)
    if (base / "groups.yaml").is_file():
        return load_groups_file(base / "groups.yaml", predicates)
    if len(predicates) == 85:
        return [(g, tuple(i - 1 for i in idx)) for g, idx in AWA_GROUPS]
    warnings.warn(
        f"{base / 'predicates.txt'}: {len(predicates)} predicates, not the 85 the default AwA "
        "groups are defined for; using one group per attribute (add groups.yaml to set groups)",
        UserWarning,
        stacklevel=4,
    )
    return singleton_groups(predicates)


def _list_images(base: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    img_root = base / "JPEGImages"
    if not img_root.is_dir():
        raise MissingFileError(
            f"{img_root}: image folder not found; extract JPEGImages/ from the archive (AwA1's "
            "images were withdrawn by its authors: use AwA2)"
        )
    present = {d.name for d in img_root.iterdir() if d.is_dir()}
    unknown = sorted(present - set(classes))
    if unknown:
        warnings.warn(
            f"{img_root}: ignoring {len(unknown)} folder(s) not in classes.txt: "
            f"{', '.join(unknown[:5])}",
            UserWarning,
            stacklevel=4,
        )
    paths: list[Path] = []
    cids: list[int] = []
    for k, cls in enumerate(classes):
        d = img_root / cls
        if cls not in present:
            continue
        files = sorted(f for f in os.listdir(d) if is_image_file(f))
        paths += [d / f for f in files]
        cids += [k] * len(files)
    if not paths:
        raise MissingFileError(f"{img_root}: no images under JPEGImages/<class>/; extract them")
    return paths, cids


@register_dataset("awa2")
class AwA2(_AwABase):
    """Animals with Attributes 2 (Xian et al.); see the module docstring."""

    FOLDER = "Animals_with_Attributes2"


@register_dataset("awa")
class AwA(_AwABase):
    """Animals with Attributes 1 (Lampert et al.); same layout as AwA2, see the module docstring."""

    FOLDER = "Animals_with_Attributes"


__all__ = ["AWA_GROUPS", "AwA", "AwA2", "read_class_list", "read_index_names", "read_matrix"]
