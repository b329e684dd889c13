"""Fast feature extraction and an on-disk feature cache.

``extract_features(fn, dataset, ...)`` runs ``fn`` (a module or function mapping a batch of images
(B, 3, H, W) to a tensor (B, ...)) over a dataset and returns the stacked outputs (N, ...) in
dataset order, as float32 on the CPU. Fast path: ``torch.inference_mode``, channels-last input,
batched forward passes (optionally micro-batches), optional autocast (bf16 on CPU), a
``DataLoader`` with worker processes, progress report (:func:`apcnn.runlog.progress`).

``FeatureCache(root).get_or_compute(key_parts, compute_fn)`` memoises such a tensor on disk as
``<sha256 of key parts>.safetensors`` (plus ``.json`` with the key parts), written atomically.
Changing any key part (dataset ``cache_key()``, backbone name, weights sha256, transform
description, trunk split...) gives a new file; a corrupt or truncated file is recomputed with a
warning. The dataset part changes when an image file is edited, replaced, emptied or truncated
(``AttributeDataset.cache_key`` includes each file's size and modification time).
``FeatureCache.entries()`` / ``clear()`` and :func:`format_cache_info` serve ``apcnn cache
info`` / ``apcnn cache clear``.

Datasets follow the apcnn contract: ``dataset[i]`` is a dict with at least ``image`` (3, H, W)
float tensor and ``index`` (int64 scalar, equal to ``i``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .devices import autocast_dtype
from .runlog import atomic_path, atomic_write_bytes

__all__ = [
    "CPU_MICRO_BATCH",
    "CacheEntry",
    "FeatureCache",
    "extract_features",
    "format_cache_info",
    "key_digest",
]

CPU_MICRO_BATCH = 4
"""Images per forward pass on the CPU with ``micro_batch="auto"`` (see ``extract_features``)."""


def _collate_images(items: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``image`` and ``index`` only (other fields are not needed for features)."""
    images = torch.stack([it["image"] for it in items])
    index = torch.as_tensor([int(it["index"]) for it in items], dtype=torch.int64)
    return images, index


def extract_features(
    module_fn: Callable[[torch.Tensor], torch.Tensor],
    dataset: Any,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    amp: bool | torch.dtype | None = False,
    progress: bool = False,
    channels_last: bool = True,
    micro_batch: int | str | None = None,
    desc: str = "features",
) -> torch.Tensor:
    """Apply ``module_fn`` to every image of ``dataset``; returns (N, ...) float32 on the CPU.

    Args:
        module_fn: images (B, 3, H, W) on ``device`` -> (B, ...). An ``nn.Module`` (or a bound
            method of one, e.g. ``cnn.forward_trunk``) is put in eval mode for the call and its
            mode restored afterwards.
        dataset: ``len(dataset)`` items, ``dataset[i]["image"]`` (3, H, W), ``["index"] == i``.
        batch_size: images per loaded batch (DataLoader); see ``micro_batch`` for the forward.
        num_workers: DataLoader worker processes (0 = load in this process).
        device: where ``module_fn`` runs.
        amp: autocast: ``True`` = bf16 on CPU / fp16 on CUDA, or an explicit dtype; False = off.
        progress: show progress (:func:`apcnn.runlog.progress`).
        channels_last: feed images in channels-last memory format (faster convolutions).
        micro_batch: images per forward pass within a loaded batch: None (default) the whole
            batch; an int; or ``"auto"``: ``CPU_MICRO_BATCH`` on the CPU, the whole batch
            elsewhere. Small passes keep activations in cache and do less work per image on
            one CPU thread (tf_efficientnet_lite0, 224 px: 1.1-1.6x more images per
            CPU-second at 4 than at 32), but with several threads whole batches parallelise
            better, so they are the default.
        desc: progress bar label.

    Row i of the result is the output for ``dataset[i]`` (rows are placed by ``index``).
    The result is an ordinary tensor (not an inference tensor), usable in autograd.
    """
    from torch.utils.data import DataLoader

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    n = len(dataset)
    dev = torch.device(device)
    cast = autocast_dtype(amp, dev)
    if micro_batch == "auto":
        step = CPU_MICRO_BATCH if dev.type == "cpu" else batch_size
    elif micro_batch is None:
        step = batch_size
    elif isinstance(micro_batch, int) and not isinstance(micro_batch, bool) and micro_batch >= 1:
        step = micro_batch
    else:
        raise ValueError(f"micro_batch must be 'auto', None or an int >= 1, got {micro_batch!r}")
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_images,
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
    )
    # a module, or a bound method of one (e.g. ``cnn.forward_trunk``), runs in eval mode
    owner = module_fn if isinstance(module_fn, torch.nn.Module) else None
    if owner is None and isinstance(getattr(module_fn, "__self__", None), torch.nn.Module):
        owner = module_fn.__self__  # type: ignore[attr-defined]
    was_training = None
    if owner is not None:
        was_training = owner.training
        owner.eval()
    out: torch.Tensor | None = None
    seen = torch.zeros(n, dtype=torch.bool)
    bar = None
    if progress:
        from .runlog import progress as progress_bar

        bar = progress_bar(total=n, desc=desc, unit="img")
    try:
        with torch.inference_mode():
            for images, index in loader:
                for start in range(0, len(index), step):
                    x = images[start : start + step].to(dev, non_blocking=True)
                    idx = index[start : start + step]
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    if cast is not None:
                        with torch.autocast(dev.type, dtype=cast):
                            y = module_fn(x)
                    else:
                        y = module_fn(x)
                    y = y.float().cpu()
                    if out is None:
                        with torch.inference_mode(False):
                            out = torch.empty((n, *y.shape[1:]), dtype=torch.float32)
                    out[idx] = y
                    seen[idx] = True
                if bar is not None:
                    bar.update(len(index))
    finally:
        if bar is not None:
            bar.close()
        if owner is not None:
            owner.train(bool(was_training))
    if out is None:
        raise ValueError("dataset is empty; nothing to extract")
    if not bool(seen.all()):
        _uncovered_rows(dataset, (~seen).nonzero().flatten().tolist())
    return out


