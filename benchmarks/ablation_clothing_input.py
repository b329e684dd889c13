"""Input shape and pooling window against the old square input, on the real Clothing data.

S-extract (frozen EfficientNet-Lite0 features + one squared-hinge SVM per attribute, ridge weight
per attribute by 3-fold inner CV: ``apcnn.selection.per_attribute_ridge``) on the Table III folds
(seed-0 permutation, test fold k, the other folds for training), for input variants:

- the old recipe: 224 x 224, resize to 256 x 256 and centre crop (crop_fraction 0.875), global
  average pooling;
- the whole photo (crop_fraction 1.0) at 224 x 224, 224 x 336 and 320 x 480 (the photos are 2:3
  portraits), global pooling or the centre window (0.15, 0.85, 0.25, 0.75) of the final
  feature map (``model.pool_region``).

- 224 x 336, centre window, on an *adapted* trunk (``apcnn.adapt``: its last blocks fine-tuned
  on the test fold's training part), with the same SVMs on top: the gain of trunk adaptation
  alone; that of ``apcnn reproduce clothing``'s CNN methods (``CLOTHING_SETTINGS``: last 5
  blocks, 8 epochs) and a deeper one (last 8 blocks, 6 epochs, about the same time).

Accuracy is reported per group and in total, and as the gain over the old recipe in the same
run. Needs the dataset: ``python benchmarks/ablation_clothing_input.py --root
../shared/data/ClothingAttributeDataset [--quick]`` (``--quick``: test fold 0 only, the old
recipe, 224 x 336 with the window, and the same on the two adapted trunks: 607 s measured on 2
cores; otherwise all 5 folds and every variant: about 45 minutes before the second adaptation
was added, not timed since; on fold 0 that adaptation took 232 s with its maps).
Writes the "clothing-input" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from benchmarks._report import write_section  # noqa: E402

from apcnn.reproduce import CLOTHING_SETTINGS  # noqa: E402

CENTRE = (0.15, 0.85, 0.25, 0.75)
# (label, width, height, crop_fraction, pooling windows)
VARIANTS = [
    ("224x224 crop 0.875", 224, 224, 0.875, [None]),
    ("224x224 whole", 224, 224, 1.0, [None]),
    ("224x336 whole", 224, 336, 1.0, [None, CENTRE]),
    ("320x480 whole", 320, 480, 1.0, [None, CENTRE]),
]
QUICK = [VARIANTS[0], ("224x336 whole", 224, 336, 1.0, [CENTRE])]
# (blocks, epochs) of the adaptations compared: the recipe's, then a deeper one
ADAPTATIONS = [
    (CLOTHING_SETTINGS["train.adapt_blocks"], CLOTHING_SETTINGS["train.adapt_epochs"]),
    (8, 6),
]
ADAPT_LR = CLOTHING_SETTINGS["train.adapt_lr"]


class WindowedFeatures(torch.nn.Module):
    """images -> (B, R, D): the backbone's final feature map averaged over R windows."""

    def __init__(self, backbone: torch.nn.Module, windows: list) -> None:
        super().__init__()
        self.backbone, self.windows = backbone, windows

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from apcnn.models.pooling import region_mean

        fmap = self.backbone.forward_features(images)
        return torch.stack([region_mean(fmap, w) for w in self.windows], 1)


def features(root: str, width: int, height: int, crop: float, windows: list) -> np.ndarray:
    from apcnn.data import create_dataset
    from apcnn.data.transforms import build_transform
    from apcnn.features import extract_features
    from apcnn.models.backbone import create_backbone

    backbone, info = create_backbone()
    transform = build_transform(
        width, info.mean, info.std, train=False, crop_fraction=crop, height=height
    )
    ds = create_dataset("clothing", root=root, transform=transform)
    fn = WindowedFeatures(backbone, windows)
    out = extract_features(
        fn, ds, batch_size=32, num_workers=2, progress=True, desc=f"{width}x{height}"
    )
    return out.numpy()


