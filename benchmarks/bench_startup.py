"""CLI start-up: wall time of light commands against importing torch, measured in the same run.

Light commands (help, config listing, a fast dataset check) must not pay for torch: its import
is most of a heavy command's start-up. Each command runs as a fresh subprocess (``python -m
apcnn ...``), round-robin with the baseline ``python -c "import torch"``, best and median of R
runs. ``--before SRC`` also times the same commands on another source tree (e.g. a worktree of
an older commit: ``git worktree add /tmp/old <commit>`` then ``--before /tmp/old/src``) with the
same interpreter, for a before/after table.

Run: ``python benchmarks/bench_startup.py [--quick] [--before SRC]`` from the repository root.
Writes the "startup" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tiny_folder(root: Path) -> Path:
    """A 20-photo folder dataset (tiny PNGs, 2 attributes) for ``data verify --fast``."""
    images = root / "images"
    images.mkdir(parents=True)
    png = bytes.fromhex(  # a valid 1x1 PNG: --fast checks existence and size, not pixels
        "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408"
        "d763f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
    )
    rows = ["file,red,striped"]
    for i in range(20):
        (images / f"p{i:02d}.png").write_bytes(png)
        rows.append(f"p{i:02d}.png,{i % 2},{(i // 2) % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def timed(argv: list[str], src: Path | None) -> float:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs per command instead of 7")
    parser.add_argument("--before", type=Path, help="another source tree to time (its src/)")
    args = parser.parse_args()
    from benchmarks._report import write_section

    repeats = 3 if args.quick else 7
    trees = {"now": ROOT / "src"}
    if args.before is not None:
        trees = {"before": args.before.resolve(), **trees}
    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_folder(Path(tmp) / "photos")
        commands = {
            "apcnn --help": ["--help"],
            "apcnn train --help": ["train", "--help"],
            "apcnn predict --help": ["predict", "--help"],
            "apcnn config show folder": ["config", "show", "folder"],
            "apcnn data verify folder --fast": [
                "data",
                "verify",
                "folder",
                "--root",
                str(folder),
                "--fast",
            ],
        }
        py = sys.executable
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(repeats):  # round-robin: drifts in machine load hit every variant alike
            times.setdefault(("baseline", "python -c 'import torch'"), []).append(
                timed([py, "-c", "import torch"], None)
            )
            for tree, src in trees.items():
                for name, argv in commands.items():
                    if tree == "before" and argv[0] == "config":
                        continue  # `config show` did not exist before
                    times.setdefault((tree, name), []).append(
                        timed([py, "-m", "apcnn", *argv], src)
                    )
    torch_s = min(times[("baseline", "python -c 'import torch'")])
    lines = [
        "## CLI start-up (`benchmarks/bench_startup.py`)",
        "",
        f"Fresh `python -m apcnn ...` subprocesses, best and median of {repeats} round-robin "
        "runs; ratio: best time / best time of the baseline `python -c 'import torch'` in the "
        "same run (what a command that imports torch pays before doing anything). `data verify "
        "--fast` on a 20-photo folder (existence and size checks, no decoding)."
        + (f" before: the source tree {args.before}." if args.before else ""),
        "",
        "| tree | command | best s | median s | ratio to import torch |",
        "|---|---|---|---|---|",
    ]
    for (tree, name), ts in times.items():
        lines.append(
            f"| {tree} | `{name}` | {min(ts):.2f} | {statistics.median(ts):.2f} | "
            f"{min(ts) / torch_s:.2f} |"
        )
    body = "\n".join(lines)
    print(body)
    write_section("startup", body)


if __name__ == "__main__":
    main()
