"""Your own images: ``create_dataset("folder", root=DIR)``.

Layout::

    DIR/labels.csv      header + one row per image (comma separated; quoting as in csv module)
    DIR/<images>        paths in labels.csv are relative to DIR (or to DIR/images/)
    DIR/groups.yaml     optional: {group: [attribute, ...]} (format: apcnn.data.groups)

``labels.csv`` columns: the file-name column (named ``file``, ``filename``, ``image``, ``path``
or ``image_path``; otherwise the first column), then one column per attribute. Two optional
reserved columns: ``class`` (a class name per image; ids in sorted name order, empty = no class)
and ``split`` (e.g. ``train`` / ``val`` / ``test``; then ``split=NAME`` selects those rows).

Label coding: ``1`` positive; ``0`` and ``-1`` negative (both common conventions); an empty
cell, ``nan``, ``na``, ``?`` or ``-`` missing. Anything else raises :class:`LabelValueError`
naming the line and column. ``+1``, ``1.0``, ``true``/``yes`` and ``false``/``no`` are accepted
too. Without groups.yaml each attribute is its own group. Each image may have one row only: a
second row for the same file (``a.jpg`` and ``./a.jpg`` are the same) raises
:class:`DuplicateRowError` with both line numbers. The file must be UTF-8.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import warnings
from pathlib import Path

import numpy as np

from apcnn.data.base import AttributeDataset, first_duplicate, read_text, require_root
from apcnn.data.errors import (
    DatasetOptionError,
    DuplicateRowError,
    LabelShapeError,
    LabelValueError,
    MissingFileError,
)
from apcnn.data.groups import load_groups_file, singleton_groups
from apcnn.data.registry import register_dataset
from apcnn.data.schema import AttributeSchema

FILE_COLUMNS = ("file", "filename", "file_name", "image", "image_name", "path", "image_path")
RESERVED = ("class", "split")
_POS = {"1", "+1", "1.0", "+1.0", "true", "yes", "y"}
_NEG = {"0", "-1", "0.0", "-1.0", "false", "no", "n"}
_MISSING = {"", "nan", "na", "n/a", "?", "-", "none", "null"}


def parse_label(cell: str) -> float:
    """``1`` -> +1; ``0``/``-1`` -> -1; empty/NaN -> 0 (missing); else ``ValueError``."""
    v = cell.strip().lower()
    if v in _POS:
        return 1.0
    if v in _NEG:
        return -1.0
    if v in _MISSING:
        return 0.0
    raise ValueError(v)


@register_dataset("folder")
class ImageFolderAttributes(AttributeDataset):
    """Images listed in ``labels.csv`` with binary attribute columns; see the module docstring."""

    SPLITS = ("all", "train", "val", "test")

    @staticmethod
    def splits_present(
        root: str | os.PathLike[str], labels_file: str = "labels.csv"
    ) -> tuple[str, ...]:
        """``("all", ...)`` plus the values of labels.csv's ``split`` column, if it has one."""
        path = Path(root) / labels_file
        if not path.is_file():
            return ("all",)
        rows = read_csv_rows(path)
        lower = [h.strip().lower() for h in rows[0]] if rows else []
        if "split" not in lower:
            return ("all",)
        k = lower.index("split")
        vals = sorted({r[k].strip().lower() for r in rows[1:] if len(r) > k and r[k].strip()})
        return ("all", *vals)

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        split: str = "all",
        transform=None,
        image_size: int = 224,
        labels_file: str = "labels.csv",
        groups: str | os.PathLike[str] | None = None,
        check_images: bool = False,
        skip_bad_images: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(split, str) or not split:
            raise DatasetOptionError(f"folder: split must be a non-empty string, got {split!r}")
        base = require_root("folder", root)
        csv_path = base / labels_file
        if not csv_path.is_file():
            raise MissingFileError(
                f"{csv_path}: label file not found; write labels.csv with a file-name column and "
                "one column per attribute"
            )
        numbered = read_csv_rows(csv_path, numbered=True)
        rows = [r for _, r in numbered]
        if len(rows) < 2:
            raise LabelShapeError(f"{csv_path}: needs a header row and at least one image row")
        header = [h.strip() for h in rows[0]]
        lower = [h.lower() for h in header]
        fcol = next((lower.index(c) for c in FILE_COLUMNS if c in lower), 0)
        ccol = lower.index("class") if "class" in lower else None
        scol = lower.index("split") if "split" in lower else None
        acols = [k for k in range(len(header)) if k not in (fcol, ccol, scol)]
        names = [header[k] for k in acols]
        if not names:
            raise LabelShapeError(f"{csv_path}: no attribute columns after the file-name column")
        if len(set(names)) != len(names) or any(not n for n in names):
            raise LabelShapeError(
                f"{csv_path}: attribute column names must be unique and non-empty"
            )
        files, targets, cls_names, splits = [], [], [], []
        for lineno, row in numbered[1:]:
            if len(row) != len(header):
                raise LabelShapeError(
                    f"{csv_path}:{lineno}: {len(row)} cells but the header has {len(header)} "
                    "columns"
                )
            vals = []
            for k in acols:
                try:
                    vals.append(parse_label(row[k]))
                except ValueError:
                    raise LabelValueError(
                        f"{csv_path}:{lineno}: column {header[k]!r} has {row[k]!r}; use 1 "
                        "(positive), 0 or -1 (negative), or leave it empty (missing)"
                    ) from None
            files.append(row[fcol].strip())
            targets.append(vals)
            cls_names.append(row[ccol].strip() if ccol is not None else "")
            splits.append(row[scol].strip().lower() if scol is not None else "")
        _reject_duplicates(csv_path, files, [n for n, _ in numbered[1:]])
        classes = sorted({c for c in cls_names if c}) or None
        cids = np.array(
            [classes.index(c) if classes and c else -1 for c in cls_names], dtype=np.int64
        )
        sizes = {"all": len(files)}
        if scol is not None:
            for s in sorted(set(splits)):
                sizes[s] = splits.count(s)
        if split == "all":
            keep = list(range(len(files)))
        elif scol is None:
            raise DatasetOptionError(
                f"{csv_path}: split={split!r} needs a 'split' column in labels.csv; use --split all"
            )
        elif split not in sizes:
            raise DatasetOptionError(
                f"{csv_path}: no row has split {split!r}; splits present: "
                f"{', '.join(s for s in sizes if s != 'all')}"
            )
        else:
            keep = [i for i, s in enumerate(splits) if s == split]
        img_base = base
        if files and not (base / files[0]).exists() and (base / "images" / files[0]).exists():
            img_base = base / "images"
        paths = [img_base / files[i] for i in keep]
        exists = [p.is_file() for p in paths]
        if not all(exists):
            first = paths[exists.index(False)]
            if not skip_bad_images:
                raise MissingFileError(
                    f"{first}: image named in {csv_path.name} is missing "
                    f"({exists.count(False)} in all); fix the path or pass "
                    "--set data.skip_bad_images=true"
                )
            warnings.warn(
                f"folder: skipped {exists.count(False)} missing image(s) (first: {first})",
                RuntimeWarning,
                stacklevel=2,
            )
            keep = [i for i, ok in zip(keep, exists, strict=True) if ok]
            paths = [p for p, ok in zip(paths, exists, strict=True) if ok]
        if groups is not None:
            group_list = load_groups_file(Path(groups), names)
        elif (base / "groups.yaml").is_file():
            group_list = load_groups_file(base / "groups.yaml", names)
        else:
            group_list = singleton_groups(names)
        t = np.asarray(targets, dtype=np.float32).reshape(len(files), len(names))[keep]
        super().__init__(
            schema=AttributeSchema(
                names=tuple(names),
                groups=tuple(group_list),
                class_names=None if classes is None else tuple(classes),
            ),
            targets=t,
            mask=t != 0,
            sample_ids=[files[i] for i in keep],
            sources=paths,
            class_ids=cids[keep],
            transform=transform,
            image_size=image_size,
            root=base,
            split=split,
            options={"labels_file": labels_file, "groups": groups, "image_size": image_size},
            check_images=check_images,
            skip_bad_images=skip_bad_images,
            cache_dir=cache_dir,
            split_sizes=sizes,
        )


def read_csv_rows(path: Path, numbered: bool = False) -> list:
    """Non-blank rows of a UTF-8 CSV file (``csv`` module quoting) that are not comments (a
    first cell starting with ``#``); with ``numbered``, as ``(line number of the row's first
    line, cells)`` pairs."""
    reader = csv.reader(io.StringIO(read_text(path, "label file"), newline=""))
    out = []
    start = 1
    for row in reader:
        if any(c.strip() for c in row) and not row[0].lstrip().startswith("#"):
            out.append((start, row) if numbered else row)
        start = reader.line_num + 1
    return out


def _reject_duplicates(csv_path: Path, files: list[str], linenos: list[int]) -> None:
    """DuplicateRowError when two rows name the same image (after ``./`` and ``a/../``
    normalisation): the image would be counted twice and could land in train and test."""
    dup = first_duplicate([posixpath.normpath(f) for f in files])
    if dup is not None:
        name, i, j, repeats = dup
        raise DuplicateRowError(
            f"{csv_path}:{linenos[j]}: image {name!r} is already listed on line {linenos[i]} "
            f"({repeats} repeated row(s) in all); keep one row per image"
        )


__all__ = ["ImageFolderAttributes", "parse_label", "read_csv_rows"]
