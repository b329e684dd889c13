"""open_rgb: every Pillow mode becomes RGB correctly; bad files raise named errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from apcnn.data import CorruptImageError, MissingFileError
from apcnn.data.images import ResizedImageCache, check_image, open_rgb, to_rgb


def px(img: Image.Image, xy=(0, 0)) -> tuple[int, ...]:
    assert img.mode == "RGB"
    return tuple(int(v) for v in img.getpixel(xy))


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 77, (77, 77, 77)),
        ("1", 1, (255, 255, 255)),
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),  # fully transparent -> white
        ("RGBA", (255, 0, 0, 255), (255, 0, 0)),
        ("RGBA", (0, 0, 255, 128), (127, 127, 255)),  # half alpha on white
        ("LA", (0, 0), (255, 255, 255)),
        ("LA", (0, 255), (0, 0, 0)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("YCbCr", (255, 128, 128), (255, 255, 255)),
    ],
)
def test_modes_in_memory(mode, value, expected):
    got = px(to_rgb(Image.new(mode, (3, 2), value)))
    assert all(abs(g - e) <= 1 for g, e in zip(got, expected, strict=True)), got


def test_palette_with_and_without_transparency():
    p = Image.new("P", (2, 2), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert px(to_rgb(p)) == (10, 200, 30)
    p.info["transparency"] = 1
    assert px(to_rgb(p)) == (255, 255, 255)


def test_16_bit_and_int_scaled():
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    img16 = Image.fromarray(arr)
    assert img16.mode.startswith("I;16")
    out = to_rgb(img16)
    assert [px(out, (x, 0))[0] for x in range(3)] == [0, 128, 255]
    img32 = Image.fromarray(arr.astype(np.int32))
    assert img32.mode == "I"
    assert [px(to_rgb(img32), (x, 0))[0] for x in range(3)] == [0, 128, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert [px(to_rgb(f), (x, 0))[0] for x in range(3)] == [0, 128, 255]


@pytest.mark.parametrize(
    ("mode", "ext"),
    [
        ("L", "png"),
        ("LA", "png"),
        ("RGBA", "png"),
        ("P", "gif"),
        ("CMYK", "jpg"),
        ("I;16", "png"),
        ("I", "tif"),
        ("RGB", "bmp"),
        ("L", "jpg"),
    ],
)
def test_files_of_every_mode(tmp_path, mode, ext):
    if mode == "I;16":
        img = Image.fromarray(np.full((4, 5), 65535, dtype=np.uint16))
    elif mode == "I":
        img = Image.fromarray(np.full((4, 5), 65535, dtype=np.int32))
    elif mode == "P":
        img = Image.new("RGB", (5, 4), (255, 255, 255)).convert("P")
    else:
        img = Image.new(
            mode,
            (5, 4),
            {
                "L": 255,
                "LA": (255, 255),
                "RGBA": (255, 255, 255, 255),
                "CMYK": (0, 0, 0, 0),
                "RGB": (255, 255, 255),
            }[mode],
        )
    path = tmp_path / f"img.{ext}"
    img.save(path)
    out = open_rgb(path)
    assert out.mode == "RGB" and out.size == (5, 4)
    assert min(px(out)) >= 250  # white stays white in every mode


def test_missing_and_corrupt_files(tmp_path, trees):
    with pytest.raises(MissingFileError, match=r"nothere\.jpg: image file not found"):
        open_rgb(tmp_path / "nothere.jpg")
    good = trees.write_jpeg(tmp_path / "good.jpg", size=(40, 30))
    assert open_rgb(good).size == (40, 30) and check_image(good) is None
    bad = trees.corrupt_file(trees.write_jpeg(tmp_path / "bad.jpg", size=(64, 64)))
    with pytest.raises(CorruptImageError, match=r"bad\.jpg: cannot decode image"):
        open_rgb(bad)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(CorruptImageError, match=r"junk\.png"):
        open_rgb(junk)
    assert "junk.png" in check_image(junk)


def test_resized_cache(tmp_path, trees):
    src = trees.write_jpeg(tmp_path / "a.jpg", size=(40, 30))
    cache = ResizedImageCache(tmp_path / "cache", 16)
    first = cache.load(src)
    assert first.size == (16, 16) and len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    again = cache.load(src)
    assert np.array_equal(np.asarray(first), np.asarray(again))
