"""``verify_dataset``: check a dataset tree and summarise its labels (``apcnn data verify``).

Steps: build the dataset (``split="all"``; any layout or label problem raises its
:class:`DatasetError` here), check that every image file exists, optionally decode every image
(``decode=True``), and count per group and per attribute the positives, negatives and missing
labels. Missing or undecodable images raise :class:`MissingFileError` /
:class:`CorruptImageError` naming the first bad file and the count (``report.problems`` lists up
to ``max_problems`` of them when ``raise_on_error=False``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

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
    images_decoded: int = 0
    images_corrupt: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cache_key: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

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
                "decoded": self.images_decoded,
                "corrupt": self.images_corrupt,
            },
            "groups": self.groups,
            "attributes": self.attributes,
            "problems": list(self.problems),
            "seconds": round(self.seconds, 3),
            "cache_key": self.cache_key,
        }

    def format_text(self) -> str:
        lines = [
            f"dataset {self.dataset}: {self.num_samples} images, {self.num_attributes} attributes "
            f"in {self.num_groups} groups"
            + (f", {self.num_classes} classes" if self.num_classes else ""),
            f"root: {self.root}",
            "splits: " + ", ".join(f"{k}={v}" for k, v in self.split_sizes.items()),
            f"images: {self.images_checked} checked, {self.images_missing} missing"
            + (
                f", {self.images_decoded} decoded, {self.images_corrupt} corrupt"
                if self.images_decoded or self.images_corrupt
                else ""
            ),
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
        lines.append("OK" if self.ok else f"{len(self.problems)} problem(s):")
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def verify_dataset(
    name: str,
    root: str | os.PathLike[str] | None,
    *,
    decode: bool = False,
    raise_on_error: bool = True,
    max_problems: int = 20,
    **options: Any,
) -> VerifyReport:
    """Check dataset ``name`` at ``root`` (see module docstring); ``options`` as in
    :func:`~apcnn.data.registry.create_dataset` (``split`` defaults to ``"all"``)."""
    from apcnn.data.registry import create_dataset

    t0 = time.perf_counter()
    options.setdefault("split", "all")
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
        cache_key=ds.cache_key(),
    )
    missing: list[str] = []
    corrupt: list[str] = []
    for i in range(len(ds)):
        path = ds.image_path(i)
        if path is None:
            continue
        report.images_checked += 1
        if not path.is_file():
            missing.append(str(path))
            continue
        if decode:
            err = check_image(path)
            report.images_decoded += 1
            if err is not None:
                corrupt.append(err)
    report.images_missing, report.images_corrupt = len(missing), len(corrupt)
    report.problems = (
        [f"missing image: {p}" for p in missing] + [f"corrupt image: {e}" for e in corrupt]
    )[:max_problems]
    report.seconds = time.perf_counter() - t0
    if raise_on_error and missing:
        raise MissingFileError(
            f"{missing[0]}: image file missing ({len(missing)} of {report.images_checked}); "
            "restore the images"
        )
    if raise_on_error and corrupt:
        raise CorruptImageError(
            f"{len(corrupt)} of {report.images_decoded} images do not decode; first: {corrupt[0]}"
        )
    return report


__all__ = ["VerifyReport", "verify_dataset"]
