"""The training state: what a resumed run needs, the keep-best component, and their file.

After every plan step the trainer writes ``checkpoints/state`` atomically (safetensors for the
model and optimizer tensors, JSON for the rest); ``--resume`` reads it back and continues at the
next step. Batch order and learning rate are pure functions of the seed and the step, so a resumed
run ends with exactly the result of an uninterrupted one.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed

KEEP_BEST_KEYS = ("last_round", "best_round", "best_val_accuracy")

#: config keys a resumed run may change: they do not change its results (where it runs, how
#: many loader processes, how long a collective may wait, where the run folder is). Every other
#: key (hyperparameters, data, model, seed, precision) must equal the saved run's.
RESUME_FREE_KEYS = frozenset(
    {"data.num_workers", "run.out", "train.device", "train.dist_timeout", "train.dist_debug"}
)


@dataclass
class TrainState:
    """Everything a resumed run needs besides the model, the optimizer and the (deterministic)
    cached inputs."""

    completed: int = 0  # number of plan steps done
    results: dict[str, Any] = field(default_factory=dict)  # method -> test metrics
    # method -> objective history of each solve (monotone within a solve; the features change
    # between solves, so the objective may jump there)
    histories: dict[str, list[list[float]]] = field(default_factory=dict)
    chosen: dict[str, Any] = field(default_factory=dict)  # method -> hyperparameters chosen


class KeepBest:
    """Each method's best-validated round, to return to when the method finishes (in the manner
    of timm's ``CheckpointSaver``: one small stateful object, called once per round).

    :meth:`update` after each round: when its validation accuracy beats the method's best so
    far, the model is snapshotted (in memory, and in ``folder/<method>.best`` for ``--resume``).
    :meth:`restore` at the method's end loads the best snapshot if a later round lost to it.
    A round whose SGD stage diverged (:meth:`mark_diverged`, before its update) is never the
    best: its validation figure is a chance score of a broken fit.
    """

    def __init__(self, folder: Path, *, log: Any = None) -> None:
        self.folder = folder
        self.log = log
        self.records: dict[str, dict[str, Any]] = {}  # method -> KEEP_BEST_KEYS
        self._snapshot: dict[str, torch.Tensor] | None = None  # the best round's, this process

    def path(self, method: str) -> Path:
        return self.folder / f"{method}.best"

    def has_best(self, method: str) -> bool:
        return "best_round" in self.records.get(method, {})

    def mark_diverged(self, method: str, rnd: int) -> None:
        """Round ``rnd`` of ``method`` comes from a diverged SGD stage: not a candidate."""
        rounds = self.records.setdefault(method, {}).setdefault("diverged_rounds", [])
        if rnd not in rounds:
            rounds.append(rnd)

    def update(self, method: str, rnd: int, val: float, model: nn.Module) -> bool:
        """Record round ``rnd`` of ``method`` with validation accuracy ``val``; True if it is the
        best so far (then ``model`` is snapshotted). A diverged round is recorded, never best
        (unless no other round exists: then it is all there is)."""
        from ..checkpoint import save_checkpoint

        record = self.records.setdefault(method, {})
        record["last_round"] = rnd
        if self.log is not None:
            self.log.info("%s round %d: validation accuracy %.2f%%", method, rnd, 100 * val)
        if "best_round" in record and rnd in record.get("diverged_rounds", ()):
            if self.log is not None:
                self.log.info("%s round %d: its SGD stage diverged, not kept", method, rnd)
            return False
        if "best_round" in record and val <= record["best_val_accuracy"]:
            return False
        record.update(best_round=rnd, best_val_accuracy=val)
        tensors = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self._snapshot = tensors  # every rank; the file is for --resume
        if distributed.info().is_main:
            save_checkpoint(self.path(method), tensors, {"round": rnd, "val_accuracy": val})
        distributed.barrier()
        return True

    def restore(self, method: str, model: nn.Module) -> bool:
        """Load the best round of ``method`` into ``model`` if the last round was not the best;
        True if it did."""
        from ..checkpoint import load_checkpoint

        record = self.records.get(method, {})
        if "best_round" not in record or record["best_round"] == record["last_round"]:
            return False
        tensors = self._snapshot
        if tensors is None:  # resumed after the best round
            tensors, _ = load_checkpoint(self.path(method))
        model.load_state_dict(tensors)
        if self.log is not None:
            self.log.info(
                "%s: back to round %d (best validation accuracy %.2f%%)",
                method,
                record["best_round"],
                100 * record["best_val_accuracy"],
            )
        return True

    def discard(self, method: str) -> None:
        """The method is final: drop its snapshot (memory and file)."""
        self._snapshot = None
        if distributed.info().is_main:
            shutil.rmtree(self.path(method), ignore_errors=True)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {m: _copy_record(r) for m, r in self.records.items()}

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        self.records = {m: _copy_record(r) for m, r in state.items()}
        self._snapshot = None


def _copy_record(record: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, list) else v for k, v in record.items()}


def chosen_with_keep_best(chosen: dict[str, Any], keep: KeepBest) -> dict[str, Any]:
    """The run's chosen hyperparameters with each method's keep-best record merged in (the
    ``chosen_hyperparameters`` of ``metrics.json``)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in chosen.items()}
    for method, record in keep.records.items():
        out.setdefault(method, {}).update(record)
    return out


