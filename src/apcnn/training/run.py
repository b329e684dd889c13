"""Entry points of training: :func:`train` (a config to a run folder), :func:`train_from_config`
(what ``apcnn train`` calls) and the run folder's outputs (``metrics.json``, ``report.md``).

A run folder holds ``config.yaml`` (the resolved config), ``environment.json`` (seed, versions,
world size), ``train.log``, ``metrics.jsonl`` (one line per step), ``checkpoints/`` (one predictor
per method, the resume state) and, when the run ends, ``metrics.json`` and ``report.md``; and
``.lock``, held by the process that runs it (:func:`run_lock`: one process per folder).
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import distributed
from ..devices import resolve_device
from .trainer import Trainer


def train(cfg: Any, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train every method of ``cfg.train.methods`` and write the run folder ``cfg.run.out``.

    A folder that already holds a run is continued with ``resume=True``, replaced with
    ``overwrite=True`` and otherwise refused (nothing is lost by accident); a folder another
    process is training into is refused (:func:`run_lock`).

    Returns ``{"results": {method: metrics}, "histories": ..., "schema": AttributeSchema,
    "S": final S, "W": final W, "seconds": wall time}``.
    """
    from ..config import check_data_root

    check_data_root(cfg)
    with run_lock(cfg.run.out):
        return _train_locked(cfg, resume=resume, overwrite=overwrite)


LOCK_NAME = ".lock"  #: the run folder's lock file (holds the pid of the process that runs it)


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[Path | None]:
    """Hold ``out/.lock`` (``fcntl.flock``, exclusive) while a run writes ``out``.

    Only rank 0 (``RANK`` unset or 0) locks: the ranks of one torchrun job share the folder. A
    second process gets a :class:`~apcnn.config.ConfigError` naming the holder's pid. The lock
    goes with the process (the kernel drops it when the file closes, even after SIGKILL), so a
    killed run never leaves a stale lock; the file itself stays. Yields the lock file's path
    (None where ``fcntl`` is missing, e.g. Windows: no lock).
    """
    from ..runlog import current_rank

    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield None
        return
    if current_rank() != 0:
        yield None
        return
    path = Path(out) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            from ..config import ConfigError

            f.seek(0)
            pid = f.read().strip() or "unknown"
            raise ConfigError(
                f"run folder {out} is in use by another apcnn process (pid {pid}); wait for it "
                "to finish or pass --out DIR for a new run"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield path
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _train_locked(cfg: Any, *, resume: bool, overwrite: bool) -> dict[str, Any]:
    # under torchrun (WORLD_SIZE > 1) join the process group first: every rank runs this
    dist = distributed.init_distributed(
        resolve_device(cfg.train.device).type, cfg.train.dist_timeout
    )
    try:
        return _train(cfg, dist, resume=resume, overwrite=overwrite)
    except RuntimeError as exc:
        if not dist.distributed or isinstance(exc, (DistributedRunError,)):
            raise
        # a peer died or stalled inside a collective: one line instead of a gloo/NCCL traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedRunError(
            f"rank {dist.rank}: a collective with the other ranks failed ({first[:200]}); "
            "another rank probably died or stalled (torchrun names it); the run folder keeps "
            "the last completed step: rerun with --resume"
        ) from None
    finally:
        distributed.cleanup()


class DistributedRunError(RuntimeError):
    """A rank lost its peers mid-run; the message names the rank and how to continue."""


def _train(cfg: Any, dist: Any, *, resume: bool, overwrite: bool) -> dict[str, Any]:
    from ..runlog import RunDir, seed_everything

    state = Path(cfg.run.out) / "checkpoints" / "state"
    exists = state.exists()
    distributed.barrier()  # every rank has looked before rank 0 may delete anything
    if exists and not resume:
        if not overwrite:
            from ..config import ConfigError

            raise ConfigError(
                f"run folder {cfg.run.out} already holds a run; pass --resume to continue it or "
                "--out DIR for a new one"
            )
        if dist.is_main:
            for name in ("checkpoints", "metrics.jsonl", "metrics.json", "train.log"):
                target = Path(cfg.run.out) / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        distributed.barrier()
    start = time.time()
    seed_everything(cfg.train.seed)
    requested = copy.deepcopy(cfg)  # config.yaml: as given (the trainer resolves "auto" values)
    with RunDir(cfg.run.out) as run:
        # a refused --resume raises in Trainer: the run's own config.yaml and environment.json
        # are written only after it accepted the resume, so they still describe the run
        if not resume:
            _write_config(run, requested, dist)
        trainer = Trainer(cfg, run, resume=resume)
        if resume:
            _write_config(run, requested, dist)
        results = trainer.run_plan()
        head = trainer.predictor.head
        out = {
            "results": results,
            "histories": trainer.state.histories,
            "chosen": trainer.chosen,
            "schema": trainer.schema,
            "S": head.S.detach().cpu().numpy(),
            "W": (head.L @ head.S).detach().cpu().numpy(),
            "seconds": time.time() - start,
        }
        write_run_outputs(run, cfg, out)
    return out


def _write_config(run: Any, cfg: Any, dist: Any) -> None:
    """config.yaml (the config as given) and environment.json (rank 0)."""
    from ..config import save_config

    if run.is_main:
        save_config(cfg, run.path / "config.yaml")
        run.write_environment(seed=cfg.train.seed, extra={"world_size": dist.world_size})


def write_run_outputs(run: Any, cfg: Any, out: dict[str, Any]) -> None:
    """metrics.json (results.json fields per method) and report.md in the run folder."""
    from ..metrics import method_block
    from ..reports import write_report

    if not run.is_main:
        return
    schema = out["schema"]
    methods = {name: method_block([m], schema) for name, m in out["results"].items()}
    results = {
        "protocol": {
            "dataset": cfg.data.name,
            "fold": cfg.data.fold,
            "folds": cfg.data.folds,
            "seed": cfg.train.seed,
        },
        "methods": methods,
        "chosen_hyperparameters": out.get("chosen", {}),
        "seconds": out["seconds"],
    }
    run.save_json("metrics.json", results)
    history = None
    if out["histories"]:
        history = [v for solve in out["histories"][list(out["histories"])[-1]] for v in solve]
    write_report(run.path, results, schema=schema, S=out["S"], W=out["W"], history=history)
    out["results_json"] = results


def train_from_config(
    *, config_path: str | None, overrides: list[str], out: str | None, resume: bool
) -> dict[str, Any]:
    from ..config import TrainConfig, load_config
    from ..reports import format_table

    all_overrides = list(overrides) + ([f"run.out={out}"] if out else [])
    cfg = load_config(TrainConfig, config_path, all_overrides)
    result = train(cfg, resume=resume)
    if "results_json" in result:  # rank 0 (the only rank that writes)
        print(format_table(result["results_json"], None, title="accuracy (%) on the test split"))
    return result
