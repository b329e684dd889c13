"""CelebA (Liu et al., ICCV 2015) face attributes: ``create_dataset("celeba")``.

Two layouts are accepted (``root`` may be the folder itself or its parent):

- official: ``Anno/list_attr_celeba.txt``, ``Eval/list_eval_partition.txt``,
  ``Img/img_align_celeba/000001.jpg ...``
- torchvision (``root/celeba/`` flattened): ``list_attr_celeba.txt``,
  ``list_eval_partition.txt``, ``img_align_celeba/000001.jpg ...`` (a doubly nested
  ``img_align_celeba/img_align_celeba/``, as in some re-uploads, is found too).

``list_attr_celeba.txt``: line 1 the image count, line 2 the 40 attribute names, then
``000001.jpg -1  1  1 -1 ...`` (space padded): ``1`` positive, ``-1`` negative; all labelled.
``list_eval_partition.txt``: ``000001.jpg 0`` with 0 = train, 1 = val, 2 = test (identity
disjoint); an image listed twice in either file raises :class:`DuplicateRowError` with both line
numbers. Splits: ``"all"``, ``"train"``, ``"val"`` (alias ``"valid"``), ``"test"``.

Groups: the nine groups of Hand & Chellappa, "Attributes for Improved Attributes: A Multi-Task
Network Utilizing Implicit and Explicit Relationships for Facial Attribute Classification",
AAAI 2017 (their MCNN groups attributes by face region): gender, nose, mouth, eyes, face,
around_head, facial_hair, cheeks, fat. Attribute columns keep the file's order; a file whose
names differ from the 40 standard ones falls back to one group per attribute, with a warning.
Images have no class (``class_ids == -1``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from apcnn.data.base import (
    AttributeDataset,
    first_duplicate,
    read_text,
    require_root,
    text_lines,
)
from apcnn.data.errors import DuplicateRowError, LabelShapeError, LabelValueError, MissingFileError
from apcnn.data.groups import singleton_groups
from apcnn.data.images import is_image_file
from apcnn.data.registry import register_dataset
from apcnn.data.schema import AttributeSchema

CELEBA_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gender", ("Male",)),
    ("nose", ("Big_Nose", "Pointy_Nose")),
    ("mouth", ("Big_Lips", "Smiling", "Mouth_Slightly_Open", "Wearing_Lipstick")),
    ("eyes", ("Arched_Eyebrows", "Bags_Under_Eyes", "Bushy_Eyebrows", "Narrow_Eyes", "Eyeglasses")),
    ("face", ("Attractive", "Blurry", "Oval_Face", "Pale_Skin", "Young", "Heavy_Makeup")),
    (
        "around_head",
        (
            "Black_Hair",
            "Blond_Hair",
            "Brown_Hair",
            "Gray_Hair",
            "Bald",
            "Receding_Hairline",
            "Bangs",
            "Straight_Hair",
            "Wavy_Hair",
            "Wearing_Earrings",
            "Wearing_Hat",
            "Wearing_Necklace",
            "Wearing_Necktie",
        ),
    ),
    ("facial_hair", ("5_o_Clock_Shadow", "Goatee", "Mustache", "No_Beard", "Sideburns")),
    ("cheeks", ("High_Cheekbones", "Rosy_Cheeks")),
    ("fat", ("Chubby", "Double_Chin")),
)
PARTITIONS = {"train": 0, "val": 1, "valid": 1, "test": 2}


def _find(base: Path, rels: tuple[str, ...]) -> Path | None:
    for r in rels:
        if (base / r).exists():
            return base / r
    return None


def _find_celeba_root(root) -> Path:
    base = require_root("celeba", root)
    for cand in (base, base / "celeba", base / "CelebA"):
        if _find(cand, ("Anno/list_attr_celeba.txt", "list_attr_celeba.txt")):
            return cand
    raise MissingFileError(
        f"celeba: list_attr_celeba.txt not found under {str(base)!r} (looked for "
        "Anno/list_attr_celeba.txt and the torchvision layout celeba/list_attr_celeba.txt); "
        "pass root=DIR of the CelebA folder"
    )


def read_attr_file(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(attribute names, image file names, (N, 40) int8 labels in {-1, +1})."""
    lines = text_lines(read_text(path, "attribute file"))
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 2:
        raise LabelShapeError(f"{path}: needs a count line and a header line; restore the file")
    try:
        count = int(lines[0].split()[0])
    except (ValueError, IndexError):
        raise LabelValueError(
            f"{path}:1: expected the image count, got {lines[0].strip()!r}"
        ) from None
    names = lines[1].split()
    numbered = [(k, ln) for k, ln in enumerate(lines[2:], 3) if ln.strip()]
    rows = [ln for _, ln in numbered]
    if len(rows) != count:
        raise LabelShapeError(
            f"{path}: line 1 announces {count} images but {len(rows)} rows follow; the file is "
            "truncated or edited, restore it"
        )
    files: list[str] = []
    labels = np.empty((len(rows), len(names)), dtype=np.int8)
    for r, (lineno, ln) in enumerate(numbered):
        tok = ln.split()
        if len(tok) != len(names) + 1:
            raise LabelShapeError(
                f"{path}:{lineno}: {len(tok) - 1} values for {len(names)} attributes"
            )
        try:
            vals = [int(t) for t in tok[1:]]
        except ValueError:
            raise LabelValueError(f"{path}:{lineno}: non-integer label; expected 1 or -1") from None
        if any(v not in (-1, 1) for v in vals):
            raise LabelValueError(f"{path}:{lineno}: labels must be 1 or -1, got {tok[1:]}")
        files.append(tok[0])
        labels[r] = vals
    dup = first_duplicate(files)
    if dup is not None:
        name, i, j, repeats = dup
        raise DuplicateRowError(
            f"{path}:{numbered[j][0]}: image {name!r} is already listed on line "
            f"{numbered[i][0]} ({repeats} repeated row(s) in all); keep one row per image"
        )
    return names, files, labels


