"""Checkpoints: safetensors for tensors, JSON for everything else, atomic writes, no pickle.

Layout of a checkpoint directory ``CKPT/``::

    CKPT/meta.json                        config, schema, preprocessing, versions, tensor hash
    CKPT/tensors-<sha256[:16]>.safetensors all tensors (model weights, optimizer state, RNG)

The tensor file is content-addressed: a save streams the new tensor file, one tensor at a time
(so memory does not grow with the state's size), under its own name (temporary file, sha256
while writing, fsync, ``os.replace``), then replaces ``meta.json`` (which names the file and its
sha256) in one atomic rename, then deletes the superseded tensor file. A crash at any point leaves
either the previous checkpoint or the new one, both complete and verifiable; never a meta.json that
points at the wrong tensors. ``meta.json`` also carries a sha256 of its own canonical content.

:func:`load_checkpoint` reads only JSON and safetensors (never ``pickle``/``torch.load``),
verifies format version, file size and both hashes, and raises :class:`CheckpointError` naming
the file, the problem and what to do.

Training state for exact resume (optimizer, scheduler, GradScaler state dicts, RNG states) goes
through :func:`flatten_state_dict` / :func:`unflatten_state_dict`: nested dicts/lists/tuples of
tensors, numpy arrays, ints, floats (incl. inf/nan), bools, None and strings become a flat
``{key: tensor}`` mapping plus a JSON structure that references the keys.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apcnn.runlog import _fsync_dir, atomic_path, atomic_write_bytes, to_jsonable

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "FORMAT",
    "FORMAT_VERSION",
    "META_FILE",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_meta",
    "checkpoint_meta",
    "flatten_state_dict",
    "unflatten_state_dict",
    "capture_rng_state",
    "restore_rng_state",
]

FORMAT = "apcnn-checkpoint"
FORMAT_VERSION = 1
META_FILE = "meta.json"
_TENSOR_RE = re.compile(r"^tensors-[0-9a-f]{16}\.safetensors$")
#: top-level meta.json keys owned by save_checkpoint (the rest is the caller's meta)
RESERVED_KEYS = frozenset({"checkpoint", "meta_sha256"})


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, modified or from an incompatible version."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at the path (no directory, or no meta.json: a first save never finished).

    Catch ``FileNotFoundError`` to mean "nothing to resume from"."""


# ------------------------------------------------------------------------------------------ save
def _dtype_table() -> dict[torch.dtype, tuple[str, int]]:
    """torch dtype -> (safetensors dtype name, rank). The rank is the position in the Rust
    crate's ``Dtype`` enum (declared in increasing alignment), which ``safetensors`` sorts by
    (descending, then by name) when it lays out a file; using the same order makes a streamed
    file byte-identical to ``safetensors.torch.save`` (tests/test_checkpoint.py checks it)."""
    order = [  # ascending, as in the crate; F4 and F8_E8M0 left out: safetensors 0.8 writes
        ("BOOL", "bool"),  # them but cannot load them (and F4's shape counts nibbles)
        ("U8", "uint8"),
        ("I8", "int8"),
        ("F8_E5M2", "float8_e5m2"),
        ("F8_E4M3", "float8_e4m3fn"),
        ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
        ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
        ("I16", "int16"),
        ("U16", "uint16"),
        ("F16", "float16"),
        ("BF16", "bfloat16"),
        ("I32", "int32"),
        ("U32", "uint32"),
        ("F32", "float32"),
        ("C64", "complex64"),
        ("F64", "float64"),
        ("I64", "int64"),
        ("U64", "uint64"),
    ]
    return {
        getattr(torch, attr): (name, rank)
        for rank, (name, attr) in enumerate(order)
        if isinstance(getattr(torch, attr, None), torch.dtype)
    }


