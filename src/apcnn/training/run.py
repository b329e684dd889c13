"""Entry points of training: :func:`train` (a config to a run folder), :func:`train_from_config`
(what ``apcnn train`` calls) and the run folder's outputs (``metrics.json``, ``report.md``).

A run folder holds ``config.yaml`` (the resolved config), ``environment.json`` (seed, versions,
world size), ``train.log``, ``metrics.jsonl`` (one line per step), ``checkpoints/`` (one predictor
per method, the resume state) and, when the run ends, ``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from .. import distributed
from ..devices import resolve_device
from .trainer import Trainer


def train(cfg: Any, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train every method of ``cfg.train.methods`` and write the run folder ``cfg.run.out``.

    A folder that already holds a run is continued with ``resume=True``, replaced with
    ``overwrite=True`` and otherwise refused (nothing is lost by accident).

    Returns ``{"results": {method: metrics}, "histories": ..., "schema": AttributeSchema,
    "S": final S, "W": final W, "seconds": wall time}``.
    """
    from ..config import check_data_root

    check_data_root(cfg)
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
    from ..config import save_config
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
    with RunDir(cfg.run.out) as run:
        if run.is_main:
            save_config(cfg, run.path / "config.yaml")
            run.write_environment(seed=cfg.train.seed, extra={"world_size": dist.world_size})
        trainer = Trainer(cfg, run, resume=resume)
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
