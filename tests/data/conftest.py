"""Fixture-tree writers: tiny copies of each dataset's published layout in tmp_path.

Each ``make_*_tree`` fixture returns a function ``(root, **variations) -> Path`` that writes the
files line by line in the published format (DATASET_FORMATS.md) and returns the dataset root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
REAL_CLOTHING = REPO.parent / "shared" / "data" / "ClothingAttributeDataset"


def write_jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (24, 32)) -> Path:
    """A small random RGB JPEG (``size`` = width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").save(path, quality=90)
    return path


def corrupt_file(path: Path) -> Path:
    """Truncate a JPEG to half its bytes: the header still parses, the scan data is cut."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ------------------------------------------------------------------- clothing
CLOTHING_BINARY = (
    "black",
    "blue",
    "brown",
    "collar",
    "cyan",
    "gender",
    "gray",
    "green",
    "many_colors",
    "necktie",
    "pattern_floral",
    "pattern_graphics",
    "pattern_plaid",
    "pattern_solid",
    "pattern_spot",
    "pattern_stripe",
    "placket",
    "purple",
    "red",
    "scarf",
    "skin_exposure",
    "white",
    "yellow",
)
CLOTHING_MULTI = {"sleevelength": 3, "neckline": 3, "category": 7}


def clothing_values(n: int) -> dict[str, np.ndarray]:
    """Deterministic labels: binary attr k, image i -> 1 + (i + k) % 2, NaN at (i + k) % 5 == 4."""
    vals = {}
    for k, a in enumerate(CLOTHING_BINARY):
        v = np.array([1.0 + (i + k) % 2 for i in range(n)])
        v[[(i + k) % 5 == 4 for i in range(n)]] = np.nan
        vals[a] = v
    for a, c in CLOTHING_MULTI.items():
        v = np.array([1.0 + i % c for i in range(n)])
        v[n - 1] = np.nan
        vals[a] = v
    return vals


def write_clothing(root: Path, n: int = 6, values: dict[str, np.ndarray] | None = None) -> Path:
    import scipy.io

    base = root / "ClothingAttributeDataset"
    (base / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        write_jpeg(base / "images" / f"{i:06d}.jpg", seed=i, size=(20 + i, 30))
    vals = clothing_values(n)
    vals.update(values or {})
    for a, v in vals.items():
        gt = np.asarray(v, dtype=float).reshape(-1, 1)
        scipy.io.savemat(str(base / "labels" / f"{a}_GT.mat"), {"GT": gt})
    (base / "README").write_text("The Clothing Attribute Dataset (fixture)\n")
    return base


@pytest.fixture
def make_clothing_tree():
    return write_clothing


# ------------------------------------------------------------------------ AwA
AWA_CLASSES = ("antelope", "bat", "blue+whale", "bobcat", "collie")


def write_awa(
    root: Path,
    classes: tuple[str, ...] = AWA_CLASSES,
    num_predicates: int = 85,
    images_per_class: int = 2,
    trainclasses: tuple[str, ...] = ("antelope", "bat", "bobcat"),
    testclasses: tuple[str, ...] = ("blue+whale", "collie"),
    binary_rows: int | None = None,
    folder: str = "Animals_with_Attributes2",
    continuous_minus_one: bool = False,
) -> Path:
    base = root / folder
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "classes.txt", "w") as f:
        for i, c in enumerate(classes, 1):
            trail = " " if c == "blue+whale" else ""  # one public copy has a trailing space
            f.write(f"{i:6d}\t{c}{trail}\n")
    preds = ["black", "white", "blue"] + [f"pred{k}" for k in range(4, num_predicates)]
    preds.append("domestic")
    preds = preds[:num_predicates]
    with open(base / "predicates.txt", "w") as f:
        for i, p in enumerate(preds, 1):
            f.write(f"{i:6d}\t{p}\n")
    c = len(classes)
    binary = np.array([[(r + k) % 3 == 0 for k in range(num_predicates)] for r in range(c)], int)
    rows = c if binary_rows is None else binary_rows
    with open(base / "predicate-matrix-binary.txt", "w") as f:
        for r in range(rows):
            f.write(" ".join(str(v) for v in binary[r % c]) + "\n")
    cont = binary * 60.0 + np.arange(num_predicates)[None, :] % 7 * 1.25
    if continuous_minus_one:
        cont[0, 1] = -1.0
    with open(base / "predicate-matrix-continuous.txt", "w") as f:
        for r in range(c):
            f.write(" ".join(f"{v:7.2f}" for v in cont[r]) + "\n")  # variable space padding
    (base / "trainclasses.txt").write_text("".join(f"{n}\n" for n in trainclasses))
    (base / "testclasses.txt").write_text("".join(f"{n}\n" for n in testclasses))
    for k, cls in enumerate(classes):
        for j in range(images_per_class):
            write_jpeg(base / "JPEGImages" / cls / f"{cls}_{10001 + j}.jpg", seed=100 * k + j)
    (base / "README-attributes.txt").write_text("fixture\n")
    return base


@pytest.fixture
def make_awa_tree():
    return write_awa


# --------------------------------------------------------------------- CelebA
CELEBA_NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()


def celeba_label(i: int, k: int) -> int:
    return 1 if (i * 7 + k) % 3 == 0 else -1


def write_celeba(
    root: Path,
    n: int = 6,
    layout: str = "official",
    count: int | None = None,
    partition: tuple[int, ...] | None = None,
) -> Path:
    if layout == "official":
        base = root / "CelebA"
        attr, part, img = base / "Anno", base / "Eval", base / "Img" / "img_align_celeba"
    else:  # torchvision flattens everything into root/celeba
        base = root / "celeba"
        attr, part, img = base, base, base / "img_align_celeba"
    for d in (attr, part, img):
        d.mkdir(parents=True, exist_ok=True)
    lines = [f"{n if count is None else count}", " ".join(CELEBA_NAMES) + " "]
    for i in range(1, n + 1):
        lines.append(f"{i:06d}.jpg" + "".join(f" {celeba_label(i, k):2d}" for k in range(40)))
    (attr / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    partition = partition or tuple([0] * (n - 2) + [1, 2])
    (part / "list_eval_partition.txt").write_text(
        "".join(f"{i:06d}.jpg {partition[i - 1]}\n" for i in range(1, n + 1))
    )
    for i in range(1, n + 1):
        write_jpeg(img / f"{i:06d}.jpg", seed=i, size=(18, 22))
    return base


@pytest.fixture
def make_celeba_tree():
    return write_celeba


# ------------------------------------------------------------------------ CUB
CUB_ATTRIBUTES = (
    "has_bill_shape::curved_(up_or_down)",
    "has_bill_shape::dagger",
    "has_wing_color::blue",
    "has_wing_color::brown",
    "has_wing_color::grey",
    "has_size::large_(16_-_32_in)",
    "has_size::small_(5_-_9_in)",
)
CUB_CLASSES = ("001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross")


def cub_label(img: int, att: int) -> tuple[int, int]:
    """(is_present, certainty) for 1-based ids; certainty 1 ('not visible') on a pattern."""
    present = (img + att) % 2
    certainty = 1 if (img * att) % 5 == 0 else 2 + (img + att) % 3
    return present, certainty


def write_cub(
    root: Path,
    n: int = 6,
    attributes_location: str = "outer",
    extra_column: bool = True,
    class_of: dict[int, int] | None = None,
) -> Path:
    base = root / "CUB_200_2011"
    (base / "attributes").mkdir(parents=True, exist_ok=True)
    attr_lines = "".join(f"{k} {a}\n" for k, a in enumerate(CUB_ATTRIBUTES, 1))
    if attributes_location == "outer":
        (root / "attributes.txt").write_text(attr_lines)
    else:
        (base / "attributes" / "attributes.txt").write_text(attr_lines)
    (base / "classes.txt").write_text("".join(f"{k} {c}\n" for k, c in enumerate(CUB_CLASSES, 1)))
    names = []
    for i in range(1, n + 1):
        cls = CUB_CLASSES[(i - 1) % len(CUB_CLASSES)]
        name = f"{cls}/{cls.split('.')[1]}_{i:04d}_{796110 + i}.jpg"
        names.append(name)
        write_jpeg(base / "images" / name, seed=i, size=(26, 20))
    (base / "images.txt").write_text("".join(f"{i} {nm}\n" for i, nm in enumerate(names, 1)))
    class_of = class_of or {}
    (base / "image_class_labels.txt").write_text(
        "".join(f"{i} {class_of.get(i, (i - 1) % len(CUB_CLASSES) + 1)}\n" for i in range(1, n + 1))
    )
    (base / "train_test_split.txt").write_text(
        "".join(f"{i} {1 if i % 2 else 0}\n" for i in range(1, n + 1))
    )
    (base / "bounding_boxes.txt").write_text(
        "".join(f"{i} 1.0 2.0 10.0 12.0\n" for i in range(1, n + 1))
    )
    (base / "attributes" / "certainties.txt").write_text(
        "1 not visible\n2 guessing\n3 probably\n4 definitely\n"
    )
    lines = []
    for i in range(1, n + 1):
        for a in range(1, len(CUB_ATTRIBUTES) + 1):
            p, c = cub_label(i, a)
            extra = " 0" if extra_column and i == 2 and a == 3 else ""
            lines.append(f"{i} {a} {p} {c} {1.5 * a:.3f}{extra}\n")
    (base / "attributes" / "image_attribute_labels.txt").write_text("".join(lines))
    cont = np.array(
        [
            [(10.0 * k + 3.0 * a) % 100 for a in range(len(CUB_ATTRIBUTES))]
            for k in range(len(CUB_CLASSES))
        ]
    )
    (base / "attributes" / "class_attribute_labels_continuous.txt").write_text(
        "".join(" ".join(f"{v:.6f}" for v in row) + "\n" for row in cont)
    )
    return base


@pytest.fixture
def make_cub_tree():
    return write_cub


# --------------------------------------------------------------------- folder
def write_folder(root: Path, rows: list[str] | None = None, groups: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(("a.jpg", "b.jpg", "sub/c.png", "d.jpg")):
        path = root / name
        if name.endswith(".png"):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGBA", (10, 12), (255, 0, 0, 128)).save(path)
        else:
            write_jpeg(path, seed=k)
    rows = rows or [
        "file,striped,red,round,class,split",
        "a.jpg,1,0,,cat,train",
        "b.jpg,-1,1,1,dog,train",
        "sub/c.png,0,,-1,cat,test",
        "d.jpg,1,1,0,,val",
    ]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    if groups is not None:
        (root / "groups.yaml").write_text(groups)
    return root


@pytest.fixture
def make_folder_tree():
    return write_folder


@pytest.fixture
def real_clothing() -> Path:
    if not (REAL_CLOTHING / "labels").is_dir():
        pytest.skip(f"real Clothing Attribute Dataset not found at {REAL_CLOTHING}")
    return REAL_CLOTHING


@pytest.fixture
def trees():
    """All writers and constants of this module, for tests (robust to pytest's import mode)."""
    import types

    return types.SimpleNamespace(
        **{
            k: v
            for k, v in globals().items()
            if k.isupper() or k.startswith(("write_", "corrupt_", "clothing_", "celeba_", "cub_"))
        }
    )
