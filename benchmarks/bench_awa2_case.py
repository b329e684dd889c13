"""The 3,000-image AwA2-layout case (issue #18): the awa2 preset end to end, timed and watched.

A generated dataset in the published AwA2 layout (``Animals_with_Attributes2/``: classes.txt,
predicates.txt, the predicate matrices, trainclasses.txt / testclasses.txt, JPEGImages/<class>/;
../shared/DATASET_FORMATS.md): ``--images`` small JPEGs (``--px`` pixels, default 64; the preset
resizes them to its own image size) of 10 AwA classes -- 7 seen (trainclasses.txt) and the
first 3 of the standard unseen ten (testclasses.txt) -- labelled with ``--attributes`` predicates
(default 13: the first 13 of predicates.txt, grouped as AwA's color 1-8 and texture 9-13 in a
groups.yaml; ``--attributes 85``: the full predicate list with AwA's own 9 groups). Each
image's colour and brightness pattern follow its class's first attributes
(``tests/test_presets_replica.py: write_image``), so there is something to learn.

Then, as a user would, with nothing of the preset changed but the data folder:

    apcnn train -c configs/awa2.yaml --set data.root=DIR --out RUN      (S-CNN and MG-CNN)
    apcnn zeroshot --checkpoint RUN/checkpoints/MG-CNN --json RUN/zeroshot.json

each in a child process whose stdout and stderr are pipes (not a terminal: the package writes
plain periodic progress lines, no carriage returns). A reader thread per stream stamps every
line when it arrives and copies it, stamped, to ``WORK/case.log``. Measured: wall time of the
whole case and of each phase; the longest *silence* -- the longest time without a new output
line, counting from the start of a phase to its first line and from its last line to its exit --
with the line before it; the peak RSS of each child (``os.wait4``) and of all children
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``, DataLoader workers included); S-CNN / MG-CNN test
accuracy and mA (mean balanced accuracy) from the run's metrics.json (the test split = the
unseen classes' images); the zero-shot mean per-class accuracy (DAP) on the unseen classes.

The issue's limits: the whole case in at most 15 minutes on 2 cores, no silence over 30 s.

Run from the repository root: ``python benchmarks/bench_awa2_case.py [--quick]`` (``--quick``:
300 images). ``--write-docs`` writes the "awa2-case" section of docs/benchmarks.md; ``--json``
the figures (``--from-json``: report those of an earlier run without running). The exit status
is 1 when a limit is exceeded (``--limit-s``, ``--silence-s``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "awa2.yaml"
#: the 7 seen classes (trainclasses.txt); the unseen are the first ``--unseen`` of AWA_TEST
SEEN = ("antelope", "grizzly+bear", "beaver", "dalmatian", "horse", "tiger", "zebra")


def _replicas() -> ModuleType:
    """tests/test_presets_replica.py (its class/predicate names and image writer), by path:
    the tests folder is not a package."""
    spec = importlib.util.spec_from_file_location(
        "replicas", ROOT / "tests" / "test_presets_replica.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------ the dataset
def class_attributes(n_seen: int, n_unseen: int, m: int, seed: int) -> np.ndarray:
    """(C, M) in {0, 1}, seen classes first: every attribute varies over the seen classes (a
    constant one has nothing to train on) and every class has its own row (zero-shot must be
    able to tell the unseen ones apart). Redrawn until both hold."""
    rng = np.random.default_rng(seed)
    c = n_seen + n_unseen
    for _ in range(10_000):
        binary = (rng.random((c, m)) < rng.uniform(0.3, 0.6, m)).astype(int)
        seen = binary[:n_seen]
        if (seen.min(0) != seen.max(0)).all() and len({tuple(r) for r in binary}) == c:
            return binary
    raise RuntimeError(f"no {c} x {m} class-attribute matrix with distinct rows found")


def write_awa2_case(
    root: Path, n_images: int, m: int, px: int, n_unseen: int = 3, seed: int = 0
) -> Path:
    """The AwA2 layout under ``root``/Animals_with_Attributes2 with ``n_images`` images of
    ``len(SEEN) + n_unseen`` classes and the first ``m`` predicates; returns the folder."""
    rep = _replicas()
    unseen = list(rep.AWA_TEST[:n_unseen])
    classes = [c for c in rep.AWA_CLASSES if c in SEEN or c in unseen]  # classes.txt order
    preds = list(rep.AWA_PREDICATES[:m])
    base = root / "Animals_with_Attributes2"
    base.mkdir(parents=True, exist_ok=True)
    index = lambda names: "".join(f"{i:6d}\t{n}\n" for i, n in enumerate(names, 1))  # noqa: E731
    (base / "classes.txt").write_text(index(classes))
    (base / "predicates.txt").write_text(index(preds))
    drawn = class_attributes(len(SEEN), n_unseen, m, seed)  # rows: SEEN, then unseen
    order = list(SEEN) + unseen
    binary = np.stack([drawn[order.index(c)] for c in classes])
    (base / "predicate-matrix-binary.txt").write_text(
        "".join(" ".join(map(str, row)) + "\n" for row in binary)
    )
    cont = binary * 55.0 + np.random.default_rng(seed + 1).uniform(0, 40, binary.shape)
    (base / "predicate-matrix-continuous.txt").write_text(
        "".join(" ".join(f"{v:7.2f}" for v in row) + "\n" for row in cont)
    )
    (base / "trainclasses.txt").write_text("".join(f"{c}\n" for c in classes if c in SEEN))
    (base / "testclasses.txt").write_text("".join(f"{c}\n" for c in classes if c in unseen))
    if m != 85:  # AwA's groups restricted to the predicates kept (85: the loader's own nine)
        groups = {
            g: [i for i in idx if i <= m] for g, idx in _awa_groups() if any(i <= m for i in idx)
        }
        (base / "groups.yaml").write_text("".join(f"{g}: {v}\n" for g, v in groups.items()))
    for k, cls in enumerate(classes):
        for j in range(n_images // len(classes) + (k < n_images % len(classes))):
            path = base / "JPEGImages" / cls / f"{cls}_{10001 + j}.jpg"
            rep.write_image(path, 2 * binary[k] - 1, seed=10_000 * k + j, size=px)
    return base


def _awa_groups() -> tuple[tuple[str, tuple[int, ...]], ...]:
    from apcnn.data.awa import AWA_GROUPS

    return AWA_GROUPS


# ------------------------------------------------------------------------------ the phases
def _pump(stream: IO[bytes], name: str, lines: list, lock: threading.Lock, log: IO[str]) -> None:
    """Stamp each line of ``stream`` on arrival (monotonic s) and copy it to ``log``."""
    for raw in iter(stream.readline, b""):
        now = time.monotonic()
        text = raw.decode(errors="replace").rstrip("\n")
        with lock:
            lines.append((now, name, text))
            log.write(f"{now:12.3f} {name} {text}\n")
            log.flush()


def run_phase(phase: str, cmd: list[str], env: dict[str, str], log: IO[str]) -> dict[str, Any]:
    """Run ``cmd`` with stdout and stderr on pipes; its wall time, exit status, peak RSS and
    the longest silence (start -> first line, between lines, last line -> exit)."""
    lock = threading.Lock()
    lines: list[tuple[float, str, str]] = []
    log.write(f"# {phase}: {' '.join(cmd)}\n")
    log.flush()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    readers = [
        threading.Thread(target=_pump, args=(s, n, lines, lock, log), daemon=True)
        for s, n in ((proc.stdout, "out"), (proc.stderr, "err"))
    ]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    t1 = time.monotonic()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    stamps = [t0] + [t for t, _, _ in lines] + [t1]
    gaps = np.diff(stamps)
    k = int(np.argmax(gaps))
    before = "(start of the phase)" if k == 0 else f"[{lines[k - 1][1]}] {lines[k - 1][2]}"
    after = "(end of the phase)" if k == len(lines) else f"[{lines[k][1]}] {lines[k][2]}"
    return {
        "phase": phase,
        "rc": proc.returncode,
        "wall_s": t1 - t0,
        "rss_gb": usage.ru_maxrss / 2**20,  # KiB -> GiB
        "lines": len(lines),
        "silence_s": float(gaps[k]),
        "silence_at_s": stamps[k] - t0,  # when it began, from the phase's start
        "silence_after": before,
        "silence_before": after,
        "tail": [text for _, _, text in lines[-15:]],
    }


def run_case(args: argparse.Namespace) -> dict[str, Any]:
    """Write the dataset, run train and zeroshot, collect the figures."""
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t_all = time.monotonic()
    base = write_awa2_case(work / "data", args.images, args.attributes, args.px, seed=args.seed)
    t_write = time.monotonic() - t_all
    run = work / "run"
    apcnn = [sys.executable, "-m", "apcnn"]
    env = dict(os.environ, APCNN_CACHE=str(work / "cache"))  # a cold cache: nothing reused
    env.pop("APCNN_PROGRESS", None)  # the package's own choice for a pipe
    env.pop("APCNN_PROGRESS_INTERVAL", None)
    phases = []
    with open(work / "case.log", "w") as log:
        train = [*apcnn, "train", "-c", str(CONFIG), "--set", f"data.root={base}"]
        phases.append(run_phase("train", [*train, "--out", str(run)], env, log))
        if phases[-1]["rc"] == 0:
            ckpt = run / "checkpoints" / "MG-CNN"
            zs = [*apcnn, "zeroshot", "--checkpoint", str(ckpt), "--json", str(run / "zs.json")]
            phases.append(run_phase("zeroshot", zs, env, log))
    total = time.monotonic() - t_all
    row: dict[str, Any] = {
        "images": args.images,
        "attributes": args.attributes,
        "px": args.px,
        "classes": f"{len(SEEN)} seen + 3 unseen",
        "write_s": t_write,
        "total_s": total,
        "rss_children_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
        "phases": phases,
        "log": str(work / "case.log"),
    }
    if (run / "metrics.json").is_file():
        methods = json.loads((run / "metrics.json").read_text())["methods"]
        row["methods"] = {m: _scores(v) for m, v in methods.items()}
        row["train_images"] = _train_rows(run)
    if (run / "zs.json").is_file():
        zsr = json.loads((run / "zs.json").read_text())
        row["zeroshot"] = {
            "accuracy": zsr["mean_class_accuracy"],
            "chance": zsr.get("chance"),
            "images": zsr.get("num_images"),
        }
    return row


def _scores(method: dict[str, Any]) -> dict[str, float | None]:
    """Test accuracy (``total``) and mA (mean balanced accuracy) of one method's results."""
    ba = method.get("balanced_accuracy")
    return {"accuracy": method.get("total"), "mA": ba.get("total") if ba else None}