def save_training_state(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: TrainState,
    keep: KeepBest,
    meta: dict[str, Any],
) -> None:
    """Write the training state atomically (rank 0; the other ranks hold the same state)."""
    from ..checkpoint import flatten_state_dict, save_checkpoint

    if not distributed.info().is_main:
        distributed.barrier()
        return
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_meta = None
    if optimizer is not None:
        opt_tensors, opt_meta = flatten_state_dict(optimizer.state_dict())
        tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
    full = {
        "completed": state.completed,
        "results": state.results,
        "histories": state.histories,
        "chosen": state.chosen,
        "keep_best": keep.state_dict(),
        "optimizer": opt_meta,
        **meta,
    }
    save_checkpoint(path, tensors, full)
    distributed.barrier()


def load_training_state(path: Path, keep: KeepBest) -> tuple[TrainState, dict, dict] | None:
    """(state, model tensors, meta) from a saved training state, ``keep`` loaded; None when
    there is none. Meta keeps ``optimizer`` (its structure) and the optimizer tensors are under
    ``meta["optimizer_tensors"]``."""
    from ..checkpoint import load_checkpoint

    try:
        tensors, meta = load_checkpoint(path)
    except FileNotFoundError:
        return None
    chosen = meta.get("chosen", {})
    records = meta.get("keep_best")
    if records is None:  # a state written before KeepBest: its records were inside "chosen"
        records = {}
        for method, value in chosen.items():
            if isinstance(value, dict) and "best_round" in value:
                records[method] = {k: value.pop(k) for k in KEEP_BEST_KEYS if k in value}
    keep.load_state_dict(records)
    state = TrainState(
        completed=int(meta["completed"]),
        results=meta["results"],
        histories=meta["histories"],
        chosen=chosen,
    )
    model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    meta["optimizer_tensors"] = {
        k[len("optim.") :]: v for k, v in tensors.items() if k.startswith("optim.")
    }
    return state, model, meta


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}`` (lists and scalars are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_flat(value, name))
        else:
            out[name] = value
    return out


def config_changes(
    saved: dict[str, Any], new: dict[str, Any], free: frozenset[str] = RESUME_FREE_KEYS
) -> list[str]:
    """``"key: saved -> new"`` for every config key (dotted) whose value differs, keys in
    ``free`` excepted; ``[]`` when a run with config ``new`` may resume one saved with ``saved``.
    A key missing on one side (a config of another version) shows as ``<unset>``."""
    if not saved:  # a state written without its config: nothing to compare
        return []
    a, b = _flat(saved), _flat(new)
    changes = []
    for key in sorted(set(a) | set(b)):
        if key in free:
            continue
        old, now = a.get(key, "<unset>"), b.get(key, "<unset>")
        if old != now:
            changes.append(f"{key}: {old} -> {now}")
    return changes


def drop_metrics_from(path: Path, step: int) -> int:
    """Remove the lines of ``metrics.jsonl`` (``path``) whose step is >= ``step``: what an
    interrupted step logged before it was checkpointed, and is logged again when it reruns.
    Rewritten atomically (rank 0); returns the number of lines dropped."""
    import json

    from ..runlog import atomic_write_bytes

    if not distributed.info().is_main or not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            row = None  # a line cut by the interruption
            dropped += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] >= step:
            dropped += 1
            continue
        if line.strip():
            kept.append(line)
    if dropped:
        atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode("utf-8"))
    return dropped


def saved_config(saved: Any) -> dict[str, Any]:
    """A saved run's config with this version's defaults filled in (keys added since it was
    saved do not count as changes); as saved when it does not parse, {} when absent."""
    from ..config import TrainConfig, config_from_dict, config_to_dict

    if not isinstance(saved, dict):
        return {}
    try:
        return config_to_dict(config_from_dict(TrainConfig, saved))
    except Exception:  # noqa: BLE001 - compare the raw dict then
        return saved
