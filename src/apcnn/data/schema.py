"""The attribute schema shared by every dataset, model, checkpoint and report.

An :class:`AttributeSchema` names the M binary attributes a model predicts, partitions them into
groups (the ``g = 1..G`` of the paper's eq. 2), records which binary attributes are the one-vs-rest
members of a multi-class attribute (Clothing's ``sleevelength``, ``neckline``, ``category``) and,
for class-level datasets (AwA, CUB, synthetic), the class names and the class-attribute matrix used
for zero-shot transfer.

It is plain data: JSON round-trips through :meth:`to_dict` / :meth:`from_dict`, so a checkpoint can
carry it without pickling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BINARY = "binary"
MULTICLASS = "multiclass"  # one-vs-rest member of a multi-class attribute


@dataclass(frozen=True)
class MultiClassAttribute:
    """A multi-class attribute encoded as ``len(members)`` one-vs-rest binary attributes.

    ``members[j]`` is the schema index of the binary attribute "value == labels[j]"; the
    multi-class decision is the label whose member scores highest.
    """

    name: str
    members: tuple[int, ...]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class AttributeSchema:
    """Names, groups and kinds of the M attributes of a dataset.

    Attributes:
        names: ``M`` attribute names, in column order of every target matrix.
        groups: ordered ``(group name, attribute indices)`` pairs. A partition of ``range(M)``
            unless ``overlapping=True``.
        kinds: per attribute, ``"binary"`` or ``"multiclass"`` (a one-vs-rest member).
        multiclass: the multi-class attributes, if any.
        class_names: for class-level datasets, the ``C`` class names.
        class_attributes: ``(C, M)`` float array, the class-attribute matrix (binary 0/1 or
            continuous strengths in [0, 1]).
        overlapping: groups may share attributes (needs the SPGD solver).
    """

    names: tuple[str, ...]
    groups: tuple[tuple[str, tuple[int, ...]], ...]
    kinds: tuple[str, ...] = ()
    multiclass: tuple[MultiClassAttribute, ...] = ()
    class_names: tuple[str, ...] | None = None
    class_attributes: np.ndarray | None = field(default=None, compare=False)
    overlapping: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(
            self, "groups", tuple((str(g), tuple(int(i) for i in idx)) for g, idx in self.groups)
        )
        if not self.kinds:
            object.__setattr__(self, "kinds", (BINARY,) * len(self.names))
        if self.class_attributes is not None:
            object.__setattr__(
                self, "class_attributes", np.asarray(self.class_attributes, dtype=np.float64)
            )
        self.validate()

    # ------------------------------------------------------------------ queries
    @property
    def num_attributes(self) -> int:
        return len(self.names)

    @property
    def group_names(self) -> list[str]:
        return [g for g, _ in self.groups]

    @property
    def group_indices(self) -> list[list[int]]:
        """Groups as the solver API wants them: a list of lists of attribute indices."""
        return [list(idx) for _, idx in self.groups]

    def group_of(self, attribute: int | str) -> str:
        """Name of the (first) group that contains ``attribute`` (index or name)."""
        m = self.index(attribute) if isinstance(attribute, str) else int(attribute)
        for g, idx in self.groups:
            if m in idx:
                return g
        raise KeyError(f"attribute {attribute!r} is in no group")

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(
                f"unknown attribute {name!r}; valid attributes: {', '.join(self.names)}"
            ) from None

    def binary_indices(self) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k == BINARY]

    def with_single_group(self, name: str = "all") -> AttributeSchema:
        """The same attributes in one group (the paper's M-CNN: multi-task, no groups)."""
        return AttributeSchema(
            names=self.names,
            groups=((name, tuple(range(self.num_attributes))),),
            kinds=self.kinds,
            multiclass=self.multiclass,
            class_names=self.class_names,
            class_attributes=self.class_attributes,
        )

    def subset(self, indices: Sequence[int]) -> AttributeSchema:
        """A schema restricted to ``indices`` (in that order); empty groups are dropped."""
        indices = [int(i) for i in indices]
        where = {old: new for new, old in enumerate(indices)}
        groups = tuple(
            (g, tuple(where[i] for i in idx if i in where))
            for g, idx in self.groups
            if any(i in where for i in idx)
        )
        multiclass = tuple(
            MultiClassAttribute(mc.name, tuple(where[i] for i in mc.members), mc.labels)
            for mc in self.multiclass
            if all(i in where for i in mc.members)
        )
        ca = None if self.class_attributes is None else self.class_attributes[:, indices]
        return AttributeSchema(
            names=tuple(self.names[i] for i in indices),
            groups=groups,
            kinds=tuple(self.kinds[i] for i in indices),
            multiclass=multiclass,
            class_names=self.class_names,
            class_attributes=ca,
            overlapping=self.overlapping,
        )

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        m = len(self.names)
        if m == 0:
            raise ValueError("an attribute schema needs at least one attribute")
        if len(set(self.names)) != m:
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ValueError(f"duplicate attribute names: {dup}")
        if len(self.kinds) != m:
            raise ValueError(f"kinds has {len(self.kinds)} entries for {m} attributes")
        bad = [k for k in self.kinds if k not in (BINARY, MULTICLASS)]
        if bad:
            raise ValueError(
                f"unknown attribute kind {bad[0]!r}; valid: {BINARY!r}, {MULTICLASS!r}"
            )
        seen: dict[int, str] = {}
        for g, idx in self.groups:
            if not idx:
                raise ValueError(f"group {g!r} is empty")
            for i in idx:
                if not 0 <= i < m:
                    raise ValueError(f"group {g!r} lists attribute index {i}, outside 0..{m - 1}")
                if i in seen and not self.overlapping:
                    raise ValueError(
                        f"attribute {self.names[i]!r} is in groups {seen[i]!r} and {g!r}; groups "
                        "must be disjoint (pass overlapping=True for overlapping groups)"
                    )
                seen[i] = g
        missing = [self.names[i] for i in range(m) if i not in seen]
        if missing:
            raise ValueError(f"attributes in no group: {missing}; every attribute needs a group")
        for mc in self.multiclass:
            if len(mc.members) != len(mc.labels) or len(mc.members) < 2:
                raise ValueError(f"multi-class attribute {mc.name!r}: members/labels mismatch")
        if self.class_attributes is not None:
            ca = self.class_attributes
            if ca.ndim != 2 or ca.shape[1] != m:
                raise ValueError(f"class_attributes has shape {ca.shape}, expected (C, {m})")
            if self.class_names is not None and len(self.class_names) != ca.shape[0]:
                raise ValueError(
                    f"{len(self.class_names)} class names for {ca.shape[0]} class-attribute rows"
                )

    # ---------------------------------------------------------------- JSON I/O
    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "groups": {g: list(idx) for g, idx in self.groups},
            "kinds": list(self.kinds),
            "multiclass": [
                {"name": mc.name, "members": list(mc.members), "labels": list(mc.labels)}
                for mc in self.multiclass
            ],
            "class_names": None if self.class_names is None else list(self.class_names),
            "class_attributes": None
            if self.class_attributes is None
            else self.class_attributes.tolist(),
            "overlapping": self.overlapping,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttributeSchema:
        ca = d.get("class_attributes")
        return cls(
            names=tuple(d["names"]),
            groups=tuple((g, tuple(idx)) for g, idx in d["groups"].items()),
            kinds=tuple(d.get("kinds") or ()),
            multiclass=tuple(
                MultiClassAttribute(mc["name"], tuple(mc["members"]), tuple(mc["labels"]))
                for mc in d.get("multiclass", [])
            ),
            class_names=None if d.get("class_names") is None else tuple(d["class_names"]),
            class_attributes=None if ca is None else np.asarray(ca, dtype=np.float64),
            overlapping=bool(d.get("overlapping", False)),
        )
