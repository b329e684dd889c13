"""CUB-200-2011 attributes (Wah et al. 2011): ``create_dataset("cub")``.

Layout (``root`` is ``CUB_200_2011/`` or the folder that contains it)::

    attributes.txt                       "1 has_bill_shape::curved_(up_or_down)"   (312 lines)
                                         (next to CUB_200_2011/ in the archive, or in
                                          CUB_200_2011/attributes/: both are searched)
    CUB_200_2011/images.txt              "<image_id> <image_name>"
    CUB_200_2011/image_class_labels.txt  "<image_id> <class_id>"
    CUB_200_2011/classes.txt             "<class_id> <class_name>"
    CUB_200_2011/train_test_split.txt    "<image_id> <1 train | 0 test>"
    CUB_200_2011/images/<class_dir>/<file>.jpg
    CUB_200_2011/attributes/image_attribute_labels.txt
        "<image_id> <attribute_id> <is_present 0|1> <certainty_id 1..4> <time>"  (split()[:4])
    CUB_200_2011/attributes/class_attribute_labels_continuous.txt  200 x 312 floats in [0, 100]

Image labels: ``is_present`` 1 -> +1, 0 -> -1. Certainty 1 ("not visible") is missing by default
(``not_visible="missing"``); ``not_visible="negative"`` keeps the annotator's 0/1 instead. A
(image, attribute) pair without a line is missing. Groups: the 28 ``has_*`` prefixes before ``::``
in attribute order. ``schema.class_attributes`` = continuous class matrix / 100 (when the file is
present), ``schema.class_names`` from classes.txt, ``class_ids = class_id - 1``.
Splits: ``"all"``, ``"train"``, ``"test"`` from train_test_split.txt (5,994 / 5,794).
An id listed twice in an id file, or one image under two ids in images.txt, raises
:class:`DuplicateRowError` naming the lines (or ids).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from apcnn.data.base import (
    AttributeDataset,
    first_duplicate,
    read_lines,
    read_text,
    require_root,
    text_lines,
)
from apcnn.data.errors import (
    DatasetOptionError,
    DuplicateRowError,
    LabelShapeError,
    LabelValueError,
    MissingFileError,
    UnknownClassError,
)
from apcnn.data.registry import register_dataset
from apcnn.data.schema import AttributeSchema


def _find_cub_root(root) -> tuple[Path, Path]:
    """(CUB_200_2011 folder, attributes.txt path)."""
    base = require_root("cub", root)
    for cand in (base, base / "CUB_200_2011"):
        if (cand / "images.txt").is_file():
            for a in (
                cand.parent / "attributes.txt",
                cand / "attributes" / "attributes.txt",
                cand / "attributes.txt",
            ):
                if a.is_file():
                    return cand, a
            raise MissingFileError(
                f"cub: attributes.txt not found next to {cand} nor in {cand / 'attributes'}; "
                "copy it from the archive (attributes.txt or CUB_200_2011/attributes/)"
            )
    raise MissingFileError(
        f"cub: images.txt not found in {str(base)!r} or {str(base / 'CUB_200_2011')!r}; pass "
        "root=DIR of CUB_200_2011 (or its parent)"
    )


def _id_table(path: Path, what: str, ncols: int = 2) -> dict[int, list[str]]:
    """``{id: [values]}`` of an ``"<id> <value> ..."`` file; an id on two lines raises
    :class:`DuplicateRowError` naming both."""
    out: dict[int, list[str]] = {}
    line_of: dict[int, int] = {}
    for lineno, tok in read_lines(path, what):
        if len(tok) < ncols or not tok[0].isdigit():
            raise LabelValueError(
                f"{path}:{lineno}: expected '<id> <value>', got {' '.join(tok)!r}"
            )
        key = int(tok[0])
        if key in out:
            raise DuplicateRowError(
                f"{path}:{lineno}: id {key} is already listed on line {line_of[key]}; keep one "
                "line per id (restore the file from the archive)"
            )
        out[key], line_of[key] = tok[1:], lineno
    return out


def read_attribute_names(path: Path) -> list[str]:
    """The 312 ``has_group::value`` names of attributes.txt, in id order 1..M."""
    table = _id_table(path, "attributes.txt")
    ids = sorted(table)
    if ids != list(range(1, len(ids) + 1)):
        raise LabelValueError(f"{path}: attribute ids must be 1..{len(ids)} without gaps")
    names = [" ".join(table[i]) for i in ids]
    bad = [n for n in names if "::" not in n]
    if bad:
        raise LabelValueError(f"{path}: attribute {bad[0]!r} lacks the 'group::value' form")
    return names


def prefix_groups(names: list[str]) -> list[tuple[str, tuple[int, ...]]]:
    """Groups by the prefix before ``::`` (``has_bill_shape``), in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(n.split("::", 1)[0], []).append(i)
    return [(g, tuple(idx)) for g, idx in groups.items()]


