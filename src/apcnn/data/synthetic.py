"""The embedded default dataset: ``create_dataset("synthetic")``. No files, fully deterministic.

Each image shows one object on a cluttered, noisy background. Its 13 binary attributes come in
4 groups (the structure the paper's group-sparse model exploits):

==========  ===========================================
colour      red, green, blue, yellow  (hue of the object, jittered)
shape       circle, square, triangle, cross  (rotated up to +-20 degrees)
size        small, large  (radius ~0.15 S vs ~0.30 S for image side S)
texture     solid, striped, dotted  (darker stripes/dots of the object's hue)
==========  ===========================================

Object *classes* are attribute combinations: 16 classes, one per (colour, shape) pair, each with
a fixed size and texture (:data:`CLASS_TABLE`); ``schema.class_attributes`` is the ``(16, 13)``
0/1 class-attribute matrix and ``schema.class_names`` names like ``"red_circle"``. Four classes,
one per colour and one per shape (:data:`UNSEEN_CLASSES`), are *unseen*: every attribute value
of an unseen class occurs in seen classes, so zero-shot prediction (DAP) is possible.

Image ``i`` has class ``i % 16`` and is drawn from ``np.random.default_rng([seed, i])``: it is
the same for any ``num_images``, and images are rendered lazily in ``__getitem__``. Clutter:
a low-frequency colour-noise background of low saturation, 3-6 random muted lines/outlines,
0-2 tiny saturated dots, uniform pixel noise (std 8), brightness jitter.

Labels: ``+1/-1`` from the class row; each label is flipped with probability ``label_noise``
and masked (missing) with probability ``missing_rate``, from row ``i`` of one ``(N, 26)``
uniform draw of ``default_rng([seed, 1])`` (so image ``i``'s labels do not depend on ``N``).

Splits: ``"unseen"`` = images of unseen classes; the seen-class images are permuted with
``default_rng(seed)`` and cut into ``"train"`` / ``"val"`` / ``"test"`` by ``val_fraction`` and
``test_fraction`` (disjoint); ``"all"`` = everything.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from apcnn.data.base import AttributeDataset
from apcnn.data.errors import DatasetOptionError
from apcnn.data.registry import register_dataset
from apcnn.data.schema import AttributeSchema

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
TEXTURES = ("solid", "striped", "dotted")
GROUPS = (("colour", COLOURS), ("shape", SHAPES), ("size", SIZES), ("texture", TEXTURES))
ATTRIBUTES = tuple(a for _, vals in GROUPS for a in vals)
_RGB = {
    "red": (205, 35, 35),
    "green": (40, 165, 50),
    "blue": (40, 70, 215),
    "yellow": (225, 205, 35),
}

#: (colour, shape, size, texture) per class; 16 classes, every (colour, shape) pair once.
CLASS_TABLE: tuple[tuple[str, str, str, str], ...] = tuple(
    (COLOURS[c], SHAPES[s], SIZES[(c + s) % 2], TEXTURES[(c + 2 * s) % 3])
    for c in range(4)
    for s in range(4)
)
CLASS_NAMES = tuple(f"{c}_{s}" for c, s, _, _ in CLASS_TABLE)
#: class ids held out for zero-shot: red_square, green_cross, blue_triangle, yellow_circle (one
#: per colour and per shape, two small and two large, textures dotted/solid/solid/striped).
UNSEEN_CLASSES: tuple[int, ...] = tuple(
    CLASS_NAMES.index(n) for n in ("red_square", "green_cross", "blue_triangle", "yellow_circle")
)
SEEN_CLASSES: tuple[int, ...] = tuple(k for k in range(len(CLASS_TABLE)) if k not in UNSEEN_CLASSES)


def class_attribute_matrix() -> np.ndarray:
    """``(16, 13)`` float 0/1 matrix: row k has a 1 at each attribute of class k."""
    out = np.zeros((len(CLASS_TABLE), len(ATTRIBUTES)), dtype=np.float64)
    for k, vals in enumerate(CLASS_TABLE):
        for v in vals:
            out[k, ATTRIBUTES.index(v)] = 1.0
    return out


def synthetic_schema() -> AttributeSchema:
    """The schema of :class:`SyntheticAttributes` (13 attributes, 4 groups, 16 classes)."""
    groups = tuple((g, tuple(ATTRIBUTES.index(v) for v in vals)) for g, vals in GROUPS)
    return AttributeSchema(
        names=ATTRIBUTES,
        groups=groups,
        class_names=CLASS_NAMES,
        class_attributes=class_attribute_matrix(),
    )


# ------------------------------------------------------------------ rendering
def _shape_polygon(shape: str, cx: float, cy: float, r: float, theta: float) -> list[tuple]:
    if shape == "square":
        h = 0.82 * r
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "triangle":
        R = 1.15 * r
        pts = [
            (R * math.cos(a), R * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
    else:  # cross
        w, L = 0.36 * r, r
        pts = [
            (-w, -L),
            (w, -L),
            (w, -w),
            (L, -w),
            (L, w),
            (w, w),
            (w, L),
            (-w, L),
            (-w, w),
            (-L, w),
            (-L, -w),
            (-w, -w),
        ]
    c, s = math.cos(theta), math.sin(theta)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def render_image(index: int, class_id: int, image_size: int = 96, seed: int = 0) -> np.ndarray:
    """Image ``index`` of class ``class_id``: ``(S, S, 3)`` uint8, a pure function of its args."""
    S = int(image_size)
    rng = np.random.default_rng([int(seed), int(index)])
    colour, shape, size, texture = CLASS_TABLE[int(class_id)]
    # background: muted base colour + low-frequency colour noise
    grey = rng.uniform(70, 185)
    base = grey + rng.normal(0, 12, size=3)
    low = rng.normal(0, 16, size=(4, 4, 3)).astype(np.float32)
    low_img = Image.fromarray(np.clip(low + 128, 0, 255).astype(np.uint8), "RGB")
    bg = np.asarray(low_img.resize((S, S), Image.Resampling.BILINEAR), dtype=np.float32)
    bg = bg - 128 + base.astype(np.float32)
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 7))):  # muted clutter
        g = rng.uniform(40, 220)
        col = tuple(int(min(255.0, max(0.0, g + d))) for d in rng.normal(0, 10, size=3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(-0.1 * S, 1.1 * S, size=4))
        width = int(rng.integers(1, max(2, S // 32) + 1))
        kind = rng.integers(3)
        if kind == 0:
            draw.line([(x0, y0), (x1, y1)], fill=col, width=width)
        elif kind == 1:
            draw.rectangle(
                [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=col, width=width
            )
        else:
            draw.ellipse(
                [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=col, width=width
            )
    for _ in range(int(rng.integers(0, 3))):  # tiny saturated distractors
        col = _RGB[COLOURS[int(rng.integers(4))]]
        x, y, rr = rng.uniform(0, S), rng.uniform(0, S), S * rng.uniform(0.02, 0.035)
        draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=col)
    img = np.array(canvas, dtype=np.float32)  # writable copy

    # object mask, drawn at 2x and box-filtered for smooth edges
    r = S * (rng.uniform(0.12, 0.17) if size == "small" else rng.uniform(0.26, 0.32))
    ext = 1.15 * r
    cx, cy = rng.uniform(ext, S - ext), rng.uniform(ext, S - ext)
    theta = math.radians(rng.uniform(-20, 20))
    big = Image.new("L", (2 * S, 2 * S), 0)
    md = ImageDraw.Draw(big)
    if shape == "circle":
        md.ellipse([2 * (cx - r), 2 * (cy - r), 2 * (cx + r), 2 * (cy + r)], fill=255)
    else:
        md.polygon([(2 * x, 2 * y) for x, y in _shape_polygon(shape, cx, cy, r, theta)], fill=255)
    mask = np.asarray(big.resize((S, S), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255

    # object colour and texture, computed inside the object's bounding box only
    rgb = np.clip(np.array(_RGB[colour], dtype=np.float32) + rng.normal(0, 14, size=3), 0, 255)
    rgb = rgb.astype(np.float32)
    dark = rgb * np.float32(rng.uniform(0.3, 0.45))
    x0, x1 = max(0, int(cx - ext) - 1), min(S, int(cx + ext) + 2)
    y0, y1 = max(0, int(cy - ext) - 1), min(S, int(cy + ext) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    if texture == "striped":
        period = S * rng.uniform(0.085, 0.11)
        phi = rng.uniform(0, math.pi)
        t = ((xx * math.cos(phi) + yy * math.sin(phi)) / period) % 1.0
        pat = (t < 0.5).astype(np.float32)[..., None]
    elif texture == "dotted":
        period = S * rng.uniform(0.09, 0.12)
        ox, oy = rng.uniform(0, period, size=2)
        dx = (xx + ox) % period - period / 2
        dy = (yy + oy) % period - period / 2
        pat = (dx * dx + dy * dy < (0.3 * period) ** 2).astype(np.float32)[..., None]
    else:
        pat = np.zeros(xx.shape + (1,), dtype=np.float32)
    shade = 1.0 + np.float32(0.12 / S) * (xx - np.float32(cx))[..., None]  # lighting gradient
    obj = (rgb * (1 - pat) + dark * pat) * shade
    m = mask[y0:y1, x0:x1]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - m) + obj * m
    img *= np.float32(rng.uniform(0.85, 1.15))
    # pixel noise: uniform on [-13.9, 13.9] (std 8), from raw bytes (4x faster than normals)
    noise = np.frombuffer(rng.bytes(img.size), dtype=np.uint8).reshape(img.shape)
    img += (noise.astype(np.float32) - np.float32(127.5)) * np.float32(13.9 / 127.5)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# -------------------------------------------------------------------- dataset
@register_dataset("synthetic")
class SyntheticAttributes(AttributeDataset):
    """Procedural attribute images (see the module docstring); ``root`` is not used."""

    SPLITS = ("all", "train", "val", "test", "unseen")

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        split: str = "all",
        transform=None,
        num_images: int = 1200,
        image_size: int = 96,
        seed: int = 0,
        label_noise: float = 0.0,
        missing_rate: float = 0.05,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        check_images: bool = False,
        skip_bad_images: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._check_split(split)
        n = _int_option("num_images", num_images, 1)
        size = _int_option("image_size", image_size, 16)
        seed = _int_option("seed", seed, 0)
        for name, v, hi in (
            ("label_noise", label_noise, 0.5),
            ("missing_rate", missing_rate, 1.0),
            ("val_fraction", val_fraction, 1.0),
            ("test_fraction", test_fraction, 1.0),
        ):
            if not isinstance(v, (int, float)) or not 0.0 <= float(v) < hi:
                raise DatasetOptionError(f"synthetic: {name} must be in [0, {hi}), got {v!r}")
        if val_fraction + test_fraction >= 1.0:
            raise DatasetOptionError(
                "synthetic: val_fraction + test_fraction must be < 1 (training needs images)"
            )
        schema = synthetic_schema()
        ca = schema.class_attributes
        assert ca is not None
        cids = np.arange(n, dtype=np.int64) % len(CLASS_TABLE)
        targets = (2.0 * ca[cids] - 1.0).astype(np.float32)
        mask = np.ones_like(targets, dtype=bool)
        m = targets.shape[1]
        if label_noise > 0 or missing_rate > 0:
            # row i of a row-major (n, 2M) draw is the same for every n >= i + 1
            u = np.random.default_rng([seed, 1]).random((n, 2 * m))
            targets[u[:, :m] < label_noise] *= -1.0
            mask = u[:, m:] >= missing_rate
        parts = synthetic_split_indices(n, seed, val_fraction, test_fraction)
        keep = parts[split]
        self.seed = seed
        super().__init__(
            schema=schema,
            targets=targets[keep],
            mask=mask[keep],
            sample_ids=[f"synthetic/{seed}/{i:06d}" for i in keep],
            sources=[int(i) for i in keep],
            class_ids=cids[keep],
            transform=transform,
            image_size=size,
            root=None,
            split=split,
            options={
                "num_images": n,
                "image_size": size,
                "seed": seed,
                "label_noise": float(label_noise),
                "missing_rate": float(missing_rate),
                "val_fraction": float(val_fraction),
                "test_fraction": float(test_fraction),
            },
            check_images=check_images,
            skip_bad_images=skip_bad_images,
            cache_dir=cache_dir,
            split_sizes={k: len(v) for k, v in parts.items()},
        )

    def _load_source(self, src: Any) -> Image.Image:
        i = int(src)
        arr = render_image(i, i % len(CLASS_TABLE), self.image_size, self.seed)
        return Image.fromarray(arr, "RGB")

    def to_array(self) -> np.ndarray:
        """All images as one ``(N, S, S, 3)`` uint8 array (renders every image, no transform)."""
        out = np.empty((len(self), self.image_size, self.image_size, 3), dtype=np.uint8)
        for k in range(len(self)):
            out[k] = np.asarray(self.load_image(k))
        return out


def synthetic_split_indices(
    n: int, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> dict[str, np.ndarray]:
    """Sorted image indices of each split for ``n`` images (see the module docstring)."""
    cids = np.arange(n) % len(CLASS_TABLE)
    unseen = np.flatnonzero(np.isin(cids, UNSEEN_CLASSES))
    seen = np.flatnonzero(~np.isin(cids, UNSEEN_CLASSES))
    perm = seen[np.random.default_rng(seed).permutation(len(seen))]
    n_val = int(round(val_fraction * len(seen)))
    n_test = int(round(test_fraction * len(seen)))
    return {
        "all": np.arange(n, dtype=np.int64),
        "train": np.sort(perm[n_val + n_test :]).astype(np.int64),
        "val": np.sort(perm[:n_val]).astype(np.int64),
        "test": np.sort(perm[n_val : n_val + n_test]).astype(np.int64),
        "unseen": unseen.astype(np.int64),
    }


def _int_option(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo:
        raise DatasetOptionError(f"synthetic: {name} must be an int >= {lo}, got {v!r}")
    return int(v)


__all__ = [
    "ATTRIBUTES",
    "CLASS_NAMES",
    "CLASS_TABLE",
    "SEEN_CLASSES",
    "SyntheticAttributes",
    "UNSEEN_CLASSES",
    "class_attribute_matrix",
    "render_image",
    "synthetic_schema",
    "synthetic_split_indices",
]