def _uncovered_rows(dataset: Any, rows: list[int]) -> None:
    """Raise the error for rows no item was returned for. With ``skip_bad_images`` a dataset
    replaces an image that fails to decode by the next good one (its ``index``), so the bad
    image's row has no features: name it and the fix (drop bad images when the dataset is built,
    ``check_images=True``, which ``data.skip_bad_images`` in training does)."""
    if getattr(dataset, "skip_bad_images", False):
        from .data.errors import CorruptImageError

        path = dataset.image_path(rows[0]) if hasattr(dataset, "image_path") else None
        raise CorruptImageError(
            f"{path or f'sample {rows[0]}'}: {len(rows)} image(s) failed to load during feature "
            "extraction and skip_bad_images cannot drop them here; build the dataset with "
            "check_images=True (bad images are then dropped up front) or fix the files "
            "(apcnn data verify)"
        )
    raise ValueError("dataset items' 'index' fields do not cover 0..len(dataset)-1")


def _canonical(key_parts: Mapping[str, Any]) -> str:
    if not isinstance(key_parts, Mapping) or not key_parts:
        raise ValueError("key_parts must be a non-empty dict of JSON-serialisable values")
    try:
        return json.dumps(dict(key_parts), sort_keys=True, separators=(",", ":"), default=None)
    except TypeError as exc:
        raise TypeError(
            f"key_parts must be JSON-serialisable ({exc}); convert values to str"
        ) from exc


