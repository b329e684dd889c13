"""Export a predictor checkpoint to ONNX and run the exported graph with onnxruntime.

:func:`export_onnx` writes the *whole* predictor as one ONNX graph: the shared trunk, the M
attribute-specific tails, the multi-task layer W = L S (+ bias) and the Platt calibration::

    images (B, 3, H, W) float32, normalised   ->   scores (B, M)        = [x_m^T L s_m + b_m]_m
                                              ->   probabilities (B, M) = sigmoid(a_m * score + c_m)
                                              ->   decisions (B, M) bool = probabilities >= t_m

with a dynamic batch dimension ``B`` (the input shape ``(H, W)`` is fixed to the checkpoint's
:attr:`ModelSpec.input_shape <apcnn.models.spec.ModelSpec.input_shape>`). Next to ``model.onnx``
it writes ``model.onnx.json``: the attribute schema, the model description and preprocessing (the
checkpoint's ``model`` and ``preprocessing`` entries) and the ONNX file's sha256, everything
:func:`predict_onnx` needs to turn image files into the same per-attribute decisions as
``apcnn predict --checkpoint`` (through the same :meth:`ModelSpec.eval_transform
<apcnn.models.spec.ModelSpec.eval_transform>`).

``onnx`` and ``onnxruntime`` are optional dependencies, imported on use (``onnxscript`` too, only
for ``exporter="dynamo"``).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "ONNX_FORMAT",
    "export_onnx",
    "meta_path_for",
    "load_onnx_meta",
    "onnx_session",
    "verify_onnx",
    "run_onnx",
    "run_onnx_decisions",
    "predict_onnx",
]

ONNX_FORMAT = "apcnn.onnx/1"
INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "probabilities", "decisions")


class _ExportModule(nn.Module):
    """images (B, 3, H, W) -> (scores (B, M), probabilities (B, M), decisions (B, M) bool): the
    predictor end to end, decisions by its one rule p >= threshold (the checkpoint's)."""

    def __init__(self, predictor: nn.Module) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores = self.predictor(images)
        probabilities = self.predictor.probabilities(scores)
        return scores, probabilities, self.predictor.decisions(probabilities)


def meta_path_for(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json`` (the sidecar with schema and preprocessing)."""
    return Path(str(onnx_path) + ".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _require(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{what} needs the '{module}' package; install it with: pip install {module}"
        ) from None


def export_onnx(
    checkpoint: str | Path,
    out_path: str | Path,
    *,
    opset: int = 17,
    batch_size: int = 2,
    check: bool = True,
    exporter: str = "auto",
) -> Path:
    """Write the predictor of ``checkpoint`` as one ONNX graph to ``out_path``; returns the path.

    Args:
        checkpoint: a predictor checkpoint folder (``RUN/checkpoints/<method>``).
        out_path: the ``.onnx`` file to write (parent folders are created). The sidecar
            ``<out_path>.json`` (see :func:`meta_path_for`) gets ``schema``, ``preprocessing``,
            ``model``, ``method``, ``inputs``/``outputs``, ``opset`` and the file's ``sha256``.
        opset: ONNX opset version.
        batch_size: batch of the example input used for tracing (the exported batch axis is
            dynamic either way; 2 avoids torch.export specialising a size-1 axis).
        check: run ``onnx.checker`` on the written model.
        exporter: ``"auto"``, ``"torchscript"`` or ``"dynamo"`` (see :func:`_export`).

    Inputs/outputs: ``images`` float32 (B, 3, H, W) normalised with the sidecar's mean/std ->
    ``scores`` (B, M), ``probabilities`` (B, M), ``decisions`` (B, M) bool (p >= the
    checkpoint's thresholds, also in the sidecar's ``thresholds``).
    """
    from . import __version__
    from .predictor import checkpoint_spec, load_predictor

    _require("onnx", "ONNX export")
    predictor, meta = load_predictor(checkpoint)
    predictor = predictor.float().cpu().eval()
    spec = checkpoint_spec(meta, checkpoint)
    height, width = spec.input_shape
    out = Path(out_path)
    if out.is_dir():
        raise ValueError(f"out_path {out} is a folder; pass a file name such as model.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    module = _ExportModule(predictor).eval()
    example = torch.randn(batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))
    _export(module, example, out, opset, exporter)
    if check:
        import onnx

        onnx.checker.check_model(str(out))
    sidecar = {
        "format": ONNX_FORMAT,
        "apcnn_version": __version__,
        "source_checkpoint": str(checkpoint),
        "method": meta.get("method"),
        "model": spec.model_dict(),
        "schema": meta["schema"],
        "preprocessing": spec.preprocessing_dict(),
        "inputs": {INPUT_NAME: ["batch", 3, height, width]},
        "outputs": {name: ["batch", spec.num_attributes] for name in OUTPUT_NAMES},
        "opset": int(opset),
        "thresholds": [float(t) for t in predictor.threshold.tolist()],
        "decision_rule": "probabilities >= thresholds",
        "sha256": _sha256(out),
    }
    meta_path_for(out).write_text(json.dumps(sidecar, indent=2))
    return out


def _export(
    module: nn.Module, example: torch.Tensor, out: Path, opset: int, exporter: str = "auto"
) -> None:
    """torch.onnx.export with a dynamic batch axis.

    ``exporter``: ``"torchscript"`` (torch's TorchScript-based exporter: ~1 s for lite0, honours
    ``opset`` exactly; deprecated by torch but still shipped), ``"dynamo"`` (the torch.export-based
    exporter: needs ``onnxscript``, ~30x slower here and emits opset >= 18 when a lower opset
    cannot be converted), or ``"auto"``: torchscript, falling back to dynamo when it is missing
    or fails.
    """
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}")
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    errors = []
    for kind in order:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if kind == "torchscript":
                    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
                    torch.onnx.export(
                        module,
                        (example,),
                        str(out),
                        dynamo=False,
                        opset_version=opset,
                        input_names=[INPUT_NAME],
                        output_names=list(OUTPUT_NAMES),
                        dynamic_axes=axes,
                        do_constant_folding=True,
                    )
                else:
                    _require("onnxscript", "the dynamo ONNX exporter")
                    batch = torch.export.Dim("batch", min=1, max=4096)
                    torch.onnx.export(
                        module,
                        (example,),
                        str(out),
                        dynamo=True,
                        opset_version=opset,
                        input_names=[INPUT_NAME],
                        output_names=list(OUTPUT_NAMES),
                        dynamic_shapes={INPUT_NAME: {0: batch}},
                        external_data=False,
                        optimize=True,
                        verbose=False,
                    )
            return
        except Exception as e:  # noqa: BLE001 - try the next exporter, report all failures
            errors.append(f"{kind} exporter: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    raise RuntimeError("ONNX export failed; " + "; ".join(errors))


def load_onnx_meta(onnx_path: str | Path) -> dict[str, Any]:
    """The sidecar ``<onnx_path>.json`` written by :func:`export_onnx`."""
    path = meta_path_for(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; an exported model needs its .json sidecar (export again with "
            "'apcnn export', or pass meta=)"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != ONNX_FORMAT:
        raise ValueError(f"{path}: not an apcnn ONNX sidecar (format {meta.get('format')!r})")
    return meta


def verify_onnx(onnx_path: str | Path, meta: dict[str, Any]) -> None:
    """Check the ONNX file against the sha256 its sidecar recorded at export (a truncated,
    replaced or re-exported file fails here, in one line, not inside onnxruntime). A sidecar
    without ``sha256`` (hand-written ``meta=``) is not checked."""
    expected = meta.get("sha256")
    if not expected:
        return
    actual = _sha256(Path(onnx_path))
    if actual != expected:
        raise ValueError(
            f"{onnx_path}: its sha256 ({actual[:12]}...) is not the one its sidecar "
            f"{meta_path_for(onnx_path).name} recorded at export ({str(expected)[:12]}...); the "
            "file is truncated or was replaced: export it again with 'apcnn export'"
        )


def onnx_session(onnx_path: str | Path, *, threads: int | None = None) -> Any:
    """An onnxruntime CPU ``InferenceSession`` (``threads``: intra-op threads, None = default);
    a file onnxruntime cannot load gives a one-line :class:`ValueError` naming it."""
    ort = _require("onnxruntime", "running an ONNX model")
    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} not found; create it with 'apcnn export'")
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own (Fail, InvalidGraph...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(
            f"{path}: onnxruntime cannot load it ({first}); the file is damaged or not an ONNX "
            "model: export it again with 'apcnn export'"
        ) from None


def run_onnx(session_or_path: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported predictor: images (B, 3, H, W) float32 -> (scores (B, M), probs (B, M))."""
    session = (
        onnx_session(session_or_path)
        if isinstance(session_or_path, (str, Path))
        else session_or_path
    )
    x = np.ascontiguousarray(images, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {x.shape}")
    scores, probs = session.run(list(OUTPUT_NAMES[:2]), {INPUT_NAME: x})
    return scores, probs


def run_onnx_decisions(session: Any, images: np.ndarray) -> np.ndarray | None:
    """The graph's own ``decisions`` output (B, M) bool, or None for a model exported before
    it had one."""
    if "decisions" not in {o.name for o in session.get_outputs()}:
        return None
    x = np.ascontiguousarray(images, dtype=np.float32)
    return np.asarray(session.run(["decisions"], {INPUT_NAME: x})[0], dtype=bool)


def predict_onnx(
    onnx_path: str | Path,
    images: Sequence[str | Path],
    meta: dict[str, Any] | None = None,
    *,
    batch_size: int = 32,
    threshold: float | None = None,
) -> list[dict[str, Any]]:
    """``apcnn predict`` with an exported model: per image, per attribute score, calibrated
    probability, threshold and decision (the same structure as
    :func:`apcnn.inference.predict_images`): p >= the sidecar's ``thresholds`` (the exported
    checkpoint's; 0.5 for an older export), or ``threshold`` for every attribute when given.

    ``meta`` is the sidecar dict (default: read ``<onnx_path>.json``); its ``model`` and
    ``preprocessing`` give the :class:`~apcnn.models.spec.ModelSpec` whose evaluation transform
    the checkpoint path uses too.
    """
    from .data.images import open_rgb
    from .data.schema import AttributeSchema
    from .models.spec import ModelSpec
    from .predictor import decisions_from_scores, resolve_thresholds

    if not Path(onnx_path).is_file():
        raise FileNotFoundError(f"ONNX file {onnx_path} not found; create it with 'apcnn export'")
    meta = load_onnx_meta(onnx_path) if meta is None else meta
    for key in ("schema", "model", "preprocessing"):
        if key not in meta:
            raise ValueError(f"meta has no {key!r}; pass the sidecar written by export_onnx")
    if not images:
        raise ValueError("images is empty; pass at least one image file")
    transform = ModelSpec.from_meta(meta).eval_transform()
    verify_onnx(onnx_path, meta)
    session = onnx_session(onnx_path)
    scores, probs = [], []
    paths = [str(p) for p in images]
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        batch = torch.stack([transform(open_rgb(p)) for p in chunk]).numpy()
        s, p = run_onnx(session, batch)
        scores.append(s)
        probs.append(p)
    schema = AttributeSchema.from_dict(meta["schema"])
    thresholds, _ = resolve_thresholds(meta.get("thresholds"), schema.num_attributes, threshold)
    items = decisions_from_scores(np.concatenate(scores), np.concatenate(probs), schema, thresholds)
    for path, item in zip(paths, items, strict=True):
        item["image"] = path
    return items