def read_image_attribute_labels(
    path: Path, image_row: dict[int, int], num_attributes: int, not_visible: str
) -> tuple[np.ndarray, np.ndarray]:
    """(targets, mask), both ``(len(image_row), M)``, from image_attribute_labels.txt."""
    n = len(image_row)
    targets = np.zeros((n, num_attributes), dtype=np.float32)
    if not path.is_file():
        raise MissingFileError(
            f"{path}: image attribute labels not found; restore attributes/ from the archive"
        )
    fast = _fast_table(path)
    if fast is not None:
        img, att, present, cert = fast.T
        ids = np.fromiter(image_row.keys(), dtype=np.int64, count=n)
        rows = np.fromiter(image_row.values(), dtype=np.int64, count=n)
        lut = np.full(int(max(ids.max(initial=0), img.max(initial=0))) + 1, -1, dtype=np.int64)
        lut[ids] = rows
        ok = (
            (img >= 0)
            & (att >= 1)
            & (att <= num_attributes)
            & np.isin(present, (0, 1))
            & (cert >= 1)
            & (cert <= 4)
        )
        if ok.all():
            r = lut[img]
            if (r >= 0).all():
                keep = cert != 1 if not_visible == "missing" else np.ones(len(img), dtype=bool)
                targets[r[keep], att[keep] - 1] = np.where(present[keep] == 1, 1.0, -1.0)
                return targets, targets != 0
        # something is wrong: the line-by-line parser below names the line
    for lineno, ln in enumerate(text_lines(read_text(path, "image attribute labels")), 1):
        tok = ln.split()[:4]
        if not tok:
            continue
        try:
            img_id, att_id, pres, cer = (int(t) for t in tok)
        except ValueError:
            raise LabelValueError(
                f"{path}:{lineno}: expected '<image_id> <attribute_id> <0|1> <1..4> <time>', "
                f"got {ln.strip()!r}"
            ) from None
        row = image_row.get(img_id)
        if row is None:
            raise LabelValueError(f"{path}:{lineno}: image id {img_id} is not in images.txt")
        if not 1 <= att_id <= num_attributes:
            raise LabelValueError(
                f"{path}:{lineno}: attribute id {att_id} outside 1..{num_attributes}"
            )
        if pres not in (0, 1) or not 1 <= cer <= 4:
            raise LabelValueError(
                f"{path}:{lineno}: is_present must be 0/1 and certainty 1..4, got {tok[2:]}"
            )
        if cer == 1 and not_visible == "missing":
            continue
        targets[row, att_id - 1] = 1.0 if pres else -1.0
    return targets, targets != 0


