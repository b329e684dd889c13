"""Batched attribute-specific tails and fast feature extraction vs naive baselines (CPU).

(a) forward + backward of M=23 attribute-specific tails of tf_efficientnet_lite0 on the trunk
    features of 32 images at 224 px, as one ``StackedTail`` vs a Python loop over 23 unbatched
    copies of the same layers (same weights, same inputs, train mode), for tail="head"
    (conv_head + bn2 on 320x7x7) and tail=1 (last block + head on 192x7x7); also at batch 4.
(b) images/s of the default backbone's pooled features: ``apcnn.features.extract_features``
    (inference_mode, channels_last, batches of 32; fp32 and bf16 autocast) vs a naive loop
    (torch.no_grad, NCHW float32, batch 1).

Timings interleave the two sides and keep the best of several repetitions, so the ratios are
robust to other load on the machine. Run: ``python benchmarks/bench_tails.py [--quick]``.
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


def best_times(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Best wall time (s) of each function over ``reps`` interleaved rounds (after a warm-up)."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
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
            if auto >= M:
                del fns["auto"]
            t = best_times(fns, reps)
            t.setdefault("auto", t["one_pass"])
            row = {"tail": tail_name, "batch": batch, "chunk": min(auto, M), **t}
            rows.append(row)
            print(
                f"tail={tail_name} B={batch}: one pass {t['one_pass'] * 1e3:.0f} ms, "
                f"auto (c={row['chunk']}) {t['auto'] * 1e3:.0f} ms, loop {t['loop'] * 1e3:.0f} ms"
            )
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

    def fast_bf16():
        return extract_features(embed, ds, batch_size=32, amp=True)

    ref, out32, out16 = naive(), fast_fp32(), fast_bf16()
    err32 = float((out32 - ref).abs().max() / ref.abs().max())
    err16 = float((out16 - ref).abs().max() / ref.abs().max())
    t = best_times({"naive": naive, "fast_fp32": fast_fp32, "fast_bf16": fast_bf16}, reps)
    ips = {k: n / v for k, v in t.items()}
    print(
        f"extraction: naive {ips['naive']:.1f} img/s, fast fp32 {ips['fast_fp32']:.1f} img/s "
        f"(rel. err {err32:.1e}), fast bf16 {ips['fast_bf16']:.1f} img/s (rel. err {err16:.1e})"
    )
    return {**ips, "err32": err32, "err16": err16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and images")
    args = parser.parse_args()
    reps = 2 if args.quick else 5
    n_images = 64 if args.quick else 256
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    model, _ = create_backbone()
    rows = bench_tails(model, reps)
    ext = bench_extraction(model, n_images, reps=1 if args.quick else 3)

    lines = [
        "## Attribute-specific tails and feature extraction (`benchmarks/bench_tails.py`)",
        "",
        f"(a) Forward + backward (train mode) of M={M} attribute-specific tails of "
        "tf_efficientnet_lite0 on 7x7 trunk features: one batched `StackedTail` vs a Python "
        f"loop over {M} unbatched copies (same weights and inputs). `StackedTail` runs all "
        "copies in one pass (`chunk_size=None`) or, by default (`chunk_size='auto'`), in "
        f"cache-sized passes of several copies. Best of {reps} interleaved runs; ratios > 1 mean "
        f"the batched module is faster. Load average (1 min) at start: {load:.1f}, at end: "
        f"{os.getloadavg()[0]:.1f} (2 shared cores: other load slows the many small operations "
        "of the loop most).",
        "",
        "| tail | batch | one pass (ms) | auto chunks: copies/pass | auto (ms) | loop (ms) "
        "| loop / one pass | loop / auto |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tail']} | {r['batch']} | {r['one_pass'] * 1e3:.0f} | {r['chunk']} | "
            f"{r['auto'] * 1e3:.0f} | {r['loop'] * 1e3:.0f} | {r['loop'] / r['one_pass']:.2f} | "
            f"{r['loop'] / r['auto']:.2f} |"
        )
    lines += [
        "",
        f"(b) Pooled features of the default backbone (tf_efficientnet_lite0, 224 px, "
        f"{n_images} images): `extract_features` (inference_mode, channels_last, batch 32) vs "
        "a naive loop (torch.no_grad, NCHW float32, batch 1).",
        "",
        "| method | images/s | ratio vs naive | max rel. error vs naive |",
        "|---|---|---|---|",
        f"| naive | {ext['naive']:.1f} | 1.00 | - |",
        f"| extract_features fp32 | {ext['fast_fp32']:.1f} | "
        f"{ext['fast_fp32'] / ext['naive']:.2f} | {ext['err32']:.1e} |",
        f"| extract_features bf16 autocast | {ext['fast_bf16']:.1f} | "
        f"{ext['fast_bf16'] / ext['naive']:.2f} | {ext['err16']:.1e} |",
    ]
    from benchmarks._report import write_section

    write_section("tails", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
