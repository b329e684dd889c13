"""Run-folder utilities: logging, metric lines, atomic JSON, environment record, seeding.

A run folder ``OUT`` holds::

    OUT/train.log          human-readable log (rank 0 only)
    OUT/metrics.jsonl      one JSON object per :meth:`RunDir.log_metrics` call
    OUT/environment.json   versions, device, seed, command line, git commit
    OUT/<name>.json        anything saved with :meth:`RunDir.save_json` (atomic)

Only rank 0 (``RANK`` environment variable of ``torch.distributed``, or the ``rank`` argument)
writes files or logs to the console, so every rank can hold a :class:`RunDir` for the same folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RunDir",
    "atomic_write_bytes",
    "atomic_write_json",
    "to_jsonable",
    "read_metrics",
    "environment_info",
    "seed_everything",
    "seed_worker",
    "current_rank",
    "progress",
]


# ----------------------------------------------------------------------------------- file helpers
def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, final_name: Callable[[], str] | None = None) -> Iterator[Path]:
    """A temporary file beside ``path`` to write to; on success it is fsynced and renamed over
    ``path`` (``os.replace``), on an exception removed. The one atomic-write primitive of the
    package: a reader sees either the old file or the complete new one, never a partial write.
    The file gets the usual permissions (0666 less the umask), not mkstemp's 0600.
    ``final_name``: for a name known only once the content is written (a content hash), called
    after the body; the file then lands at ``path.parent / final_name()``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path if final_name is None else path.parent / final_name())
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask can only be read by setting it


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values from numpy/torch scalars and arrays, Paths, dataclasses, tuples.

    Non-finite floats become ``None`` (null), so the output is strict JSON.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    mod = type(obj).__module__
    if mod.startswith("torch"):
        if hasattr(obj, "detach"):
            return to_jsonable(obj.detach().cpu().tolist())
        return str(obj)  # torch.device, torch.dtype
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON; convert it to plain values")


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """``to_jsonable(obj)`` as strict JSON (``allow_nan=False``), written atomically."""
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False, sort_keys=False)
    return atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` file (or of the one inside a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def current_rank() -> int:
    """Process rank from torch.distributed (if initialised) or the ``RANK`` variable, else 0."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None:
        try:
            if dist.is_available() and dist.is_initialized():
                return int(dist.get_rank())
        except Exception:  # pragma: no cover - defensive
            pass
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


# ----------------------------------------------------------------------------------- environment
def _git_commit(cwd: Path) -> dict[str, Any] | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment_info(seed: int | None = None, extra: Mapping[str, Any] | None = None) -> dict:
    """Versions (python, torch, numpy, timm, apcnn), device, seed, command line, git commit."""
    import torch

    import apcnn

    cuda = torch.cuda.is_available()
    n_dev = torch.cuda.device_count() if cuda else 0
    devices = [torch.cuda.get_device_name(i) for i in range(n_dev)]
    info: dict[str, Any] = {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "apcnn": apcnn.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "timm": _dist_version("timm"),
        "torchvision": _dist_version("torchvision"),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "devices": devices or ["cpu"],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
        "command": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "git": _git_commit(Path(apcnn.__file__).resolve().parent),
    }
    if extra:
        info.update(extra)
    return info


# ---------------------------------------------------------------------------------------- seeding
def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed python ``random``, NumPy's global RNG and torch (CPU and every CUDA device).

    With ``deterministic=True`` also ``torch.use_deterministic_algorithms(True, warn_only=True)``,
    cuDNN deterministic/no benchmark and ``CUBLAS_WORKSPACE_CONFIG`` (GPU runs), so two CPU runs
    with the same seed give identical numbers. These are process-wide settings.
    """
    import torch

    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    os.environ["PYTHONHASHSEED"] = str(seed)  # affects child processes (DataLoader workers)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the global RNG
    torch.manual_seed(seed)  # seeds CUDA too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=seed_worker)``: derive numpy/random seeds from torch's."""
    import torch

    s = torch.initial_seed() % 2**32
    np.random.seed(s)  # noqa: NPY002 - the global RNG
    random.seed(s)


# ----------------------------------------------------------------------------------------- RunDir
class RunDir:
    """A run output folder with a logger, a metrics stream and atomic JSON writes.

    Args:
        out: folder, created if missing.
        rank: process rank; default :func:`current_rank`. Only rank 0 writes.
        console: also log to stderr (rank 0).
        level: logging level.

    Use as a context manager (or call :meth:`close`) to release the log file.
    """

    _count = 0

    def __init__(
        self,
        out: str | Path,
        *,
        rank: int | None = None,
        console: bool = True,
        level: int = logging.INFO,
    ) -> None:
        self.path = Path(out)
        self.rank = current_rank() if rank is None else int(rank)
        self.is_main = self.rank == 0
        if self.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
        RunDir._count += 1
        self.logger = logging.getLogger(f"apcnn.run.{RunDir._count}")
        self.logger.setLevel(level)
        self.logger.propagate = False
        self._handlers: list[logging.Handler] = []
        if self.is_main:
            fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
            fh = logging.FileHandler(self.path / "train.log", encoding="utf-8")
            fh.setFormatter(fmt)
            self._handlers.append(fh)
            if console:
                sh = _ConsoleHandler()
                sh.setFormatter(logging.Formatter("%(message)s"))
                self._handlers.append(sh)
        else:
            self._handlers.append(logging.NullHandler())
        for h in self._handlers:
            self.logger.addHandler(h)

    # paths ---------------------------------------------------------------------------------
    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    # writing -------------------------------------------------------------------------------
    def log_metrics(self, step: int, **values: Any) -> None:
        """Append ``{"step": step, "time": unix seconds, **values}`` to ``metrics.jsonl``.

        Values may be Python/NumPy/torch scalars; non-finite floats are written as null.
        """
        if not self.is_main:
            return
        row = {"step": int(step), "time": round(time.time(), 3), **values}
        line = json.dumps(to_jsonable(row), allow_nan=False)
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def save_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as strict JSON to ``OUT/name`` atomically (rank 0; others no-op)."""
        path = self.path / name
        if not self.is_main:
            return path
        return atomic_write_json(path, obj)

    def write_environment(
        self, seed: int | None = None, extra: Mapping[str, Any] | None = None
    ) -> Path:
        """Write :func:`environment_info` to ``OUT/environment.json``."""
        return self.save_json("environment.json", environment_info(seed=seed, extra=extra))

    # lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        for h in self._handlers:
            self.logger.removeHandler(h)
            h.close()
        self._handlers = []

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, rank={self.rank})"


# ------------------------------------------------------------------------------- progress bars
#: ``APCNN_PROGRESS``: ``bar`` (tqdm), ``plain`` (periodic lines), ``off``; unset: ``bar`` when
#: stderr is a terminal, else ``plain``. ``APCNN_PROGRESS_INTERVAL``: seconds between plain lines.
PROGRESS_ENV = "APCNN_PROGRESS"
INTERVAL_ENV = "APCNN_PROGRESS_INTERVAL"
#: 10 s, as the solvers' heartbeats: at 30 s a long loop was silent 30 s plus one update (31 s
#: measured, benchmarks/bench_awa2_case.py), over issue #18's 30-second limit
DEFAULT_INTERVAL = 10.0


def _progress_mode() -> str:
    mode = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if mode in ("bar", "plain", "off"):
        return mode
    stream = sys.stderr
    return "bar" if stream is not None and stream.isatty() else "plain"


def progress(
    iterable: Any = None,
    *,
    desc: str = "",
    total: int | None = None,
    unit: str = "it",
    initial: int = 0,
    leave: bool = False,
    disable: bool = False,
    interval: float | None = None,
) -> Any:
    """The one progress-bar factory of the package.

    On a terminal: a ``tqdm`` bar (log lines of :class:`RunDir` go through ``tqdm.write``, so
    they never garble it). Elsewhere (stderr redirected to a file or a pipe): a
    :class:`PlainProgress` that writes one plain line (no carriage returns) every ``interval``
    seconds (``APCNN_PROGRESS_INTERVAL``, default 10) and one at the end, with the same
    information: ``desc: n/total (pct%) elapsed, rate, eta, postfix``. ``disable=True`` (e.g.
    ranks > 0) or ``APCNN_PROGRESS=off``: nothing is shown. Both kinds support ``update``,
    ``set_postfix``, ``set_postfix_str``, ``close``, iteration and ``with``.
    """
    mode = "off" if disable else _progress_mode()
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, leave=leave)
    if interval is None:
        try:
            interval = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
        except ValueError:
            interval = DEFAULT_INTERVAL
    return PlainProgress(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        initial=initial,
        interval=interval,
        silent=mode == "off",
    )


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class PlainProgress:
    """A progress report for non-terminals: plain lines on stderr, never a carriage return.

    A line is written when at least ``interval`` seconds passed since the last one (checked
    at each ``update``) and at ``close`` (when anything happened): ``training: 12/40 (30%)
    01:02 elapsed, 0.19 step/s, eta 02:24 [MG-CNN solve r1 e0]``.
    """

    def __init__(
        self,
        iterable: Any = None,
        *,
        desc: str = "",
        total: int | None = None,
        unit: str = "it",
        initial: int = 0,
        interval: float = DEFAULT_INTERVAL,
        silent: bool = False,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable = iterable
        self.desc, self.total, self.unit = desc, total, unit
        self.n = self.start_n = int(initial)
        self.interval = float(interval)
        self.silent = silent
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.lines_written = 0
        self.closed = False

    # the tqdm API used in the package ------------------------------------------------------
    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self._emit(now)

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "") -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None) -> None:
        self.desc = desc or ""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n > self.start_n or self.lines_written:
            self._emit(time.monotonic())

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("PlainProgress without an iterable is not iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the line ------------------------------------------------------------------------------
    def format_line(self, now: float | None = None) -> str:
        """``desc: n/total (pct%) elapsed, rate, eta, [postfix]`` (no carriage return)."""
        now = time.monotonic() if now is None else now
        elapsed = now - self.start
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            line = f"{head}{self.n}/{self.total} ({100.0 * self.n / self.total:.0f}%)"
        else:
            line = f"{head}{self.n} {self.unit}"
        line += f" {_duration(elapsed)} elapsed, {rate:.3g} {self.unit}/s"
        if self.total and rate > 0 and self.n < self.total:
            line += f", eta {_duration((self.total - self.n) / rate)}"
        if self.postfix:
            line += f" [{self.postfix}]"
        return line

    def _emit(self, now: float) -> None:
        self.last = now
        self.lines_written += 1
        if self.silent or sys.stderr is None:
            return
        sys.stderr.write(self.format_line(now) + "\n")
        sys.stderr.flush()


class _ConsoleHandler(logging.StreamHandler):
    """stderr handler that writes through ``tqdm.write`` while a tqdm bar is on screen, so a
    log line never lands in the middle of a bar (the bar is cleared and redrawn below it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        tqdm_mod = sys.modules.get("tqdm")
        bars = getattr(getattr(tqdm_mod, "tqdm", None), "_instances", None)
        if not bars:
            super().emit(record)
            return
        try:
            tqdm_mod.tqdm.write(self.format(record), file=self.stream)  # type: ignore[union-attr]
            self.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)
