"""Batched attribute-specific tails and fast feature extraction vs naive baselines (CPU).

(a) forward + backward of M=23 attribute-specific tails of tf_efficientnet_lite0 on the trunk
    features of 32 images at 224 px, as one ``StackedTail`` vs a Python loop over 23 unbatched
    copies of the same layers (same weights, same inputs, train mode), for tail="head"
    (conv_head + bn2 on 320x7x7) and tail=1 (last block + head on 192x7x7); also at batch 4.
(b) images/s of the default backbone's pooled features: ``apcnn.features.extract_features``
    (inference_mode, channels_last, micro-batches; fp32 and bf16 autocast) vs a naive loop
    (torch.no_grad, NCHW float32, batch 1).

Timings interleave the methods and keep the best of several repetitions. Two metrics: wall
time with torch's default threads, and CPU time of this process with one thread (the work done;
on shared cores wall times of many small operations mostly measure preemption by other
processes). Run: ``python benchmarks/bench_tails.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from apcnn.features import extract_features  # noqa: E402
from apcnn.models.backbone import create_backbone  # noqa: E402
from apcnn.models.tails import StackedTail  # noqa: E402

M = 23


def best_times(
    fns: dict[str, Callable[[], object]], reps: int, *, cpu: bool = False
) -> dict[str, float]:
    """Best time (s) of each function over ``reps`` interleaved rounds (after a warm-up).

    ``cpu=False``: wall time with torch's default thread count. ``cpu=True``: CPU time of this
    process with one torch thread — the work done, nearly independent of other processes on
    shared cores (wall times there mostly measure how often the scheduler preempts us).
    """
    threads = torch.get_num_threads()
    clock = time.process_time if cpu else time.perf_counter
    if cpu:
        torch.set_num_threads(1)
    try:
        for fn in fns.values():
            fn()
        best = dict.fromkeys(fns, float("inf"))
        for _ in range(reps):
            for name, fn in fns.items():
                t = clock()
                fn()
                best[name] = min(best[name], clock() - t)
    finally:
        torch.set_num_threads(threads)
    return best


def bench_tails(model: torch.nn.Module, reps: int) -> list[dict[str, float | int | str]]:
    blocks = [b for stage in model.blocks for b in stage]
    head = [model.conv_head, model.bn2]
    cases = {"head": (head, 320), "1": ([blocks[-1], *head], 192)}
    rows = []
    for batch in (32, 4):
        for tail_name, (layers, channels) in cases.items():
            tail = StackedTail(layers, M).train()
            singles = [tail.unstacked(m).train() for m in range(M)]
            x = torch.randn(batch, channels, 7, 7, generator=torch.Generator().manual_seed(0))
            auto = tail.copies_per_pass(x)

            def batched(tail=tail, x=x, chunk=None):
                tail.chunk_size = chunk
                tail.zero_grad(set_to_none=True)
                tail(x).square().mean().backward()

            def loop(singles=singles, x=x):
                for s in singles:
                    s.zero_grad(set_to_none=True)
                torch.stack([s(x) for s in singles], 1).square().mean().backward()

            fns = {"one_pass": batched, "auto": lambda b=batched: b(chunk="auto"), "loop": loop}
            row: dict[str, float | int | str] = {"tail": tail_name, "batch": batch}
            for metric, cpu in (("wall", False), ("cpu1", True)):
                # copies per pass chosen by "auto" (does not depend on the thread count)
                row["chunk"] = min(auto, M)
                t = best_times(fns, reps, cpu=cpu)
                row.update({f"{metric}_{k}": v for k, v in t.items()})
                print(
                    f"tail={tail_name} B={batch} [{metric}]: one pass {t['one_pass'] * 1e3:.0f} "
                    f"ms, auto (c={row['chunk']}) {t['auto'] * 1e3:.0f} ms, "
                    f"loop {t['loop'] * 1e3:.0f} ms",
                    flush=True,
                )
            rows.append(row)
    return rows


class _Images(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.images = torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "index": torch.tensor(i)}


def bench_extraction(model: torch.nn.Module, n: int, reps: int) -> dict[str, float]:
    ds = _Images(n)
    feats = model.eval()

    def embed(x: torch.Tensor) -> torch.Tensor:
        return feats.forward_head(feats.forward_features(x), pre_logits=True)

    def naive():
        with torch.no_grad():
            return torch.cat([embed(ds[i]["image"][None]) for i in range(n)])

    def fast_fp32():
        return extract_features(embed, ds, batch_size=32)

    def fast_fp32_mb4():
        return extract_features(embed, ds, batch_size=32, micro_batch=4)

    def fast_bf16():
        return extract_features(embed, ds, batch_size=32, amp=True)

    ref, out32, out16 = naive(), fast_fp32(), fast_bf16()
    err32 = float((out32 - ref).abs().max() / ref.abs().max())
    err16 = float((out16 - ref).abs().max() / ref.abs().max())
    fns = {
        "naive": naive,
        "fast_fp32": fast_fp32,
        "fast_fp32_mb4": fast_fp32_mb4,
        "fast_bf16": fast_bf16,
    }
    res: dict[str, float] = {"err32": err32, "err16": err16}
    for metric, cpu in (("wall", False), ("cpu1", True)):
        t = best_times(fns, reps, cpu=cpu)
        res.update({f"{metric}_{k}": n / v for k, v in t.items()})  # images per second
        print(f"extraction [{metric}]:", {k: round(n / v, 1) for k, v in t.items()}, flush=True)
    print(f"max rel. error vs naive: fp32 {err32:.1e}, bf16 {err16:.1e}")
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and images")
    args = parser.parse_args()
    reps = 1 if args.quick else 3
    n_images = 32 if args.quick else 128
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    model, _ = create_backbone()
    rows = bench_tails(model, reps)
    ext = bench_extraction(model, n_images, reps=reps)

    end_load = os.getloadavg()[0]
    lines = [
        "## Attribute-specific tails and feature extraction (`benchmarks/bench_tails.py`)",
        "",
        f"(a) Forward + backward (train mode) of M={M} attribute-specific tails of "
        "tf_efficientnet_lite0 on 7x7 trunk features (tail=head: conv_head+bn2 on 320 channels; "
        "tail=1: last block + head on 192 channels): `StackedTail` vs a Python loop over "
        f"{M} unbatched copies (same weights, same inputs). `StackedTail` runs all copies in one "
        "pass (`chunk_size=None`) or, by default (`chunk_size='auto'`), in cache-sized passes "
        "of c copies. *wall*: wall time, default threads; *cpu1*: CPU time with one thread "
        "(the work done, robust to other processes on shared cores). Best of "
        f"{reps} interleaved runs; ratio = loop / batched (> 1: batched faster). "
        f"Load average (1 min) at start {load:.1f}, at end {end_load:.1f} on 2 cores.",
        "",
        "| tail | batch | metric | one pass (ms) | auto: c | auto (ms) | loop (ms) "
        "| loop / one pass | loop / auto |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for metric in ("wall", "cpu1"):
            one, auto, loop = (r[f"{metric}_{k}"] for k in ("one_pass", "auto", "loop"))
            lines.append(
                f"| {r['tail']} | {r['batch']} | {metric} | {one * 1e3:.0f} | {r['chunk']} | "
                f"{auto * 1e3:.0f} | {loop * 1e3:.0f} | {loop / one:.2f} | {loop / auto:.2f} |"
            )
    lines += [
        "",
        f"(b) Pooled 1280-d features of the default backbone (tf_efficientnet_lite0, 224 px, "
        f"{n_images} images in memory): `extract_features` (inference_mode, channels_last, "
        "batches of 32) vs a naive loop (torch.no_grad, NCHW float32, batch 1).",
        "",
        "| method | wall images/s | ratio | cpu1 images/s | ratio | max rel. error |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, err in (
        ("naive", "naive loop", "-"),
        ("fast_fp32", "extract_features fp32", f"{ext['err32']:.1e}"),
        ("fast_fp32_mb4", "extract_features fp32, micro_batch=4", "-"),
        ("fast_bf16", "extract_features bf16 autocast", f"{ext['err16']:.1e}"),
    ):
        w, c = ext[f"wall_{key}"], ext[f"cpu1_{key}"]
        lines.append(
            f"| {label} | {w:.1f} | {w / ext['wall_naive']:.2f} | {c:.1f} | "
            f"{c / ext['cpu1_naive']:.2f} | {err} |"
        )
    from benchmarks._report import write_section

    write_section("tails", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