def _train_rows(run: Path) -> str:
    """The ``factored tail features NxMxD`` shape the run logged (N: solver rows), or ``?``."""
    import re

    hit = re.search(r"factored tail features (\d+x\d+x\d+)", (run / "train.log").read_text())
    return hit.group(1) if hit else "?"


# ------------------------------------------------------------------------------ the report
def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def markdown(row: dict[str, Any], args: argparse.Namespace) -> str:
    ph = {p["phase"]: p for p in row["phases"]}
    worst = max(row["phases"], key=lambda p: p["silence_s"])
    ok = (
        row["total_s"] <= args.limit_s
        and worst["silence_s"] <= args.silence_s
        and all(p["rc"] == 0 for p in row["phases"])
    )
    out = [
        "### The 3,000-image AwA2-layout case (issue #18, `bench_awa2_case.py`)",
        "",
        f"A generated dataset in the published AwA2 layout: {row['images']} JPEGs of "
        f"{row['px']} px, {row['classes']} classes (trainclasses.txt / testclasses.txt), "
        f"{row['attributes']} predicates; then `apcnn train -c configs/awa2.yaml --set "
        "data.root=DIR` (the preset as shipped: S-CNN and MG-CNN) and `apcnn zeroshot` (DAP) on "
        "the MG-CNN checkpoint, each a child process writing to pipes (plain progress lines). "
        "Silence: the longest time without a new output line (phase start to first line, "
        "between lines, last line to exit). Test split = the unseen classes' images.",
        "",
        "| phase | wall s | peak RSS GB | output lines | longest silence s | silence after |",
        "|---|---|---|---|---|---|",
    ]
    for p in row["phases"]:
        after = p["silence_after"].replace("|", "/")[:90]
        name = p["phase"] if p["rc"] == 0 else f"{p['phase']} (exit {p['rc']})"
        out.append(
            f"| {name} | {p['wall_s']:.0f} | "
            f"{p['rss_gb']:.2f} | {p['lines']} | {p['silence_s']:.1f} (at {p['silence_at_s']:.0f} "
            f"s) | `{after}` |"
        )
    methods = row.get("methods", {})
    zs = row.get("zeroshot", {})
    out += [
        "",
        f"Whole case (writing the images included): **{row['total_s']:.0f} s** "
        f"({row['total_s'] / 60:.1f} min; writing {row['write_s']:.0f} s); peak RSS of all "
        f"children {row['rss_children_gb']:.2f} GB. "
        + "; ".join(
            f"{m}: test accuracy {_pct(v['accuracy'])} %, mA {_pct(v['mA'])} %"
            for m, v in methods.items()
        )
        + (
            f"; zero-shot mean per-class accuracy {_pct(zs['accuracy'])} % on "
            f"{zs.get('images')} images (chance {_pct(zs.get('chance'))} %)."
            if zs
            else "."
        ),
        f"Issue #18's limits ({args.limit_s / 60:.0f} min, silence <= {args.silence_s:.0f} s): "
        f"**{'met' if ok else 'NOT met'}** (train {ph.get('train', {}).get('wall_s', 0):.0f} s, "
        f"zero-shot {ph.get('zeroshot', {}).get('wall_s', 0):.0f} s).",
    ]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="300 images (a smoke run)")
    p.add_argument("--images", type=int, default=None, help="images in all (default 3000)")
    p.add_argument("--attributes", type=int, default=13, help="predicates (13; 85 = all)")
    p.add_argument("--px", type=int, default=64, help="side of the source JPEGs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/apcnn-bench-awa2-case"))
    p.add_argument("--limit-s", type=float, default=900.0, help="the case's wall-time limit")
    p.add_argument("--silence-s", type=float, default=30.0, help="the longest silence allowed")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--from-json", type=Path, help="report the figures of an earlier --json")
    p.add_argument("--write-docs", action="store_true", help="write docs/benchmarks.md's section")
    args = p.parse_args()
    if args.images is None:
        args.images = 300 if args.quick else 3000
    if not 1 <= args.attributes <= 85:
        p.error("--attributes must be in 1..85 (the AwA predicates)")
    row = json.loads(args.from_json.read_text()) if args.from_json else run_case(args)
    for ph in row["phases"]:
        print(
            f"{ph['phase']}: exit {ph['rc']}, {ph['wall_s']:.0f} s, longest silence "
            f"{ph['silence_s']:.1f} s after {ph['silence_after']!r}",
            file=sys.stderr,
        )
        if ph["rc"] != 0:
            print("\n".join(ph["tail"]), file=sys.stderr)
    if args.json and not args.from_json:
        args.json.write_text(json.dumps(row, indent=1))
    text = markdown(row, args)
    print(text)
    if args.write_docs:
        sys.path.insert(0, str(ROOT))
        from benchmarks._report import write_section

        write_section("awa2-case", text)
    worst = max(ph["silence_s"] for ph in row["phases"])
    failed = any(ph["rc"] for ph in row["phases"])
    sys.exit(int(failed or row["total_s"] > args.limit_s or worst > args.silence_s))


if __name__ == "__main__":
    main()
