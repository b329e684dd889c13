"""``verify_dataset``: check a dataset tree and summarise its labels (``apcnn data verify``).

Steps:

1. Build the dataset (``split="all"``): any layout or label problem raises its
   :class:`DatasetError` here (a missing label file, a value outside the coding, an image listed
   twice, a groups file naming an attribute the labels do not have, a file that is not UTF-8).
   Warnings the loader gives (attributes in no group, skipped images, ...) are kept in
   ``report.warnings``.
2. Labels and groups: every attribute column is in a group; attributes without any labelled
   sample, or with labels of one sign only (nothing to learn from), are warned about.
3. Images, one by one with a progress report: every file must exist and be non-empty; with
   ``decode=True`` (the default) it is also decoded completely (a truncated or corrupt file is an
   error) and its bytes are hashed (sha256), so files with the same content are reported as
   duplicates (a warning: a duplicate can land in both train and test). ``decode=False`` (the
   CLI's ``--fast``) checks existence and size only.

Missing, empty and undecodable images are *problems* (``report.ok`` is False); with
``raise_on_error=True`` the first kind found raises :class:`MissingFileError` /
:class:`CorruptImageError` naming the first bad file and the count. ``report.problems`` lists up
to ``max_problems`` of them, ``report.num_problems`` counts all.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from apcnn.data.errors import CorruptImageError, MissingFileError
from apcnn.data.images import check_image


@dataclass
class VerifyReport:
    """Result of :func:`verify_dataset`; ``to_dict()`` is JSON-ready, ``format_text()`` prints."""

    dataset: str
    root: str | None
    num_samples: int
    num_attributes: int
    num_groups: int
    split_sizes: dict[str, int]
    groups: dict[str, Any]
    attributes: dict[str, Any]
    num_classes: int | None = None
    images_checked: int = 0
    images_missing: int = 0
    images_empty: int = 0
    images_decoded: int = 0
    images_corrupt: int = 0
    decode: bool = True
    #: groups of sample ids whose files have the same bytes (decode=True only)
    duplicates: list[list[str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    num_problems: int = 0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cache_key: str = ""

    @property
    def ok(self) -> bool:
        return self.num_problems == 0 and not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "root": self.root,
            "ok": self.ok,
            "num_samples": self.num_samples,
            "num_attributes": self.num_attributes,
            "num_groups": self.num_groups,
            "num_classes": self.num_classes,
            "split_sizes": dict(self.split_sizes),
            "images": {
                "checked": self.images_checked,
                "missing": self.images_missing,
                "empty": self.images_empty,
                "decoded": self.images_decoded,
                "corrupt": self.images_corrupt,
                "duplicate_groups": len(self.duplicates),
            },
            "decode": self.decode,
            "groups": self.groups,
            "attributes": self.attributes,
            "problems": list(self.problems),
            "num_problems": self.num_problems,
            "duplicates": [list(d) for d in self.duplicates],
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
            "cache_key": self.cache_key,
        }

    def format_text(self) -> str:
        images = f"images: {self.images_checked} checked, {self.images_missing} missing"
        images += f", {self.images_empty} empty"
        if self.decode:
            images += (
                f", {self.images_decoded} decoded, {self.images_corrupt} corrupt, "
                f"{len(self.duplicates)} duplicate group(s)"
            )
        elif self.images_checked:
            images += " (not decoded: --fast)"
        lines = [
            f"dataset {self.dataset}: {self.num_samples} images, {self.num_attributes} attributes "
            f"in {self.num_groups} groups"
            + (f", {self.num_classes} classes" if self.num_classes else ""),
            f"root: {self.root}",
            "splits: " + ", ".join(f"{k}={v}" for k, v in self.split_sizes.items()),
            images,
            "",
            f"{'group / attribute':<34} {'pos':>7} {'neg':>7} {'missing':>8} {'pos%':>6}",
        ]
        for g, info in self.groups.items():
            lines.append(
                f"{g:<34} {info['positives']:>7} {info['negatives']:>7} {info['missing']:>8}"
            )
            for a in info["attributes"]:
                s = self.attributes[a]
                rate = "" if s["positive_rate"] is None else f"{100 * s['positive_rate']:.1f}"
                lines.append(
                    f"  {a[:32]:<32} {s['positives']:>7} {s['negatives']:>7} {s['missing']:>8} "
                    f"{rate:>6}"
                )
        lines.append("")
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s):")
            lines += [f"  {w}" for w in self.warnings]
        lines.append("OK" if self.ok else f"{self.num_problems} problem(s):")
        lines += [f"  {p}" for p in self.problems]
        if len(self.problems) < self.num_problems:
            lines.append(f"  ... and {self.num_problems - len(self.problems)} more")
        return "\n".join(lines)


def verify_dataset(
    name: str,
    root: str | os.PathLike[str] | None,
    *,
    decode: bool = True,
    raise_on_error: bool = True,
    max_problems: int = 20,
    progress: bool = False,
    **options: Any,
) -> VerifyReport:
    """Check dataset ``name`` at ``root`` (see module docstring); ``options`` as in
    :func:`~apcnn.data.registry.create_dataset` (``split`` defaults to ``"all"``);
    ``progress``: show a progress report on stderr (:func:`apcnn.runlog.progress`)."""
    from apcnn.data.registry import create_dataset

    t0 = time.perf_counter()
    options.setdefault("split", "all")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = create_dataset(name, root=root, **options)
    desc = ds.describe()
    report = VerifyReport(
        dataset=ds.name,
        root=desc["root"],
        num_samples=len(ds),
        num_attributes=ds.schema.num_attributes,
        num_groups=len(ds.schema.groups),
        split_sizes=desc["split_sizes"],
        groups=desc["groups"],
        attributes=desc["attributes"],
        num_classes=desc.get("num_classes"),
        decode=bool(decode),
        cache_key=ds.cache_key(),
    )
    report.warnings = list(dict.fromkeys(str(w.message) for w in caught))
    label_problems = _check_labels_and_groups(ds, report)
    missing, empty, corrupt = _check_images(ds, report, decode=bool(decode), progress=progress)
    report.images_missing, report.images_empty = len(missing), len(empty)
    report.images_corrupt = len(corrupt)
    found = (
        label_problems
        + [f"missing image: {p}" for p in missing]
        + [f"empty image (0 bytes): {p}" for p in empty]
        + [f"corrupt image: {e}" for e in corrupt]
    )
    report.num_problems = len(found)
    report.problems = found[:max_problems]
    report.seconds = time.perf_counter() - t0
    if raise_on_error and missing:
        raise MissingFileError(
            f"{missing[0]}: image file missing ({len(missing)} of {report.images_checked}); "
            "restore the images"
        )
    if raise_on_error and empty:
        raise CorruptImageError(
            f"{empty[0]}: image file is empty (0 bytes; {len(empty)} of "
            f"{report.images_checked}); restore it or remove its label row"
        )
    if raise_on_error and corrupt:
        raise CorruptImageError(
            f"{len(corrupt)} of {report.images_decoded} images do not decode; first: {corrupt[0]}"
        )
    return report


def _check_labels_and_groups(ds: Any, report: VerifyReport) -> list[str]:
    """Problems (attribute columns in no group); warnings (attributes nothing can be learnt
    from) go to ``report.warnings``."""
    schema = ds.schema
    grouped = {i for _, idx in schema.groups for i in idx}
    problems = [
        f"labels and groups: attribute {schema.names[i]!r} (column {i + 1}) is in no group"
        for i in range(schema.num_attributes)
        if i not in grouped
    ]
    labelled = ds.mask.sum(axis=0)
    pos = ((ds.targets > 0) & ds.mask).sum(axis=0)
    for i, n in enumerate(np.asarray(labelled).tolist()):
        name = schema.names[i]
        if n == 0:
            report.warnings.append(f"attribute {name!r} has no labelled image")
        elif pos[i] in (0, n):
            sign = "negative" if pos[i] == 0 else "positive"
            report.warnings.append(
                f"attribute {name!r}: all {n} labels are {sign}; it cannot be learnt"
            )
    return problems


def _check_images(
    ds: Any, report: VerifyReport, *, decode: bool, progress: bool
) -> tuple[list[str], list[str], list[str]]:
    """(missing paths, empty paths, decode errors); fills the image counts and duplicates."""
    from apcnn.runlog import progress as progress_bar

    missing: list[str] = []
    empty: list[str] = []
    corrupt: list[str] = []
    by_hash: dict[str, list[str]] = {}
    bar = progress_bar(
        total=len(ds),
        desc="verify" + (" (decode)" if decode else ""),
        unit="img",
        disable=not progress,
    )
    try:
        for i in range(len(ds)):
            bar.update(1)
            path = ds.image_path(i)
            if path is None:
                continue
            report.images_checked += 1
            try:
                size = path.stat().st_size if path.is_file() else None
            except OSError:
                size = None
            if size is None:
                missing.append(str(path))
                continue
            if size == 0:
                empty.append(str(path))
                continue
            if not decode:
                continue
            try:
                data = path.read_bytes()
            except OSError as e:
                corrupt.append(f"{path}: cannot read ({e.strerror or e})")
                continue
            by_hash.setdefault(hashlib.sha256(data).hexdigest(), []).append(str(ds.sample_ids[i]))
            err = check_image(path, data)
            report.images_decoded += 1
            if err is not None:
                corrupt.append(err)
    finally:
        bar.close()
    report.duplicates = [ids for ids in by_hash.values() if len(ids) > 1]
    if report.duplicates:
        extra = sum(len(d) - 1 for d in report.duplicates)
        report.warnings.append(
            f"{extra} duplicate image(s) (same bytes as another file) in "
            f"{len(report.duplicates)} group(s); first: {' = '.join(report.duplicates[0][:3])}"
            " (a duplicate can land in both train and test)"
        )
    return missing, empty, corrupt


__all__ = ["VerifyReport", "verify_dataset"]
