"""Checkpoint saving: peak memory and time of the streamed save against an in-memory save.

The state: T float32 tensors of 1280 x 1280 (the cub preset's 312 fc tails are 2.0 GB). Each
variant runs in its own subprocess, which builds the state (seeded) and reports its peak RSS
(``ru_maxrss``):

- ``tensors``: only builds the state (the floor);
- ``in-memory``: what ``save_checkpoint`` did before it streamed: ``safetensors.torch.save`` to a
  ``bytes`` object, hashed, then written atomically (the baseline);
- ``streamed``: ``apcnn.checkpoint.save_checkpoint`` (one tensor at a time, hashed as written).

Reported: peak RSS above the floor, save time, and whether both saves wrote the same bytes.

Run: ``python benchmarks/bench_checkpoint.py [--quick]`` from the repository root. Writes the
"checkpoint" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import hashlib, json, resource, sys, time
import torch
mode, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
state = {f"cnn.tails.{i}.weight": torch.randn(1280, 1280) for i in range(count)}
seconds, digest = None, None
if mode == "in-memory":
    import safetensors.torch
    from apcnn.checkpoint import atomic_write_bytes
    start = time.perf_counter()
    data = safetensors.torch.save(state)
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(out + ".safetensors", data)
    seconds = time.perf_counter() - start
elif mode == "streamed":
    from apcnn.checkpoint import read_checkpoint_meta, save_checkpoint
    start = time.perf_counter()
    save_checkpoint(out, state, {"bench": True})
    seconds = time.perf_counter() - start
    digest = read_checkpoint_meta(out)["checkpoint"]["tensor_file"]["sha256"]
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": seconds, "sha256": digest,
                  "bytes": sum(t.numel() * t.element_size() for t in state.values())}))
"""


def run(mode: str, out: Path, count: int) -> dict:
    env_src = str(ROOT / "src")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {env_src!r})\n" + CHILD,
            mode,
            str(out),
            str(count),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 tensors (0.26 GB), not 312")
    args = parser.parse_args()
    from benchmarks._report import write_section

    count = 40 if args.quick else 312
    with tempfile.TemporaryDirectory() as tmp:
        res = {m: run(m, Path(tmp) / m, count) for m in ("tensors", "in-memory", "streamed")}
    gb = 2**30
    floor = res["tensors"]["peak_kib"] * 1024
    base = res["in-memory"]
    lines = [
        "## Checkpoint saving, streamed vs in memory (`benchmarks/bench_checkpoint.py`)",
        "",
        f"{count} float32 tensors of 1280 x 1280 ({res['tensors']['bytes'] / gb:.2f} GB), each "
        "variant in its own process; peak RSS (`ru_maxrss`) and its excess over building the "
        "state alone; time ratio against the in-memory save measured in the same run.",
        "",
        "| variant | peak RSS GB | above the state GB | save s | time ratio |",
        "|---|---|---|---|---|",
    ]
    for mode, r in res.items():
        peak = r["peak_kib"] * 1024
        secs = "—" if r["seconds"] is None else f"{r['seconds']:.1f}"
        ratio = "—" if r["seconds"] is None else f"{r['seconds'] / base['seconds']:.2f}"
        lines.append(f"| {mode} | {peak / gb:.2f} | {(peak - floor) / gb:.3f} | {secs} | {ratio} |")
    same = res["in-memory"]["sha256"] == res["streamed"]["sha256"]
    lines += ["", f"Same file bytes (sha256) from both saves: {'yes' if same else 'NO'}."]
    body = "\n".join(lines)
    print(body)
    write_section("checkpoint", body)
    if not same:
        raise SystemExit("the streamed file differs from safetensors.torch.save's")


if __name__ == "__main__":
    main()