def fold_accuracy(x: np.ndarray, y: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """(M,) test accuracy per attribute of S-extract's SVMs on test fold ``k``."""
    from apcnn.data.splits import kfold_indices
    from apcnn.selection import feature_scale, per_attribute_ridge, scores

    x = x / feature_scale(x)
    train_rows, test_rows = kfold_indices(len(x), 5, 0)[k]
    w, b, _ = per_attribute_ridge(x[train_rows], y[train_rows], mask[train_rows])
    right = (np.sign(scores(x[test_rows], w, b)) == y[test_rows]) & mask[test_rows]
    return right.sum(0) / mask[test_rows].sum(0)


def s_extract(x: np.ndarray, y: np.ndarray, mask: np.ndarray, folds: list[int]) -> np.ndarray:
    """(M,) test accuracy per attribute, averaged over ``folds``."""
    return np.mean([fold_accuracy(x, y, mask, k) for k in folds], axis=0)


def adapted(
    root: str, y: np.ndarray, mask: np.ndarray, folds: list[int], blocks: int, epochs: int
) -> np.ndarray:
    """S-extract's SVMs on the trunk (224 x 336, centre window) whose last ``blocks`` blocks are
    adapted for ``epochs`` per test fold on that fold's training part; (M,) accuracy averaged
    over ``folds``."""
    from apcnn.adapt import adapt_top, split_top, top_features
    from apcnn.data import create_dataset
    from apcnn.data.splits import kfold_indices
    from apcnn.data.transforms import build_transform
    from apcnn.features import extract_features
    from apcnn.models.backbone import create_backbone

    backbone, info = create_backbone()
    transform = build_transform(
        224, info.mean, info.std, train=False, crop_fraction=1.0, height=336
    )
    ds = create_dataset("clothing", root=root, transform=transform)
    bottom, _ = split_top(backbone, blocks)
    maps = extract_features(bottom, ds, batch_size=32, num_workers=2, progress=True, desc="maps")
    accs = []
    for k in folds:
        _, top = split_top(create_backbone()[0], blocks)
        train_rows = kfold_indices(len(ds), 5, 0)[k][0]
        adapt_top(
            top,
            maps[train_rows],
            torch.as_tensor(y[train_rows]),
            torch.as_tensor(mask[train_rows]),
            pool_region=CENTRE,
            epochs=epochs,
            lr=ADAPT_LR,
            progress=True,
        )
        x = top_features(top, maps, CENTRE).numpy()
        accs.append(fold_accuracy(x, y, mask, k))
    return np.mean(accs, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT.parent / "shared/data/ClothingAttributeDataset"))
    parser.add_argument("--quick", action="store_true", help="fold 0, two variants")
    args = parser.parse_args()
    from apcnn.data import create_dataset

    ds = create_dataset("clothing", root=args.root)
    y = np.asarray(ds.targets, dtype=np.float32)
    mask = y != 0
    groups = dict(zip(ds.schema.group_names, ds.schema.group_indices))
    folds = [0] if args.quick else [0, 1, 2, 3, 4]
    rows = []
    for label, width, height, crop, windows in QUICK if args.quick else VARIANTS:
        t0 = time.perf_counter()
        feats = features(args.root, width, height, crop, windows)
        for r, window in enumerate(windows):
            acc = s_extract(feats[:, r].astype(np.float32), y, mask, folds)
            pool = "global" if window is None else f"window {list(window)}"
            per_group = {g: acc[i].mean() for g, i in groups.items()}
            rows.append((f"{label}, {pool}", per_group, acc.mean()))
            print(
                f"{rows[-1][0]}: {100 * acc.mean():.2f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    for blocks, epochs in ADAPTATIONS:
        t0 = time.perf_counter()
        acc = adapted(args.root, y, mask, folds, blocks, epochs)
        name = (
            f"224x336 whole, window {list(CENTRE)}, adapted trunk ({blocks} blocks, "
            f"{epochs} epochs)"
        )
        rows.append((name, {g: acc[i].mean() for g, i in groups.items()}, acc.mean()))
        print(f"{name}: {100 * acc.mean():.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    base = rows[0][2]
    head = "| input, pooling | " + " | ".join(groups) + " | total | gain |"
    lines = [head, "|---" * (len(groups) + 3) + "|"]
    for name, per_group, total in rows:
        cells = " | ".join(f"{100 * v:.2f}" for v in per_group.values())
        lines.append(f"| {name} | {cells} | {100 * total:.2f} | {100 * (total - base):+.2f} |")
    which = "test fold 0" if args.quick else "mean over the 5 test folds"
    body = (
        "## Clothing input shape and pooling window (`benchmarks/ablation_clothing_input.py`)\n\n"
        f"S-extract accuracy % on the real Clothing data ({which}; lite0 features, ridge weight "
        "per attribute by inner CV); gain in points over the first row, measured in the same "
        "run. The third-to-last row is the input of `apcnn reproduce clothing`, the last two "
        "rows the same on an adapted trunk (`apcnn.adapt`, on the training folds): the one its "
        "CNN methods use, then a deeper adaptation (better on test fold 0, not over the 5 folds "
        "with MG-CNN: README, Table III section).\n\n" + "\n".join(lines) + "\n"
    )
    write_section("clothing-input", body)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
