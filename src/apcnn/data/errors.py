"""Errors raised by the dataset layer.

Every error is a :class:`DatasetError`; the subclasses also derive from the matching built-in
exception (``FileNotFoundError``, ``ValueError``, ``OSError``, ``TypeError``) so generic handlers
keep working. Messages are one line: the file (and line) at fault, what was found, and the fix.
"""

from __future__ import annotations


class DatasetError(Exception):
    """A dataset tree or a dataset request that cannot be used as given."""


class MissingFileError(DatasetError, FileNotFoundError):
    """A file or folder the layout requires is absent (label file, image, split file)."""


class LabelShapeError(DatasetError, ValueError):
    """A label file has the wrong number of rows/columns for the images or attributes."""


class LabelValueError(DatasetError, ValueError):
    """A label file holds a value outside the documented coding."""


class CorruptImageError(DatasetError, OSError):
    """An image file exists but cannot be decoded (corrupt, truncated, not an image)."""


class DuplicateRowError(LabelValueError):
    """A label or index file lists the same image (or id, or class) on more than one line."""


class EncodingError(DatasetError, ValueError):
    """A label file, groups file or file name is not valid UTF-8."""


class UnknownClassError(DatasetError, ValueError):
    """A split or label file names a class (or class id) that the class list does not have."""


class UnknownDatasetError(DatasetError, ValueError):
    """``create_dataset`` got a name that is not registered."""


class DatasetOptionError(DatasetError, TypeError):
    """A dataset got an option it does not take, or an option value outside its choices."""


__all__ = [
    "CorruptImageError",
    "DatasetError",
    "DatasetOptionError",
    "DuplicateRowError",
    "EncodingError",
    "LabelShapeError",
    "LabelValueError",
    "MissingFileError",
    "UnknownClassError",
    "UnknownDatasetError",
]