def key_digest(key_parts: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``key_parts`` (sorted keys)."""
    return hashlib.sha256(_canonical(key_parts).encode()).hexdigest()


_ENTRY = re.compile(r"^[0-9a-f]{64}\.safetensors$")
_LEFTOVER = re.compile(r"^\.[0-9a-f]{64}\.(safetensors|json)\..*\.tmp$")


@dataclass(frozen=True)
class CacheEntry:
    """One cached tensor: ``path`` (``<digest>.safetensors``), ``size`` in bytes (with its
    ``.json``), ``modified`` (Unix time), and from the ``.json``: ``key_parts``, ``shape``,
    ``dtype`` (None when the ``.json`` is missing or unreadable)."""

    digest: str
    path: Path
    size: int
    modified: float
    key_parts: dict[str, Any] | None
    shape: list[int] | None
    dtype: str | None

    def summary(self) -> str:
        """One line: digest, shape, size, date and the key parts a person can read."""
        key = self.key_parts or {}
        parts = [f"{k}={key[k]}" for k in ("backbone", "tail") if k in key]
        parts += [k for k in ("adapted", "mirrored", "flip_average", "pool_region") if k in key]
        if "dataset" in key:
            parts.append(f"dataset={str(key['dataset'])[:12]}")
        shape = "x".join(map(str, self.shape)) if self.shape else "?"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.modified))
        key_text = " ".join(parts) or "(no key file)"
        return f"{self.digest[:12]}  {shape:<18} {_mib(self.size):>9}  {when}  {key_text}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class FeatureCache:
    """Directory of cached feature tensors keyed by a dict of key parts.

    ``root/<digest>.safetensors`` holds the tensor under the name ``"features"`` and the
    canonical key JSON in its metadata; ``root/<digest>.json`` records the key parts, shape and
    dtype for people. ``digest = key_digest(key_parts)``.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def path(self, key_parts: Mapping[str, Any]) -> Path:
        """Where the tensor for ``key_parts`` lives."""
        return self.root / f"{key_digest(key_parts)}.safetensors"

    def load(self, key_parts: Mapping[str, Any]) -> torch.Tensor | None:
        """The cached tensor, or None when absent; a corrupt file warns and returns None."""
        from safetensors import safe_open

        path = self.path(key_parts)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                if meta.get("key") != _canonical(key_parts):
                    raise ValueError("stored key differs from the requested key")
                return f.get_tensor("features")
        except Exception as exc:  # truncated, corrupt, foreign file
            warnings.warn(
                f"feature cache file {path} is unreadable ({type(exc).__name__}: {exc}); "
                "recomputing it",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    def save(self, key_parts: Mapping[str, Any], tensor: torch.Tensor) -> Path:
        """Write ``tensor`` for ``key_parts`` atomically (temporary file, then ``os.replace``)."""
        from safetensors.torch import save_file

        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"compute_fn must return a torch.Tensor, got {type(tensor).__name__}")
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key_parts)
        key = _canonical(key_parts)
        data = tensor.detach().cpu().contiguous()
        with atomic_path(path) as tmp:
            save_file({"features": data}, str(tmp), metadata={"key": key})
        info = {
            "key_parts": json.loads(key),
            "shape": list(data.shape),
            "dtype": str(data.dtype).replace("torch.", ""),
            "file": path.name,
        }

        text = json.dumps(info, indent=2, sort_keys=True)
        atomic_write_bytes(path.with_suffix(".json"), text.encode())
        return path

    def entries(self) -> list[CacheEntry]:
        """The cached tensors in :attr:`root`, oldest first (files of other names are ignored)."""
        if not self.root.is_dir():
            return []
        out = []
        for path in self.root.iterdir():
            if not _ENTRY.match(path.name):
                continue
            side = path.with_suffix(".json")
            try:
                st = path.stat()
            except OSError:  # removed meanwhile
                continue
            size = st.st_size + (side.stat().st_size if side.is_file() else 0)
            info: dict[str, Any] = {}
            try:
                info = json.loads(side.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
            out.append(
                CacheEntry(
                    digest=path.stem,
                    path=path,
                    size=size,
                    modified=st.st_mtime,
                    key_parts=info.get("key_parts"),
                    shape=info.get("shape"),
                    dtype=info.get("dtype"),
                )
            )
        return sorted(out, key=lambda e: (e.modified, e.digest))

    def clear(self) -> tuple[int, int]:
        """Delete every cached tensor, its ``.json`` and leftover temporary files of interrupted
        writes; other files in :attr:`root` stay. Returns (entries deleted, bytes freed)."""
        count, freed = 0, 0
        for entry in self.entries():
            for path in (entry.path, entry.path.with_suffix(".json")):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
            count, freed = count + 1, freed + entry.size
        if self.root.is_dir():
            for path in self.root.iterdir():
                if _LEFTOVER.match(path.name) or (
                    path.suffix == ".json" and _ENTRY.match(path.stem + ".safetensors")
                ):
                    try:
                        size = path.stat().st_size
                        path.unlink()
                    except FileNotFoundError:
                        continue
                    freed += size
        return count, freed

    def get_or_compute(
        self, key_parts: Mapping[str, Any], compute_fn: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """The cached tensor for ``key_parts``; computed with ``compute_fn()`` and stored when
        it is missing or unreadable."""
        cached = self.load(key_parts)
        if cached is not None:
            return cached
        tensor = compute_fn()
        self.save(key_parts, tensor)
        return tensor.detach().cpu()


def format_cache_info(cache: FeatureCache) -> str:
    """``apcnn cache info``: the folder, the number of entries and their total size, then one
    line per entry (:meth:`CacheEntry.summary`)."""
    entries = cache.entries()
    total = sum(e.size for e in entries)
    lines = [
        f"feature cache: {cache.root}",
        f"entries: {len(entries)}, total {_mib(total)}"
        + ("" if cache.root.is_dir() else " (folder does not exist yet)"),
    ]
    if entries:
        lines.append(f"{'digest':<12}  {'shape':<18} {'size':>9}  {'modified':<16}  key")
        lines += [e.summary() for e in entries]
        lines.append("free the space with: apcnn cache clear")
    return "\n".join(lines)