def read_partition_file(path: Path, files: list[str]) -> np.ndarray:
    """``(N,)`` partition codes (0 train, 1 val, 2 test) aligned with ``files``."""
    part: dict[str, int] = {}
    line_of: dict[str, int] = {}
    for lineno, ln in enumerate(text_lines(read_text(path, "partition file")), 1):
        tok = ln.split()
        if not tok:
            continue
        if len(tok) != 2 or tok[1] not in ("0", "1", "2"):
            raise LabelValueError(
                f"{path}:{lineno}: expected '<image> <0|1|2>', got {ln.strip()!r}"
            )
        if tok[0] in part:
            raise DuplicateRowError(
                f"{path}:{lineno}: image {tok[0]!r} is already listed on line "
                f"{line_of[tok[0]]}; keep one line per image"
            )
        part[tok[0]], line_of[tok[0]] = int(tok[1]), lineno
    missing = [f for f in files if f not in part]
    if missing:
        raise LabelShapeError(
            f"{path}: {len(missing)} image(s) of list_attr_celeba.txt have no partition (first: "
            f"{missing[0]}); restore the file"
        )
    return np.array([part[f] for f in files], dtype=np.int64)


def celeba_groups(names: list[str]) -> list[tuple[str, tuple[int, ...]]]:
    """The Hand & Chellappa groups as index tuples for ``names`` (or singleton groups)."""
    std = {a for _, attrs in CELEBA_GROUPS for a in attrs}
    if set(names) != std or len(names) != len(std):
        warnings.warn(
            "celeba: attribute names differ from the 40 standard ones; using one group per "
            "attribute",
            UserWarning,
            stacklevel=3,
        )
        return singleton_groups(names)
    return [(g, tuple(names.index(a) for a in attrs)) for g, attrs in CELEBA_GROUPS]


@register_dataset("celeba")
class CelebA(AttributeDataset):
    """CelebA aligned faces with 40 binary attributes; see the module docstring."""

    SPLITS = ("all", "train", "val", "valid", "test")

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        split: str = "all",
        transform=None,
        image_size: int = 224,
        check_images: bool = False,
        skip_bad_images: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._check_split(split)
        base = _find_celeba_root(root)
        attr_file = _find(base, ("Anno/list_attr_celeba.txt", "list_attr_celeba.txt"))
        assert attr_file is not None
        names, files, labels = read_attr_file(attr_file)
        part_file = _find(base, ("Eval/list_eval_partition.txt", "list_eval_partition.txt"))
        if part_file is not None:
            part = read_partition_file(part_file, files)
        elif split != "all":
            raise MissingFileError(
                f"celeba: list_eval_partition.txt not found under {base} (Eval/ or flat); "
                f"split={split!r} needs it (or use --split all)"
            )
        else:
            part = np.full(len(files), -1, dtype=np.int64)
        img_dir = _find(
            base,
            (
                "Img/img_align_celeba/img_align_celeba",
                "Img/img_align_celeba",
                "img_align_celeba/img_align_celeba",
                "img_align_celeba",
            ),
        )
        if img_dir is None or not img_dir.is_dir():
            raise MissingFileError(
                f"celeba: img_align_celeba/ not found under {base} (Img/img_align_celeba or "
                "img_align_celeba); extract img_align_celeba.zip there"
            )
        present = {f for f in os.listdir(img_dir) if is_image_file(f)}
        keep = (
            np.arange(len(files)) if split == "all" else np.flatnonzero(part == PARTITIONS[split])
        )
        absent = [files[k] for k in keep if files[k] not in present]
        if absent and not skip_bad_images:
            raise MissingFileError(
                f"{img_dir}: {len(absent)} image(s) listed in {attr_file.name} are missing "
                f"(first: {absent[0]}); restore them or pass --set data.skip_bad_images=true"
            )
        if absent:
            warnings.warn(
                f"celeba: skipped {len(absent)} missing image(s) (first: {absent[0]})",
                RuntimeWarning,
                stacklevel=2,
            )
            keep = np.array([k for k in keep if files[k] in present], dtype=np.int64)
        sizes = {"all": len(files)}
        if part_file is not None:
            sizes.update({s: int((part == c).sum()) for s, c in PARTITIONS.items() if s != "valid"})
        rel = img_dir.relative_to(base).as_posix()
        super().__init__(
            schema=AttributeSchema(names=tuple(names), groups=tuple(celeba_groups(names))),
            targets=labels[keep].astype(np.float32),
            mask=np.ones((len(keep), len(names)), dtype=bool),
            sample_ids=[f"{rel}/{files[k]}" for k in keep],
            sources=[img_dir / files[k] for k in keep],
            transform=transform,
            image_size=image_size,
            root=base,
            split="val" if split == "valid" else split,
            options={"image_size": image_size},
            check_images=check_images,
            skip_bad_images=skip_bad_images,
            cache_dir=cache_dir,
            split_sizes=sizes,
        )


__all__ = ["CELEBA_GROUPS", "CelebA", "read_attr_file", "read_partition_file"]