_DTYPES = _dtype_table()
#: byte-swap unit per dtype on a big-endian host (complex64 is two float32)
_WORD = {torch.complex64: 4}
_UINT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _ordered_tensors(tensors: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """Check names and tensors; return them in safetensors' file order (by descending dtype
    alignment, then name: str order is UTF-8 byte order, as in Rust). Nothing is copied."""
    for k, t in tensors.items():
        if not isinstance(k, str):
            raise TypeError(f"checkpoint tensor names must be str, got {k!r}")
        if k == "__metadata__":
            raise ValueError("checkpoint tensor name '__metadata__' is reserved by safetensors")
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"checkpoint tensor {k!r} is a {type(t).__name__}, not a torch.Tensor; put "
                "non-tensor values into meta"
            )
        if t.layout != torch.strided:
            raise TypeError(f"checkpoint tensor {k!r} is sparse; call .to_dense() first")
        if t.dtype not in _DTYPES:
            raise TypeError(
                f"checkpoint tensor {k!r} has dtype {t.dtype}, which safetensors cannot "
                "store and load; convert it first"
            )
    return sorted(tensors.items(), key=lambda kv: (-_DTYPES[kv[1].dtype][1], kv[0]))


def _header(items: list[tuple[str, torch.Tensor]]) -> bytes:
    """The 8-byte little-endian length and the JSON header, padded with spaces to a multiple of
    8, encoded as serde_json does (compact, non-ASCII kept, the same escapes as ``json``)."""
    header: dict[str, Any] = {}
    offset = 0
    for k, t in items:
        n = t.numel() * t.element_size()
        header[k] = {
            "dtype": _DTYPES[t.dtype][0],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    try:
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"checkpoint tensor names must be valid unicode: {e}") from None
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of one tensor (on the CPU), a view where possible: a CPU
    contiguous tensor is not copied; a CUDA one is copied to the host, one tensor at a time."""
    t = t.detach().to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1)
    if sys.byteorder == "little":
        return memoryview(t.view(torch.uint8).numpy())
    word = _WORD.get(t.dtype, t.element_size())  # pragma: no cover - big-endian hosts
    return memoryview(t.view(_UINT[word]).numpy().byteswap())  # pragma: no cover


def _write_tensor_file(
    directory: Path, tensors: Mapping[str, torch.Tensor]
) -> tuple[str, str, int]:
    """Stream ``tensors`` as a safetensors file into ``directory``: header, then one tensor at
    a time into a temporary file, hashed as written; fsync; rename to
    ``tensors-<sha256[:16]>.safetensors``. Peak extra memory is about one tensor (a CUDA
    tensor's host copy; none for CPU tensors), not the whole state as with
    ``safetensors.torch.save``, which builds the file in memory. Returns (name, sha256, bytes).
    """
    items = _ordered_tensors(tensors)
    digest, size = hashlib.sha256(), 0

    def final_name() -> str:
        return f"tensors-{digest.hexdigest()[:16]}.safetensors"

    with atomic_path(directory / "tensors", final_name=final_name) as tmp, open(tmp, "wb") as f:
        for chunk in itertools.chain(
            [memoryview(_header(items))], (_tensor_bytes(t) for _, t in items)
        ):
            f.write(chunk)
            digest.update(chunk)
            size += chunk.nbytes
    sha = digest.hexdigest()
    return final_name(), sha, size


def _canonical(meta: Mapping[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def checkpoint_meta(
    *,
    config: Any = None,
    schema: Any = None,
    preprocessing: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The conventional meta dict: ``{"config", "schema", "preprocessing", **extra}``.

    ``config`` may be a dataclass (see :mod:`apcnn.config`), ``schema`` an
    :class:`~apcnn.data.schema.AttributeSchema` (stored via ``to_dict``), ``preprocessing`` e.g.
    ``{"mean": [...], "std": [...], "image_size": 224}``.
    """
    meta: dict[str, Any] = {
        "config": to_jsonable(config),
        "schema": to_jsonable(schema),
        "preprocessing": to_jsonable(preprocessing),
    }
    meta.update(extra)
    return meta


def save_checkpoint(
    path: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> Path:
    """Write ``tensors`` and ``meta`` to the checkpoint directory ``path`` atomically.

    meta.json holds the caller's ``meta`` plus::

        "checkpoint": {"format": "apcnn-checkpoint", "format_version": 1, "apcnn_version",
                       "torch_version", "created_utc",
                       "tensor_file": {"name", "sha256", "bytes"}},
        "meta_sha256": sha256 of the canonical JSON of everything else

    Args:
        path: checkpoint directory (created; an existing checkpoint there is replaced).
        tensors: ``{name: tensor}``, streamed to the file one tensor at a time (CUDA tensors
            are copied to the host one at a time); the file is byte-identical to
            ``safetensors.torch.save``'s. Storage-sharing tensors are stored twice.
        meta: JSON-serialisable dict (dataclasses, objects with ``to_dict``, numpy/torch
            scalars, Paths are converted; non-finite floats become null). Conventionally
            :func:`checkpoint_meta` output. The keys ``checkpoint`` and ``meta_sha256`` are
            reserved; a meta returned by :func:`load_checkpoint` can be saved again as is.

    Returns:
        the path of the directory.
    """
    import apcnn

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"checkpoint path {str(path)!r} is a file; pass a directory path")
    body = dict(meta)
    own = body.get("checkpoint")
    if isinstance(own, Mapping) and own.get("format") == FORMAT:  # re-saving a loaded meta
        body.pop("checkpoint")
        body.pop("meta_sha256", None)
    clash = sorted(RESERVED_KEYS & set(body))
    if clash:
        raise ValueError(f"meta uses reserved checkpoint keys {clash}; rename them")
    body = dict(to_jsonable(body))
    _canonical(body)  # reject bad meta and bad tensors before writing anything
    _ordered_tensors(tensors)
    path.mkdir(parents=True, exist_ok=True)
    name, digest, size = _write_tensor_file(path, tensors)  # 1. new tensors under a new name
    full = {
        "checkpoint": {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "apcnn_version": apcnn.__version__,
            "torch_version": torch.__version__,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tensor_file": {"name": name, "sha256": digest, "bytes": size},
        },
        **body,
    }
    full["meta_sha256"] = hashlib.sha256(_canonical(full)).hexdigest()
    meta_bytes = (json.dumps(full, indent=2, allow_nan=False) + "\n").encode("utf-8")

    atomic_write_bytes(path / META_FILE, meta_bytes)  # 2. switch: meta names the new file
    for old in path.iterdir():  # 3. drop superseded tensor files and stale temporaries
        if old.name != name and (_TENSOR_RE.match(old.name) or old.name.endswith(".tmp")):
            try:
                old.unlink()
            except OSError:
                pass
    _fsync_dir(path)
    return path


# ------------------------------------------------------------------------------------------ load
def _meta_path(path: Path) -> Path:
    if path.is_file() and path.name == META_FILE:
        return path
    if not path.exists():
        raise CheckpointNotFoundError(
            f"checkpoint {str(path)!r} does not exist; pass the checkpoint directory (with "
            f"{META_FILE}) written by training"
        )
    if not path.is_dir():
        raise CheckpointError(
            f"{str(path)!r} is not a checkpoint directory; pass the directory that holds "
            f"{META_FILE}"
        )
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointNotFoundError(
            f"{str(meta_path)!r} is missing: {str(path)!r} is not an apcnn checkpoint (or its "
            "first save was interrupted); point to a complete checkpoint or train again"
        )
    return meta_path


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """Read and verify ``meta.json`` (format, version, self-hash) without loading tensors.

    Returns the caller's meta plus the ``"checkpoint"`` block (format, versions, tensor file).
    """
    meta_path = _meta_path(Path(path))
    where = repr(str(meta_path))
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{where} is not valid JSON ({e}): the file is truncated or corrupted; restore the "
            "checkpoint from a copy or train again"
        ) from None
    own = meta.get("checkpoint") if isinstance(meta, dict) else None
    if not isinstance(own, dict) or own.get("format") != FORMAT:
        raise CheckpointError(
            f"{where} is not an apcnn checkpoint (no 'checkpoint' block with format {FORMAT!r}); "
            "pass a directory written by apcnn's save_checkpoint"
        )
    version = own.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{where} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has checkpoint format {version}, this apcnn ({_version()}) reads up to "
            f"{FORMAT_VERSION}; upgrade apcnn (written by {own.get('apcnn_version')})"
        )
    stored = meta.pop("meta_sha256", None)
    if stored is None or hashlib.sha256(_canonical(meta)).hexdigest() != stored:
        raise CheckpointError(
            f"{where} was modified after it was saved (meta_sha256 does not match); restore it "
            "from a copy, or load the tensors and save a new checkpoint"
        )
    return meta


