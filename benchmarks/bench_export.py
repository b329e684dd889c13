"""ONNX export: CPU inference throughput of onnxruntime vs PyTorch for the whole predictor.

The predictor (tf_efficientnet_lite0 trunk, M = 23 attribute-specific ``conv_head`` tails, the
multi-task layer W = L S of rank 8, Platt calibration) on 224x224 inputs, batch 16. The head is
random (seeded): throughput does not depend on trained values. Both runtimes use the same number
of intra-op threads (torch's default = the CPU count) and produce the same two outputs (scores,
probabilities). Variants, measured round-robin, best of R repeats of I batches each:

- PyTorch eager, ``torch.inference_mode()``, float32 (what ``apcnn predict --checkpoint`` runs);
- the same with a channels-last input (what ``apcnn.features.extract_features`` feeds);
- onnxruntime CPUExecutionProvider on the exported graph (``apcnn predict --onnx``).

Also reported: the export time and the max abs difference between the two runtimes' outputs.

Run: ``python benchmarks/bench_export.py [--quick]`` from the repository root. Writes the
"export" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

M, RANK, SIZE, BATCH = 23, 8, 224, 16


def make_checkpoint(path: Path) -> Path:
    import torch

    from apcnn.config import TrainConfig, config_to_dict
    from apcnn.data.schema import AttributeSchema
    from apcnn.models.backbone import DEFAULT_BACKBONE, create_backbone
    from apcnn.predictor import build_predictor, save_predictor

    schema = AttributeSchema(
        names=tuple(f"a{i}" for i in range(M)), groups=(("all", tuple(range(M))),)
    )
    meta = {
        "backbone": DEFAULT_BACKBONE,
        "weights": "imagenet",
        "tail": "head",
        "freeze_trunk": True,
        "num_attributes": M,
        "rank": RANK,
    }
    predictor = build_predictor(meta, pretrained=True)
    meta["feature_dim"] = predictor.cnn.feature_dim
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in predictor.head.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.05)
    _, info = create_backbone(DEFAULT_BACKBONE, weights="none")
    save_predictor(
        path,
        predictor,
        model_meta=meta,
        schema=schema,
        preprocessing={"image_size": SIZE, "mean": list(info.mean), "std": list(info.std)},
        config=config_to_dict(TrainConfig()),
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats, iters = (3, 3) if args.quick else (5, 8)

    import numpy as np
    import torch
    from benchmarks._report import write_section

    from apcnn.export import export_onnx, onnx_session, run_onnx
    from apcnn.predictor import load_predictor

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp) / "ckpt")
        t0 = time.perf_counter()
        onnx_path = export_onnx(ckpt, Path(tmp) / "model.onnx")
        export_s = time.perf_counter() - t0
        size_mb = onnx_path.stat().st_size / 2**20
        predictor, _ = load_predictor(ckpt)
        session = onnx_session(onnx_path, threads=threads)
        x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
        xn = x.numpy()

        def run_torch() -> None:
            with torch.inference_mode():
                s = predictor(x)
                predictor.probabilities(s)

        x_cl = x.contiguous(memory_format=torch.channels_last)

        def run_torch_cl() -> None:
            with torch.inference_mode():
                s = predictor(x_cl)
                predictor.probabilities(s)

        def run_ort() -> None:
            run_onnx(session, xn)

        with torch.inference_mode():
            s_t = predictor(x)
            p_t = predictor.probabilities(s_t)
        s_o, p_o = run_onnx(session, xn)
        err = max(float(np.abs(s_o - s_t.numpy()).max()), float(np.abs(p_o - p_t.numpy()).max()))

        variants = {
            "PyTorch eager (inference_mode)": run_torch,
            "PyTorch eager, channels-last input": run_torch_cl,
            "onnxruntime CPU": run_ort,
        }
        best = {k: float("inf") for k in variants}
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(repeats):
            for name, fn in variants.items():
                t = time.perf_counter()
                for _ in range(iters):
                    fn()
                best[name] = min(best[name], (time.perf_counter() - t) / iters)
    base = best["PyTorch eager (inference_mode)"]
    rows = [
        f"| {name} | {BATCH / sec:.1f} | {1000 * sec / BATCH:.1f} | {base / sec:.2f}x |"
        for name, sec in best.items()
    ]
    load = os.getloadavg()[0]
    body = "\n".join(
        [
            "## ONNX export (`benchmarks/bench_export.py`)",
            "",
            f"Whole predictor (tf_efficientnet_lite0 trunk + {M} attribute tails + W = L S, rank "
            f"{RANK}, + calibration), {SIZE}x{SIZE} input, batch {BATCH}, float32, {threads} "
            "intra-op threads for both runtimes. Baseline: PyTorch eager.",
            "",
            "| runtime | images/s | ms / image | vs PyTorch |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Export (`apcnn export`, TorchScript-based exporter, opset 17): {export_s:.1f} s, "
            f"{size_mb:.1f} MiB. Max abs difference of scores/probabilities between the runtimes: "
            f"{err:.1e}.",
            "",
            f"Best of {repeats} round-robin repeats of {iters} batches each; load average at "
            f"the end {load:.1f} on {os.cpu_count()} cores (shared machine: absolute figures "
            "are noisy, the ratio less so).",
        ]
    )
    print(body)
    write_section("export", body)


if __name__ == "__main__":
    main()
