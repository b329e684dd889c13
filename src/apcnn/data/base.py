"""The dataset contract every loader implements: :class:`AttributeDataset`.

A dataset of ``N`` images and ``M`` binary attributes holds, once constructed (labels are parsed
eagerly, images are decoded lazily in ``__getitem__``, i.e. in the DataLoader workers):

- ``schema``: :class:`~apcnn.data.schema.AttributeSchema` (names, groups, kinds, classes).
- ``targets``: ``(N, M)`` float32 in ``{-1, +1}``, ``0`` where the label is missing.
- ``mask``: ``(N, M)`` bool, ``True`` where the label is known (``targets != 0``).
- ``class_ids``: ``(N,)`` int64 class of each image, ``-1`` when the dataset has no classes.
- ``sample_ids``: ``(N,)`` str, a stable id per image (its path relative to the root).
- ``transform``: callable PIL RGB image -> tensor; default :func:`default_transform` (float
  ``(3, image_size, image_size)`` in ``[0, 1]``).

``ds[i]`` is ``{"image": transform(load_image(i)), "target": (M,) float32, "mask": (M,) bool,
"class_id": int64 scalar tensor, "index": int64 scalar tensor}`` where ``index`` is ``i``, the
position in *this* dataset (a subset renumbers from 0).

Bad images: with ``check_images=True`` every image is decoded at construction; a bad one raises
:class:`CorruptImageError` (or :class:`MissingFileError`) naming the file, or, with
``skip_bad_images=True``, is dropped and all drops are counted in one warning. With
``skip_bad_images=True`` an image that fails later, in ``__getitem__``, is replaced by the next
good sample (its ``index`` tells which), counted in ``skipped_indices`` and warned about once.

File names and label files must be UTF-8: a label file that is not raises
:class:`EncodingError` naming the file and line (:func:`read_text`), and so does a sample whose
file name is not (checked once here, on the sample ids).

Common options of the file-based datasets: ``image_size`` (side of the default transform's
output, and of the cache), ``check_images``, ``skip_bad_images``, and ``cache_dir``: decoded
images are stored there resized to ``image_size x image_size`` (uint8 ``.npy``), and
``load_image`` returns that cached copy, so later epochs skip JPEG decoding. With training
crops, set ``image_size`` to the transform's resize size (e.g. 256 for 224 crops).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from apcnn.data.errors import (
    CorruptImageError,
    DatasetError,
    DatasetOptionError,
    EncodingError,
    MissingFileError,
)
from apcnn.data.images import ResizedImageCache, open_rgb
from apcnn.data.schema import AttributeSchema

Transform = Callable[[Image.Image], Any]


class AttributeDataset:
    """Base class: per-image attribute targets with a missing-label mask (see module docstring).

    Subclasses parse their label files, then call ``super().__init__`` with the parsed arrays and
    one *source* per sample: a :class:`~pathlib.Path` to an image file (decoded by
    :func:`~apcnn.data.images.open_rgb`) or anything their :meth:`_load_source` understands.

    A map-style dataset as ``torch.utils.data.DataLoader`` takes it (``__len__``,
    ``__getitem__``; ``a + b`` is a ``ConcatDataset`` as for ``torch.utils.data.Dataset``), but
    not a subclass of that class: reading the labels (``apcnn data verify``) never imports torch,
    which costs seconds; torch is imported by the first ``ds[i]``, torchvision by the first use
    of the default :attr:`transform`.
    """

    #: registry name, set by :func:`~apcnn.data.registry.register_dataset`.
    name: ClassVar[str] = "dataset"
    #: split names the ``split`` argument accepts.
    SPLITS: ClassVar[tuple[str, ...]] = ("all",)

    def __init__(
        self,
        *,
        schema: AttributeSchema,
        targets: np.ndarray,
        mask: np.ndarray | None,
        sample_ids: Sequence[str],
        sources: Sequence[Any],
        class_ids: np.ndarray | Sequence[int] | None = None,
        transform: Transform | None = None,
        image_size: int = 224,
        root: str | os.PathLike[str] | None = None,
        split: str = "all",
        options: dict[str, Any] | None = None,
        check_images: bool = False,
        skip_bad_images: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        split_sizes: dict[str, int] | None = None,
    ) -> None:
        targets = np.asarray(targets, dtype=np.float32)
        n, m = targets.shape if targets.ndim == 2 else (len(targets), -1)
        if targets.ndim != 2 or m != schema.num_attributes:
            raise ValueError(
                f"targets has shape {targets.shape}, expected (N, {schema.num_attributes})"
            )
        if mask is None:
            mask = targets != 0
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != targets.shape:
            raise ValueError(f"mask has shape {mask.shape}, expected {targets.shape}")
        if not np.all(np.isin(targets[mask], (-1.0, 1.0))):
            raise ValueError("labelled targets must be -1 or +1")
        targets = np.where(mask, targets, np.float32(0.0)).astype(np.float32)
        cid = (
            np.full(n, -1, dtype=np.int64)
            if class_ids is None
            else np.asarray(class_ids, dtype=np.int64).reshape(-1)
        )
        if len(cid) != n or len(sample_ids) != n or len(sources) != n:
            raise ValueError(
                f"{n} targets but {len(cid)} class ids, {len(sample_ids)} sample ids and "
                f"{len(sources)} sources"
            )
        root_path = None if root is None else Path(root).resolve()
        _check_utf8_names(root_path, sample_ids)
        self.schema = schema
        self.targets = targets
        self.mask = mask
        self.class_ids = cid
        self.sample_ids = np.asarray(list(sample_ids), dtype=str)
        self._sources = list(sources)
        self._src = np.arange(n, dtype=np.int64)
        self.image_size = _positive_int("image_size", image_size)
        self._transform: Transform | None = transform  # None: default_transform on first use
        self.root = root_path
        self.split = split
        self.options = dict(options or {})
        self.skip_bad_images = bool(skip_bad_images)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._cache = (
            None if self.cache_dir is None else ResizedImageCache(self.cache_dir, self.image_size)
        )
        self.split_sizes = dict(split_sizes or {split: n})
        self.skipped_indices: set[int] = set()
        self._warned = False
        if check_images:
            self._check_all_images()

    # ------------------------------------------------------------------ access
    @property
    def transform(self) -> Transform:
        """PIL RGB image -> what ``ds[i]["image"]`` holds: the ``transform`` given, else
        :func:`~apcnn.data.transforms.default_transform` ``(image_size)``, built on first use
        (it imports torchvision)."""
        if self._transform is None:
            from apcnn.data.transforms import default_transform

            self._transform = default_transform(self.image_size)
        return self._transform

    @transform.setter
    def transform(self, value: Transform) -> None:
        self._transform = value

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} samples")
        i %= n
        j = i
        for _ in range(n):
            try:
                img = self.load_image(j)
                break
            except (CorruptImageError, MissingFileError) as e:
                if not self.skip_bad_images:
                    raise
                self._note_bad(j, e)
                j = (j + 1) % n
        else:
            raise DatasetError(f"{type(self).__name__}: no sample decodes; check the image files")
        import torch  # here, not at the top: reading labels needs no torch

        return {
            "image": self.transform(img),
            "target": torch.from_numpy(self.targets[j].copy()),
            "mask": torch.from_numpy(self.mask[j].copy()),
            "class_id": torch.tensor(int(self.class_ids[j]), dtype=torch.int64),
            "index": torch.tensor(j, dtype=torch.int64),
        }

    def __add__(self, other: Any) -> Any:
        """``torch.utils.data.ConcatDataset([self, other])``, as ``Dataset.__add__``."""
        from torch.utils.data import ConcatDataset

        return ConcatDataset([self, other])

    def load_image(self, i: int) -> Image.Image:
        """Sample ``i`` as a decoded ``RGB`` PIL image, no transform (with ``cache_dir``: the
        cached copy resized to ``image_size x image_size``)."""
        return self._load_source(self._sources[int(self._src[i])])

    def image_path(self, i: int) -> Path | None:
        """The image file of sample ``i``, or ``None`` for generated images."""
        src = self._sources[int(self._src[i])]
        return src if isinstance(src, Path) else None

    def _load_source(self, src: Any) -> Image.Image:
        if not isinstance(src, Path):
            raise TypeError(f"{type(self).__name__} must override _load_source for {src!r}")
        return open_rgb(src) if self._cache is None else self._cache.load(src)

    # ----------------------------------------------------------------- subsets
    def subset(self, indices: Sequence[int] | np.ndarray) -> AttributeDataset:
        """A dataset of the samples ``indices`` (positions in this dataset, in that order).

        Same contract and class; arrays are copied, images are not loaded. A boolean array of
        length ``N`` is accepted as a mask.
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(
                    f"boolean subset mask has shape {idx.shape}, expected ({len(self)},)"
                )
            idx = np.flatnonzero(idx)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"subset indices must be integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(
                f"subset indices must be in [0, {len(self)}), got {idx.min()}..{idx.max()}"
            )
        idx %= max(len(self), 1)
        new = copy.copy(self)
        new._src = self._src[idx]
        new.targets = self.targets[idx]
        new.mask = self.mask[idx]
        new.class_ids = self.class_ids[idx]
        new.sample_ids = self.sample_ids[idx]
        new.skipped_indices = set()
        new._warned = False
        return new

    def _drop(self, bad: Sequence[int]) -> None:
        keep = np.setdiff1d(np.arange(len(self)), np.asarray(list(bad), dtype=np.int64))
        kept = self.subset(keep)
        for attr in ("_src", "targets", "mask", "class_ids", "sample_ids"):
            setattr(self, attr, getattr(kept, attr))
        self.split_sizes[self.split] = len(self)

    # ----------------------------------------------------------------- images
    def _check_all_images(self) -> None:
        bad: list[tuple[int, str]] = []
        for i in range(len(self)):
            try:
                self.load_image(i)
            except (CorruptImageError, MissingFileError) as e:
                if not self.skip_bad_images:
                    raise
                bad.append((i, str(e)))
        if bad:
            self._drop([i for i, _ in bad])
            warnings.warn(
                f"{type(self).__name__}: skipped {len(bad)} bad image(s) "
                f"(data.skip_bad_images=true); first: {bad[0][1]}",
                RuntimeWarning,
                stacklevel=3,
            )

    def _note_bad(self, j: int, err: Exception) -> None:
        self.skipped_indices.add(j)
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__}: skipping bad image(s) while loading "
                f"(data.skip_bad_images=true; count in dataset.skipped_indices); first: {err}",
                RuntimeWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------- reporting
    def cache_key(self) -> str:
        """Stable 32-hex key of (dataset name, resolved root, label options, split, sample ids,
        image files' sizes and modification times).

        The files part is ``sha256`` over ``"<size> <mtime_ns>"`` of each sample's image file, in
        sample order (``os.stat`` only, contents are not read: about 0.3 s per 100k files on a
        local disk), so an image edited, replaced, emptied or truncated in place changes the key
        and a feature cache keyed on it recomputes. ``transform``, ``check_images``,
        ``skip_bad_images`` and ``cache_dir`` are not part of it: a feature cache must add its
        own preprocessing key.
        """
        ids = hashlib.sha256("\n".join(self.sample_ids.tolist()).encode()).hexdigest()
        payload = {
            "dataset": self.name,
            "root": None if self.root is None else str(self.root),
            "options": {k: _jsonable(v) for k, v in sorted(self.options.items())},
            "split": self.split,
            "n": len(self),
            "ids": ids,
            "files": self.files_digest(),
        }
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def files_digest(self) -> str:
        """``sha256`` (hex) of ``"<size> <mtime_ns>"`` per sample's image file, in sample order
        (``"missing"`` for an absent file, ``"-"`` for a generated image); see :meth:`cache_key`."""
        h = hashlib.sha256()
        for k in self._src:
            src = self._sources[int(k)]
            if not isinstance(src, Path):
                h.update(b"-\n")
                continue
            try:
                st = os.stat(src)
            except OSError:
                h.update(b"missing\n")
                continue
            h.update(f"{st.st_size} {st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """Label statistics: counts, per group and per attribute positives/negatives/missing."""
        pos = ((self.targets > 0) & self.mask).sum(axis=0)
        neg = ((self.targets < 0) & self.mask).sum(axis=0)
        miss = (~self.mask).sum(axis=0)
        attrs: dict[str, Any] = {}
        for m, name in enumerate(self.schema.names):
            lab = int(pos[m] + neg[m])
            attrs[name] = {
                "group": self.schema.group_of(m),
                "kind": self.schema.kinds[m],
                "positives": int(pos[m]),
                "negatives": int(neg[m]),
                "missing": int(miss[m]),
                "positive_rate": float(pos[m] / lab) if lab else None,
            }
        groups = {
            g: {
                "attributes": [self.schema.names[i] for i in idx],
                "positives": int(pos[list(idx)].sum()),
                "negatives": int(neg[list(idx)].sum()),
                "missing": int(miss[list(idx)].sum()),
            }
            for g, idx in self.schema.groups
        }
        out: dict[str, Any] = {
            "dataset": self.name,
            "root": None if self.root is None else str(self.root),
            "split": self.split,
            "num_samples": len(self),
            "num_attributes": self.schema.num_attributes,
            "num_groups": len(self.schema.groups),
            "split_sizes": dict(self.split_sizes),
            "labelled_fraction": float(self.mask.mean()) if self.mask.size else 0.0,
            "groups": groups,
            "attributes": attrs,
        }
        if self.schema.class_names is not None:
            counts = np.bincount(
                self.class_ids[self.class_ids >= 0], minlength=len(self.schema.class_names)
            )
            out["num_classes"] = len(self.schema.class_names)
            out["class_counts"] = {
                c: int(counts[k]) for k, c in enumerate(self.schema.class_names) if counts[k]
            }
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"attributes={self.schema.num_attributes}, groups={len(self.schema.groups)}, "
            f"root={None if self.root is None else str(self.root)!r})"
        )

    # -------------------------------------------------------- subclass helpers
    @classmethod
    def _check_split(cls, split: str) -> str:
        if split not in cls.SPLITS:
            raise DatasetOptionError(
                f"{cls.name}: unknown split {split!r}; valid splits: {', '.join(cls.SPLITS)}"
            )
        return split


# --------------------------------------------------------------------- helpers
def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
        raise DatasetOptionError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, os.PathLike):
        return str(Path(v).resolve())
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in sorted(v.items())}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return repr(v)


def require_root(name: str, root: str | os.PathLike[str] | None) -> Path:
    """``root`` as a Path, or a MissingFileError telling the user to pass ``root=``."""
    if root is None:
        raise MissingFileError(
            f"{name}: root is required; pass root=DIR pointing at the dataset folder"
        )
    p = Path(root).expanduser()
    if not p.is_dir():
        raise MissingFileError(f"{name}: root {str(p)!r} is not a folder; pass the dataset folder")
    return p


def find_root(name: str, root: str | os.PathLike[str] | None, folder: str, marker: str) -> Path:
    """The dataset folder: ``root`` itself when it contains ``marker``, else ``root/folder``."""
    base = require_root(name, root)
    for cand in (base, base / folder):
        if (cand / marker).exists():
            return cand
    raise MissingFileError(
        f"{name}: {str(base / marker)!r} not found (also looked in {str(base / folder)!r}); pass "
        f"root=DIR where DIR contains {marker}"
    )


def read_text(path: str | os.PathLike[str], what: str) -> str:
    """The text of a label, index or groups file decoded as UTF-8 (a leading BOM dropped).

    Raises:
        MissingFileError: ``path`` is not a file.
        EncodingError: it is not valid UTF-8 (the message names the file, line and byte).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise MissingFileError(
            f"{p}: {what} not found; restore it from the dataset archive"
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise EncodingError(
            f"{p}:{line}: {what} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset "
            f"{e.start}); save it as UTF-8, e.g. iconv -f latin1 -t utf-8"
        ) from None


def text_lines(text: str) -> list[str]:
    """``text`` split at ``\\n``, ``\\r\\n`` or ``\\r`` (as reading the file line by line)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def read_lines(path: Path, what: str) -> list[tuple[int, list[str]]]:
    """Non-blank lines of a text label file as (1-based line number, whitespace tokens)."""
    lines = text_lines(read_text(path, what))
    return [(k, line.split()) for k, line in enumerate(lines, 1) if line.strip()]


def first_duplicate(keys: Sequence[Any]) -> tuple[Any, int, int, int] | None:
    """``(key, first position, second position, number of repeated entries)`` of the first key
    seen twice in ``keys``, or None when all are distinct (positions 0-based)."""
    seen: dict[Any, int] = {}
    first: tuple[Any, int, int] | None = None
    repeats = 0
    for pos, key in enumerate(keys):
        if key in seen:
            repeats += 1
            if first is None:
                first = (key, seen[key], pos)
        else:
            seen[key] = pos
    return None if first is None else (*first, repeats)


def _check_utf8_names(root: Path | None, sample_ids: Sequence[str]) -> None:
    """EncodingError naming the first sample whose file name (or the root) is not UTF-8: Python
    keeps such names as lone surrogates, which no JSON, log or checkpoint can encode."""
    names = [str(root or ""), *map(str, sample_ids)]
    try:
        "\n".join(names).encode("utf-8")
        return
    except UnicodeEncodeError:
        pass
    bad = next(n for n in names if not _is_utf8(n))
    path = Path(bad) if root is None or bad == str(root) else root / bad
    raise EncodingError(
        f"{os.fsencode(path)!r}: file name is not valid UTF-8; rename it with UTF-8 characters "
        "(e.g. convmv -f latin1 -t utf-8)"
    )


def _is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


__all__ = [
    "AttributeDataset",
    "find_root",
    "first_duplicate",
    "read_lines",
    "read_text",
    "require_root",
    "text_lines",
]
