"""The real-size presets (awa2, awa, celeba, cub) end to end on generated replicas of their
published layouts (../shared/DATASET_FORMATS.md): every attribute of the real dataset (85, 85,
40, 312, with the real groups), a few hundred small images, then ``apcnn train -c PRESET`` with
only the size shrunk (image size, epochs, solver budget; a narrow trunk but for celeba,
:data:`NARROW`), ``apcnn evaluate`` on the checkpoint and, for AwA2, ``apcnn zeroshot`` on its
unseen classes.

The writers (``write_*_replica``) are also what ``benchmarks/bench_scale.py --presets`` measures
time and memory on. Images carry their labels: the colour of an image follows its first
attributes, so the methods have something to learn, though the tests only assert that every
step runs and gives finite figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "src" / "apcnn" / "configs"

# ------------------------------------------------------------------------------ the layouts
#: the 50 AwA classes in classes.txt order, and the 10 test classes of the 40/10 split
AWA_CLASSES = (
    "antelope grizzly+bear killer+whale beaver dalmatian persian+cat horse german+shepherd "
    "blue+whale siamese+cat skunk mole tiger hippopotamus leopard moose spider+monkey "
    "humpback+whale elephant gorilla ox fox sheep seal chimpanzee hamster squirrel rhinoceros "
    "rabbit bat giraffe wolf chihuahua rat weasel otter buffalo zebra giant+panda deer bobcat "
    "pig lion mouse polar+bear collie walrus raccoon cow dolphin"
).split()
AWA_TEST = (
    "chimpanzee giant+panda hippopotamus humpback+whale leopard persian+cat pig raccoon rat seal"
).split()
#: the 85 AwA predicates in predicates.txt order
AWA_PREDICATES = (
    "black white blue brown gray orange red yellow patches spots stripes furry hairless "
    "toughskin big small bulbous lean flippers hands hooves pads paws longleg longneck tail "
    "chewteeth meatteeth buckteeth strainteeth horns claws tusks smelly flys hops swims tunnels "
    "walks fast slow strong weak muscle bipedal quadrapedal active inactive nocturnal hibernate "
    "agility fish meat plankton vegetation insects forager grazer hunter scavenger skimmer "
    "stalker newworld oldworld arctic coastal desert bush plains forest fields jungle mountains "
    "ocean ground water tree cave fierce timid smart group solitary nestspot domestic"
).split()
#: the 40 CelebA attributes in list_attr_celeba.txt order
CELEBA_NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young"
).split()
_COLOURS = (
    "blue brown iridescent purple rufous grey yellow olive green pink orange black white red buff"
)
_PATTERNS = "solid spotted striped multi-colored"
#: CUB's 28 attribute groups in attributes.txt order with their values (312 in all)
CUB_GROUPS = (
    ("has_bill_shape", "curved_(up_or_down) dagger hooked needle hooked_seabird spatulate "
     "all-purpose cone specialized"),
    ("has_wing_color", _COLOURS),
    ("has_upperparts_color", _COLOURS),
    ("has_underparts_color", _COLOURS),
    ("has_breast_pattern", _PATTERNS),
    ("has_back_color", _COLOURS),
    ("has_tail_shape", "forked_tail rounded_tail notched_tail fan-shaped_tail pointed_tail "
     "squared_tail"),
    ("has_upper_tail_color", _COLOURS),
    ("has_head_pattern", "spotted malar crested masked unique_pattern eyebrow eyering plain "
     "eyeline striped capped"),
    ("has_breast_color", _COLOURS),
    ("has_throat_color", _COLOURS),
    ("has_eye_color", _COLOURS.replace("iridescent ", "")),
    ("has_bill_length", "about_the_same_as_head longer_than_head shorter_than_head"),
    ("has_forehead_color", _COLOURS),
    ("has_under_tail_color", _COLOURS),
    ("has_nape_color", _COLOURS),
    ("has_belly_color", _COLOURS),
    ("has_wing_shape", "rounded-wings pointed-wings broad-wings tapered-wings long-wings"),
    ("has_size", "large_(16_-_32_in) small_(5_-_9_in) very_large_(32_-_72_in) "
     "medium_(9_-_16_in) very_small_(3_-_5_in)"),
    ("has_shape", "upright-perching_water-like chicken-like-marsh long-legged-like duck-like "
     "owl-like gull-like hummingbird-like pigeon-like tree-clinging-like hawk-like "
     "sandpiper-like upland-ground-like swallow-like perching-like"),
    ("has_back_pattern", _PATTERNS),
    ("has_tail_pattern", _PATTERNS),
    ("has_belly_pattern", _PATTERNS),
    ("has_primary_color", _COLOURS),
    ("has_leg_color", _COLOURS),
    ("has_bill_color", _COLOURS),
    ("has_crown_color", _COLOURS),
    ("has_wing_pattern", _PATTERNS),
)  # fmt: skip
CUB_ATTRIBUTES = [f"{g}::{v}" for g, values in CUB_GROUPS for v in values.split()]


def write_image(path: Path, labels: np.ndarray, seed: int, size: int = 32) -> None:
    """A ``size`` x ``size`` JPEG whose colour follows the first three labels (±1) and whose
    brightness pattern follows the next four, plus noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lab = np.resize(np.asarray(labels, dtype=float), 7)
    img = np.empty((size, size, 3))
    img[:] = 128 + 70 * lab[:3]
    half = size // 2
    for q, (r, c) in enumerate(((0, 0), (0, half), (half, 0), (half, half))):
        img[r : r + half, c : c + half] += 35 * lab[3 + q]
    img += rng.normal(0, 12, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(path, quality=90)


def class_matrix(num_classes: int, num_attributes: int, seed: int) -> np.ndarray:
    """(C, M) in {0, 1}: each attribute positive for 20-60 % of the classes, none constant."""
    rng = np.random.default_rng(seed)
    rate = rng.uniform(0.2, 0.6, num_attributes)
    binary = (rng.random((num_classes, num_attributes)) < rate).astype(int)
    binary[0], binary[1] = 1, 0  # no attribute is constant over the classes
    return binary


def write_awa_replica(
    root: Path, images_per_class: int = 6, folder: str = "Animals_with_Attributes2", seed: int = 0
) -> Path:
    """AwA2 (or, with ``folder="Animals_with_Attributes"``, AwA1): 50 classes, 85 predicates,
    the 40/10 split, ``images_per_class`` JPEGs per class; returns the dataset folder."""
    base = root / folder
    base.mkdir(parents=True, exist_ok=True)
    (base / "classes.txt").write_text(
        "".join(f"{i:6d}\t{c}\n" for i, c in enumerate(AWA_CLASSES, 1))
    )
    (base / "predicates.txt").write_text(
        "".join(f"{i:6d}\t{p}\n" for i, p in enumerate(AWA_PREDICATES, 1))
    )
    # classes 0 and 1 (all / none) are test classes here: the training classes vary everywhere
    order = [AWA_CLASSES.index(c) for c in AWA_TEST] + [
        k for k, c in enumerate(AWA_CLASSES) if c not in AWA_TEST
    ]
    binary = class_matrix(len(AWA_CLASSES), len(AWA_PREDICATES), seed)[np.argsort(order)]
    (base / "predicate-matrix-binary.txt").write_text(
        "".join(" ".join(map(str, row)) + "\n" for row in binary)
    )
    rng = np.random.default_rng(seed + 1)
    cont = binary * 55.0 + rng.uniform(0, 40, binary.shape)
    (base / "predicate-matrix-continuous.txt").write_text(
        "".join(" ".join(f"{v:7.2f}" for v in row) + "\n" for row in cont)
    )
    train = [c for c in AWA_CLASSES if c not in AWA_TEST]
    (base / "trainclasses.txt").write_text("".join(f"{c}\n" for c in train))
    (base / "testclasses.txt").write_text("".join(f"{c}\n" for c in AWA_TEST))
    for k, cls in enumerate(AWA_CLASSES):
        for j in range(images_per_class):
            path = base / "JPEGImages" / cls / f"{cls}_{10001 + j}.jpg"
            write_image(path, 2 * binary[k] - 1, seed=1000 * k + j)
    return base


def write_celeba_replica(root: Path, n: int = 300, seed: int = 0) -> Path:
    """CelebA, official layout: ``n`` images (70 % train, 15 % val, 15 % test by the partition
    file), the 40 attributes at their own positive rates; returns the CelebA folder."""
    base = root / "CelebA"
    anno, evals, img = base / "Anno", base / "Eval", base / "Img" / "img_align_celeba"
    for d in (anno, evals, img):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rate = rng.uniform(0.1, 0.6, len(CELEBA_NAMES))
    labels = np.where(rng.random((n, len(CELEBA_NAMES))) < rate, 1, -1)
    lines = [str(n), " ".join(CELEBA_NAMES) + " "]
    lines += [f"{i:06d}.jpg" + "".join(f" {v:2d}" for v in labels[i - 1]) for i in range(1, n + 1)]
    (anno / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    n_train, n_val = int(0.7 * n), int(0.15 * n)
    part = [0] * n_train + [1] * n_val + [2] * (n - n_train - n_val)
    (evals / "list_eval_partition.txt").write_text(
        "".join(f"{i:06d}.jpg {p}\n" for i, p in enumerate(part, 1))
    )
    for i in range(1, n + 1):
        write_image(img / f"{i:06d}.jpg", labels[i - 1], seed=i)
    return base


def write_cub_replica(root: Path, n: int = 300, num_classes: int = 50, seed: int = 0) -> Path:
    """CUB-200-2011: ``n`` images of ``num_classes`` classes (alternately train and test), the
    312 attributes in 28 groups (attributes.txt next to CUB_200_2011/, as in the archive),
    image labels = the class's with 10 % flipped and 15 % "not visible"; returns CUB_200_2011/."""
    base = root / "CUB_200_2011"
    (base / "attributes").mkdir(parents=True, exist_ok=True)
    (root / "attributes.txt").write_text(
        "".join(f"{k} {a}\n" for k, a in enumerate(CUB_ATTRIBUTES, 1))
    )
    classes = [f"{k:03d}.Bird_{k}" for k in range(1, num_classes + 1)]
    (base / "classes.txt").write_text("".join(f"{k} {c}\n" for k, c in enumerate(classes, 1)))
    binary = class_matrix(num_classes, len(CUB_ATTRIBUTES), seed)
    rng = np.random.default_rng(seed + 1)
    names, label_lines = [], []
    for i in range(1, n + 1):
        k = (i - 1) % num_classes
        name = f"{classes[k]}/Bird_{k + 1}_{i:04d}_{796110 + i}.jpg"
        names.append(name)
        present = binary[k] ^ (rng.random(len(CUB_ATTRIBUTES)) < 0.1)
        certainty = np.where(rng.random(len(CUB_ATTRIBUTES)) < 0.15, 1, rng.integers(2, 5, 312))
        label_lines += [
            f"{i} {a} {p} {c} {rng.uniform(1, 9):.3f}\n"
            for a, (p, c) in enumerate(zip(present, certainty, strict=True), 1)
        ]
        write_image(base / "images" / name, 2 * present - 1, seed=i)
    (base / "images.txt").write_text("".join(f"{i} {nm}\n" for i, nm in enumerate(names, 1)))
    (base / "image_class_labels.txt").write_text(
        "".join(f"{i} {(i - 1) % num_classes + 1}\n" for i in range(1, n + 1))
    )
    (base / "train_test_split.txt").write_text("".join(f"{i} {i % 2}\n" for i in range(1, n + 1)))
    (base / "attributes" / "certainties.txt").write_text(
        "1 not visible\n2 guessing\n3 probably\n4 definitely\n"
    )
    (base / "attributes" / "image_attribute_labels.txt").write_text("".join(label_lines))
    cont = binary * 55.0 + rng.uniform(0, 40, binary.shape)
    (base / "attributes" / "class_attribute_labels_continuous.txt").write_text(
        "".join(" ".join(f"{v:.6f}" for v in row) + "\n" for row in cont)
    )
    return base


#: preset -> (writer, dataset name, number of attributes, number of groups)
REPLICAS = {
    "awa2": (write_awa_replica, "awa2", 85, 9),
    "awa": (lambda root, **kw: write_awa_replica(root, folder="Animals_with_Attributes", **kw),
            "awa", 85, 9),
    "celeba": (write_celeba_replica, "celeba", 40, 9),
    "cub": (write_cub_replica, "cub", 312, 28),
}  # fmt: skip

#: what makes a preset small enough for a test; everything else is the preset's own setting
SMALL = [
    "data.image_size=64",
    "data.num_workers=0",
    "train.epochs_single=1",
    "train.epochs_joint=1",
    "train.rounds=1",
    "mtl.iter_budget=30",
    "mtl.time_budget=15",
]

#: At the presets' width (lite0's 1280 features) the tails with their gradients, snapshots and
#: checkpoints take minutes and GBs on 2 cores (CUB's 312: 2.0 GB of tails, 13 GB peak;
#: `bench_scale.py --presets` measures each preset at full width): celeba runs at full width
#: here, the others the same preset on a narrow random trunk (368 features)
NARROW = {p: ["model.backbone=regnetx_002", "model.weights=none"] for p in ("awa2", "awa", "cub")}


# ------------------------------------------------------------------------------ the tests
def test_replicas_have_every_attribute_of_the_real_datasets(tmp_path):
    from apcnn.data import create_dataset

    assert len(AWA_CLASSES) == 50 and len(AWA_PREDICATES) == 85 and len(CUB_ATTRIBUTES) == 312
    for preset, (write, name, m, g) in REPLICAS.items():
        root = write(tmp_path / preset, **({"images_per_class": 1} if "awa" in name else {"n": 20}))
        ds = create_dataset(name, root=root, split="train")
        assert ds.schema.num_attributes == m and len(ds.schema.group_names) == g, preset
        assert set(np.unique(ds.targets[ds.mask])) == {-1.0, 1.0}, preset


@pytest.mark.parametrize("preset", sorted(REPLICAS))
def test_real_size_presets_use_the_factored_solver_with_budgets(preset):
    from apcnn.config import TrainConfig, load_config

    cfg = load_config(TrainConfig, CONFIGS / f"{preset}.yaml", [])
    assert cfg.data.name == REPLICAS[preset][1]
    assert cfg.model.tail == "fc" and cfg.mtl.features == "factored"
    assert cfg.mtl.time_budget and cfg.mtl.iter_budget and cfg.mtl.gap_tol
    assert not cfg.train.linear_probe  # its ridge CV would form the dense (N, M, D) features


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["awa2", "awa", "celeba", "cub"])
def test_preset_trains_on_its_replica(preset, tmp_path, monkeypatch, capsys):
    from apcnn.checkpoint import load_checkpoint
    from apcnn.cli import main

    monkeypatch.setenv("APCNN_CACHE", str(tmp_path / "cache"))
    write, _, m, _ = REPLICAS[preset]
    root = write(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["train", "-c", str(CONFIGS / f"{preset}.yaml"), "--out", str(out)]
    for item in [f"data.root={root}", *SMALL, *NARROW.get(preset, [])]:
        argv += ["--set", item]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())["methods"]
    log = (out / "train.log").read_text()
    assert "factored tail features" in log  # the preset's solver never forms (N, M, D)
    for method in ("S-CNN", "MG-CNN"):
        assert 0.0 <= metrics[method]["total"] <= 1.0, (preset, method)
        assert len(metrics[method]["per_attribute"]) == m
        tensors, _ = load_checkpoint(out / "checkpoints" / method)
        assert tuple(tensors["cnn.tails.weight"].shape[:1]) == (m,)
    capsys.readouterr()
    ckpt = str(out / "checkpoints" / "MG-CNN")
    assert main(["evaluate", "--checkpoint", ckpt, "--json", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())  # the run's test split again
    assert evaluated["accuracy"]["total"] == pytest.approx(metrics["MG-CNN"]["total"], abs=1e-6)
    if preset == "awa2":  # the unseen test classes through DAP
        assert main(["zeroshot", "--checkpoint", ckpt, "--json", str(tmp_path / "zs.json")]) == 0
        zs = json.loads((tmp_path / "zs.json").read_text())
        assert zs["zero_shot"] is True and 0.0 <= zs["mean_class_accuracy"] <= 1.0