def _fast_table(path: Path) -> np.ndarray | None:
    """The first four integer columns via ``np.loadtxt`` (C parser), or None if it cannot."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.loadtxt(path, usecols=(0, 1, 2, 3), dtype=np.int64, ndmin=2)
    except (ValueError, IndexError):
        return None
    return arr if arr.shape[1] == 4 else None


@register_dataset("cub")
class CUB(AttributeDataset):
    """CUB-200-2011 with its 312 binary attributes in 28 groups; see the module docstring."""

    SPLITS = ("all", "train", "test")

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        split: str = "all",
        transform=None,
        image_size: int = 224,
        not_visible: str = "missing",
        check_images: bool = False,
        skip_bad_images: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._check_split(split)
        if not_visible not in ("missing", "negative"):
            raise DatasetOptionError(
                f"cub: not_visible must be 'missing' or 'negative', got {not_visible!r}"
            )
        base, attr_path = _find_cub_root(root)
        names = read_attribute_names(attr_path)
        classes_t = _id_table(base / "classes.txt", "classes.txt")
        class_ids_sorted = sorted(classes_t)
        if class_ids_sorted != list(range(1, len(class_ids_sorted) + 1)):
            raise LabelValueError(f"{base / 'classes.txt'}: class ids must be 1..C without gaps")
        class_names = [" ".join(classes_t[c]) for c in class_ids_sorted]
        images = _id_table(base / "images.txt", "images.txt")
        image_ids = sorted(images)
        dup = first_duplicate([images[i][0] for i in image_ids])
        if dup is not None:
            name, a, b, repeats = dup
            raise DuplicateRowError(
                f"{base / 'images.txt'}: image {name!r} is listed under ids {image_ids[a]} and "
                f"{image_ids[b]} ({repeats} repeated image(s) in all); keep one id per image"
            )
        row_of = {img: r for r, img in enumerate(image_ids)}
        labels = _id_table(base / "image_class_labels.txt", "image_class_labels.txt")
        cids = np.empty(len(image_ids), dtype=np.int64)
        for r, img in enumerate(image_ids):
            if img not in labels:
                raise LabelShapeError(
                    f"{base / 'image_class_labels.txt'}: no class for image id {img}; restore it"
                )
            c = int(labels[img][0])
            if not 1 <= c <= len(class_names):
                raise UnknownClassError(
                    f"{base / 'image_class_labels.txt'}: image id {img} has class id {c}, but "
                    f"classes.txt lists 1..{len(class_names)}"
                )
            cids[r] = c - 1
        targets, mask = read_image_attribute_labels(
            base / "attributes" / "image_attribute_labels.txt", row_of, len(names), not_visible
        )
        class_attr = None
        cont = base / "attributes" / "class_attribute_labels_continuous.txt"
        if cont.is_file():
            from apcnn.data.awa import read_matrix

            class_attr = read_matrix(cont, len(class_names), len(names), "class attributes")
            class_attr = np.clip(class_attr, 0.0, 100.0) / 100.0
        else:
            warnings.warn(
                f"{cont}: not found; schema.class_attributes stays empty (zero-shot needs it)",
                UserWarning,
                stacklevel=2,
            )
        is_train = np.ones(len(image_ids), dtype=bool)
        split_file = base / "train_test_split.txt"
        if split_file.is_file():
            tt = _id_table(split_file, "train_test_split.txt")
            for r, img in enumerate(image_ids):
                if img not in tt or tt[img][0] not in ("0", "1"):
                    raise LabelValueError(
                        f"{split_file}: image id {img} needs a '0' or '1' entry; restore the file"
                    )
                is_train[r] = tt[img][0] == "1"
        elif split != "all":
            raise MissingFileError(f"{split_file}: not found; split={split!r} needs it")
        sizes = {"all": len(image_ids)}
        if split_file.is_file():
            sizes.update(train=int(is_train.sum()), test=int((~is_train).sum()))
        keep = {
            "all": np.arange(len(image_ids)),
            "train": np.flatnonzero(is_train),
            "test": np.flatnonzero(~is_train),
        }[split]
        paths = [base / "images" / images[image_ids[k]][0] for k in keep]
        present = _existing(paths)
        if not all(present):
            first = paths[present.index(False)]
            if not skip_bad_images:
                raise MissingFileError(
                    f"{first}: image listed in images.txt is missing ({present.count(False)} in "
                    "all); restore the images/ folder or pass --set data.skip_bad_images=true"
                )
            warnings.warn(
                f"cub: skipped {present.count(False)} missing image(s) (first: {first})",
                RuntimeWarning,
                stacklevel=2,
            )
            keep = keep[np.asarray(present)]
            paths = [p for p, ok in zip(paths, present, strict=True) if ok]
        super().__init__(
            schema=AttributeSchema(
                names=tuple(names),
                groups=tuple(prefix_groups(names)),
                class_names=tuple(class_names),
                class_attributes=class_attr,
            ),
            targets=targets[keep],
            mask=mask[keep],
            sample_ids=[f"images/{images[image_ids[k]][0]}" for k in keep],
            sources=paths,
            class_ids=cids[keep],
            transform=transform,
            image_size=image_size,
            root=base,
            split=split,
            options={"not_visible": not_visible, "image_size": image_size},
            check_images=check_images,
            skip_bad_images=skip_bad_images,
            cache_dir=cache_dir,
            split_sizes=sizes,
        )


def _existing(paths: list[Path]) -> list[bool]:
    """Existence of many files with one ``listdir`` per folder."""
    listing: dict[Path, set[str]] = {}
    out = []
    for p in paths:
        d = p.parent
        if d not in listing:
            listing[d] = set(os.listdir(d)) if d.is_dir() else set()
        out.append(p.name in listing[d])
    return out


__all__ = ["CUB", "prefix_groups", "read_attribute_names", "read_image_attribute_labels"]
