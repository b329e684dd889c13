"""``apcnn data template DIR``: an empty ``folder`` dataset to fill in (docs/datasets.md).

Writes::

    DIR/images/          put your photos here (any sub-folders; paths in labels.csv are relative)
    DIR/labels.csv       header + two example rows
    DIR/groups.yaml      attribute groups for MG-CNN, explained in comments
    DIR/README.txt       the next steps and the labels.csv format

The format notes are in ``labels.csv`` itself as ``#`` lines (the ``folder`` reader skips a row
whose first cell starts with ``#``) and in README.txt. Once the two example
images (``images/example1.jpg``, ``images/example2.jpg``) exist, or the example rows are replaced
by your own, ``apcnn data verify folder --root DIR`` accepts the folder.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TEMPLATE_FILES", "write_template"]

#: How labels.csv is read (README.txt carries it; see the module docstring on '#' lines).
LABELS_HELP = """\
labels.csv: one row per image; the first line is the header.
Columns:
  file        image path, relative to this folder or to images/ (also: filename, image, path)
  one column per attribute, any names; cells: 1/yes/true = has it, 0/-1/no/false = does not,
              empty (or ?, nan, na, -) = unknown (that label is left out of training and scores)
  split       optional: train / val / test per row; without it apcnn cuts seeded folds
  class       optional: a class name per image (zero-shot tools); empty = no class
Replace the two example rows by your images; keep the header.
"""

#: The example rows: 1/0 and yes/no cells, a missing label (the empty long_sleeves cell).
LABELS_ROWS = """\
file,red,blue,striped,plain,long_sleeves
example1.jpg,1,0,yes,no,
example2.jpg,0,1,no,yes,1
"""

#: The help goes into labels.csv as '#' lines (the folder reader skips them).
COMMENTED_CSV = True

LABELS_CSV = (
    "".join(f"# {line}\n" for line in LABELS_HELP.splitlines()) if COMMENTED_CSV else ""
) + LABELS_ROWS

GROUPS_YAML = """\
# groups.yaml (optional): which attributes share a group. MG-CNN lets attributes of one group
# share latent tasks and makes groups compete for them (the paper's group sparsity). Every
# attribute of labels.csv should be in exactly one group; attributes listed nowhere get a group
# of their own (with a warning). Names must match labels.csv's header (or use 1-based column
# numbers, counting attribute columns only). Delete this file to give each attribute its own
# group.
color: [red, blue]
pattern: [striped, plain]
sleeves: [long_sleeves]
"""

README_TXT = """\
An apcnn 'folder' dataset (see docs/datasets.md, "Bring your own data in 5 minutes").

1. Put your photos in images/ (JPEG, PNG, ...; sub-folders are fine).
2. Edit labels.csv: one row per photo, one column per attribute (1 / 0 / empty = unknown).
3. Edit groups.yaml (or delete it).
4. Check:   apcnn data verify folder --root {root}
5. Train:   apcnn train -c configs/folder.yaml --set data.root={root} --out runs/mine

"""
README_TXT += LABELS_HELP

#: file name -> content (``{root}`` in README.txt is the folder).
TEMPLATE_FILES = {"labels.csv": LABELS_CSV, "groups.yaml": GROUPS_YAML, "README.txt": README_TXT}


def write_template(root: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write the empty layout into ``root`` (created if missing); returns the paths written.

    Raises:
        FileExistsError: a template file already exists there and ``overwrite`` is false (the
            message names it and says how to proceed).
    """
    base = Path(root)
    existing = [base / name for name in TEMPLATE_FILES if (base / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists; choose an empty folder or pass --overwrite"
        )
    (base / "images").mkdir(parents=True, exist_ok=True)
    written = [base / "images"]
    for name, text in TEMPLATE_FILES.items():
        path = base / name
        path.write_text(text.format(root=base) if name == "README.txt" else text, "utf-8")
        written.append(path)
    return written
