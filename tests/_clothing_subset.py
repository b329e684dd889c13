"""A smaller copy of the real Clothing Attribute Dataset, in its published layout, for tests that
must run the real pipeline quickly: the first ``n`` photos (symbolic links to the originals) and
every ``labels/<attribute>_GT.mat`` cut to their rows. Nothing is copied from ../shared."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ClothingAttributeDataset"


def clothing_subset(dest: Path, n: int, source: Path = DATA) -> Path:
    """Write the first ``n`` images of ``source`` (sorted file order, as the loader reads them)
    and their labels under ``dest``; returns ``dest``."""
    import numpy as np
    import scipy.io

    from apcnn.data.images import is_image_file

    files = sorted(f.name for f in (source / "images").iterdir() if is_image_file(f.name))[:n]
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir()
    for name in files:
        (dest / "images" / name).symlink_to(source / "images" / name)
    for mat in sorted((source / "labels").glob("*_GT.mat")):
        gt = np.asarray(scipy.io.loadmat(str(mat))["GT"], dtype=np.float64).reshape(-1, 1)
        scipy.io.savemat(str(dest / "labels" / mat.name), {"GT": gt[:n]})
    return dest
