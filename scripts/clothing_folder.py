"""A user's own photo folder made from the Clothing data, for the newcomer walkthrough
(scripts/newcomer_run.sh): N photos (default 300, seeded), 8 attributes in 3 groups, in the
folder layout of docs/datasets.md; Clothing's NaN labels (no agreement) become empty cells.

    python scripts/clothing_folder.py OUT [--root ../shared/data/ClothingAttributeDataset] [-n 300]
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np
import scipy.io
import yaml

GROUPS = {
    "color": ["black", "white", "red", "blue"],
    "pattern": ["pattern_solid", "pattern_stripe", "pattern_floral"],
    "collar": ["collar"],
}
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared/data/ClothingAttributeDataset"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out", type=Path, help="the folder to write (images/, labels.csv, groups.yaml)"
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the Clothing dataset")
    parser.add_argument("-n", type=int, default=300, help="number of photos")
    args = parser.parse_args()
    names = [a for members in GROUPS.values() for a in members]
    labels = {
        a: scipy.io.loadmat(str(args.root / "labels" / f"{a}_GT.mat"))["GT"].ravel() for a in names
    }
    pick = np.sort(np.random.default_rng(0).choice(len(labels[names[0]]), args.n, replace=False))
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in pick:
        name = f"{i + 1:06d}.jpg"  # Clothing's images are 000001.jpg ... in label order
        shutil.copy(args.root / "images" / name, args.out / "images" / name)
        # Clothing codes 1 = no, 2 = yes, NaN = no agreement (unknown)
        cells = [
            "" if np.isnan(labels[a][i]) else ("yes" if labels[a][i] == 2 else "no") for a in names
        ]
        rows.append([name, *cells])
    with open(args.out / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", *names])
        writer.writerows(rows)
    (args.out / "groups.yaml").write_text(yaml.safe_dump(GROUPS))
    print(f"{args.out}: {len(rows)} photos, {len(names)} attributes in {len(GROUPS)} groups")


if __name__ == "__main__":
    main()