def _version() -> str:
    import apcnn

    return apcnn.__version__


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify a checkpoint directory (or its ``meta.json``): ``(tensors, meta)``.

    Checks: format and version, the tensor file's size and sha256, meta.json's own hash. Only
    ``json`` and ``safetensors`` parse bytes; nothing is unpickled. The bytes that are hashed
    are the bytes that are parsed (the file is read once).

    Returns:
        ``tensors`` (on ``device``) and ``meta``: the caller's meta plus the ``"checkpoint"``
        block.

    Raises:
        CheckpointNotFoundError (a FileNotFoundError): nothing at ``path``, or no meta.json.
        CheckpointError: truncated/modified/missing files, incompatible version.
    """
    import safetensors.torch

    meta = read_checkpoint_meta(path)
    meta_path = _meta_path(Path(path))
    info = meta["checkpoint"].get("tensor_file") or {}
    name = info.get("name")
    if not isinstance(name, str) or not _TENSOR_RE.match(name):
        raise CheckpointError(f"{str(meta_path)!r} names no valid tensor file ({name!r})")
    tpath = meta_path.parent / name
    if not tpath.is_file():
        raise CheckpointError(
            f"{str(tpath)!r} is missing (named by {str(meta_path)!r}); the checkpoint directory "
            "is incomplete: copy the whole directory, or train again"
        )
    data = tpath.read_bytes()
    if len(data) != info.get("bytes"):
        raise CheckpointError(
            f"{str(tpath)!r} is truncated or padded: {len(data)} bytes, expected "
            f"{info.get('bytes')}; restore it from a copy or train again"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.get("sha256"):
        raise CheckpointError(
            f"{str(tpath)!r} is corrupted or was modified: sha256 {digest[:16]}... does not "
            f"match {str(info.get('sha256'))[:16]}... in {META_FILE}; restore it from a copy or "
            "train again"
        )
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{str(tpath)!r} is not a valid safetensors file: {e}") from None
    del data
    if torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, meta


# ------------------------------------------------------------------- state dicts without pickle
_T, _ND, _TUP, _DICT, _FLOAT = "__tensor__", "__ndarray__", "__tuple__", "__dict__", "__float__"
_MARKERS = {_T, _ND, _TUP, _DICT, _FLOAT}


def flatten_state_dict(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state into ``({key: tensor}, JSON structure)``.

    ``state``: dicts (any str/int/float/bool/None keys), lists, tuples, tensors, numpy arrays,
    numpy scalars, int, float (incl. inf/nan), bool, None, str — e.g. the ``state_dict()`` of a
    torch optimizer, LR scheduler or GradScaler, or :func:`capture_rng_state`. Tensor keys are
    ``prefix + "/".join(path)``. The structure is strict JSON; tensors appear as
    ``{"__tensor__": key}``, numpy arrays as ``{"__ndarray__": key}``, tuples as
    ``{"__tuple__": [...]}``, dicts with non-str keys as ``{"__dict__": [[key, value], ...]}``,
    non-finite floats as ``{"__float__": "nan"}``.
    """
    tensors: dict[str, torch.Tensor] = {}

    def key_for(path: list[str]) -> str:
        base = prefix + "/".join(path) if path else prefix + "_"
        key, n = base, 1
        while key in tensors:
            key, n = f"{base}#{n}", n + 1
        return key

    def enc(v: Any, path: list[str]) -> Any:
        if isinstance(v, torch.Tensor):
            k = key_for(path)
            tensors[k] = v.detach()
            return {_T: k}
        if isinstance(v, np.ndarray):
            k = key_for(path)
            tensors[k] = torch.from_numpy(np.ascontiguousarray(v).copy())
            return {_ND: k}
        if isinstance(v, np.generic):
            v = v.item()
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else {_FLOAT: repr(v)}
        if isinstance(v, tuple):
            return {_TUP: [enc(x, [*path, str(i)]) for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [enc(x, [*path, str(i)]) for i, x in enumerate(v)]
        if isinstance(v, Mapping):
            if all(isinstance(k, str) for k in v) and not (_MARKERS & set(v)):
                return {k: enc(x, [*path, k]) for k, x in v.items()}
            items = []
            for k, x in v.items():
                if not (k is None or isinstance(k, (bool, int, float, str))):
                    raise TypeError(
                        f"state key {k!r} at {'/'.join(path) or '<root>'} is a "
                        f"{type(k).__name__}; only str/int/float/bool/None keys are supported"
                    )
                items.append([k, enc(x, [*path, str(k)])])
            return {_DICT: items}
        raise TypeError(
            f"cannot store a {type(v).__name__} at {'/'.join(path) or '<root>'} without pickle; "
            "supported: tensors, numpy arrays, dict, list, tuple, int, float, bool, None, str"
        )

    structure = enc(state, [])
    return tensors, structure


def unflatten_state_dict(tensors: Mapping[str, torch.Tensor], structure: Any) -> Any:
    """Inverse of :func:`flatten_state_dict`.

    Raises:
        CheckpointError: a referenced tensor is missing or the structure is malformed.
    """

    def get(k: str) -> torch.Tensor:
        if k not in tensors:
            raise CheckpointError(
                f"saved state references tensor {k!r}, which the checkpoint does not contain; "
                "the checkpoint is incomplete, train again or resume from an earlier one"
            )
        return tensors[k]

    def dec(v: Any) -> Any:
        if isinstance(v, list):
            return [dec(x) for x in v]
        if isinstance(v, dict):
            if len(v) == 1:
                ((tag, x),) = v.items()
                if tag == _T:
                    return get(x)
                if tag == _ND:
                    return get(x).numpy().copy()
                if tag == _TUP:
                    return tuple(dec(y) for y in x)
                if tag == _DICT:
                    return {k: dec(y) for k, y in x}
                if tag == _FLOAT:
                    return float(x)
            return {k: dec(x) for k, x in v.items()}
        return v

    return dec(structure)


# ------------------------------------------------------------------------------------ RNG state
def capture_rng_state() -> dict[str, Any]:
    """RNG states of python ``random``, NumPy's global generator, torch CPU and (if initialised)
    every CUDA device, as a nested dict that :func:`flatten_state_dict` stores without pickle."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the global RNG
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": np.asarray(keys),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (after :func:`unflatten_state_dict`).

    CUDA states are restored for as many devices as both the saved state and this machine have.
    """
    py = state["python"]
    random.setstate((int(py[0]), tuple(int(x) for x in py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002 - the global RNG
        (
            str(n["kind"]),
            np.asarray(n["keys"], dtype=np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    cpu = state["torch_cpu"]
    torch.set_rng_state(torch.as_tensor(cpu, dtype=torch.uint8).cpu())
    cuda = state.get("torch_cuda")
    if cuda and torch.cuda.is_available():
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.as_tensor(s, dtype=torch.uint8).cpu(), i)
