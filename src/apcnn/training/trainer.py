"""The trainer: builds a run's parts, makes the plan of steps, and runs it step by step.

The paper's three stages (docs/design.md section 1):

1. **S-CNN**: every attribute gets its own CNN tail and linear head, trained by SGD on the masked
   squared hinge. The head is the multi-task layer with S = I (K = M), so each column of L is one
   attribute's w_m.
2. **MTL**: on the tails' features X (N, M, D), W = [w_1 ... w_M] from S-CNN initialises L (SVD)
   and S; Algorithm 1 (``apcnn.solvers.fit_alternating``) solves eq. 2.
3. **MG-CNN**: alternate SGD through the fixed W = L S into the tails with re-solving L and S on
   the new features. **M-CNN** is the same with all attributes in one group.

Where each part lives: inputs and feature caches in :mod:`.inputs`, the steps in :mod:`.steps`,
the state and keep-best in :mod:`.state`, hyperparameters chosen from data in
:mod:`apcnn.selection`. After each step the whole training state goes into an atomic checkpoint,
so ``--resume`` continues at the next step and ends with exactly an uninterrupted run's result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..data.schema import AttributeSchema
from ..devices import autocast_dtype, resolve_device
from . import steps
from .inputs import Inputs
from .state import (
    KeepBest,
    TrainState,
    chosen_with_keep_best,
    config_changes,
    drop_metrics_from,
    load_training_state,
    saved_config,
)
from .state import save_training_state as _save_state
from .steps import METHODS, Context, Method

Step = tuple[str, str, int, int]  # (method, kind, round, epoch)


def make_plan(train_cfg: Any, methods: list[str]) -> list[Step]:
    """The steps of a run: S-CNN (probe, SGD epochs, finish), then per multi-task method a
    solve, ``rounds`` x (SGD epochs, solve), finish."""
    t = train_cfg
    plan: list[Step] = [("S-CNN", "probe", 0, 0)] if t.linear_probe else []
    plan += [("S-CNN", "sgd", 0, e) for e in range(t.epochs_single)]
    plan.append(("S-CNN", "finish", 0, 0))
    for method in methods[1:]:
        plan.append((method, "solve", 0, 0))
        for r in range(1, t.rounds + 1):
            plan += [(method, "sgd", r, e) for e in range(t.epochs_joint)]
            plan.append((method, "solve", r, 0))
        plan.append((method, "finish", 0, 0))
    return plan


def check_methods(names: list[str]) -> list[str]:
    """``train.methods`` in plan order, S-CNN always first (the others start from it)."""
    unknown = [x for x in names if x not in METHODS]
    if unknown:
        from ..config import ConfigError

        raise ConfigError(
            f"train.methods: unknown method {unknown[0]!r}; valid: {', '.join(METHODS)}"
        )
    return [x for x in METHODS if x in names or x == "S-CNN"]


def build_inputs(cfg: Any, run: Any) -> tuple[Inputs, AttributeSchema, Any, Any]:
    """The run's data side: (inputs (not yet prepared), schema, backbone, backbone info).
    The trunk's top to adapt (``train.adapt_blocks``) is split off the backbone here."""
    from ..config import ConfigError
    from ..data.splits import build_datasets
    from ..data.transforms import build_transform
    from ..models.backbone import create_backbone

    device, dtype, amp = _precision(cfg)
    backbone, info = create_backbone(cfg.model.backbone, weights=cfg.model.weights)
    d = cfg.data
    shape = {"crop_fraction": d.crop_fraction, "height": d.image_height}
    transform = build_transform(d.image_size, info.mean, info.std, train=False, **shape)
    # a trainable trunk sees images every epoch (augmented unless data.augment=false)
    augment = not cfg.model.freeze_trunk if d.augment is None else d.augment
    train_transform = build_transform(d.image_size, info.mean, info.std, train=augment, **shape)
    datasets = build_datasets(cfg, transform)
    bottom = top = None
    if cfg.train.adapt_blocks:  # the top of the trunk is adapted in Inputs.prepare
        from ..adapt import split_top

        try:
            bottom, top = split_top(backbone, cfg.train.adapt_blocks)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    inputs = Inputs(
        cfg,
        datasets,
        cnn=None,
        backbone_info=info,
        transform=transform,
        train_transform=train_transform,
        device=device,
        dtype=dtype,
        amp=amp,
        run=run,
        bottom=bottom,
        top=top,
    )
    return inputs, datasets["train"][0].schema, backbone, info


def new_predictor(
    cfg: Any, backbone: Any, schema: AttributeSchema, device: torch.device, dtype: torch.dtype
) -> Any:
    """The predictor a run trains: attribute-specific tails on ``backbone`` and an S-CNN head
    (S = I) on ``device``; tails and head in ``dtype`` (``train.precision``), the trunk (and the
    feature cache) float32."""
    from ..models.fc_tail import build_attribute_cnn
    from ..models.latent import LatentTaskLayer
    from ..predictor import AttributePredictor

    m = schema.num_attributes
    cnn = build_attribute_cnn(
        backbone,
        num_attributes=m,
        tail=cfg.model.tail,
        freeze_trunk=cfg.model.freeze_trunk,
        pool_region=cfg.model.pool_region,
        flip_average=cfg.model.flip_average,
    )
    head = LatentTaskLayer(cnn.feature_dim, num_latent=m, num_attributes=m)
    predictor = AttributePredictor(cnn, head, m).to(device)
    predictor.cnn.tails.to(dtype)
    predictor.head.to(dtype)
    steps.single_heads(predictor)
    return predictor


def _precision(cfg: Any) -> tuple[torch.device, torch.dtype, torch.dtype | None]:
    """(device, dtype of tails and head, autocast dtype of the CNN parts) of a config."""
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and distributed.info().distributed:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = torch.float64 if cfg.train.precision == "float64" else torch.float32
    amp = None if dtype == torch.float64 else autocast_dtype(cfg.train.amp, device)
    return device, dtype, amp


class Trainer:
    """Runs the plan of steps for one configuration; see the module docstring."""

    def __init__(self, cfg: Any, run: Any, *, resume: bool = False) -> None:
        from ..config import config_to_dict
        from ..models.spec import ModelSpec
        from ..selection import check_task_weights

        self.cfg, self.run, self.log = cfg, run, run.logger
        self.config_dict = config_to_dict(cfg)
        self.inputs, self.schema, backbone, info = build_inputs(cfg, run)
        names = self.schema.names
        weights = cfg.mtl.task_weights  # a wrong length fails here, not mid-run
        weights = None if weights in (None, "auto") else check_task_weights(weights, names)
        self.methods = check_methods(list(cfg.train.methods))
        self.plan = make_plan(cfg.train, self.methods)
        i = self.inputs
        predictor = new_predictor(cfg, backbone, self.schema, i.device, i.dtype)
        i.cnn = predictor.cnn
        self.spec = ModelSpec.from_config(cfg, info, predictor.cnn.feature_dim, len(names))
        self.ctx = Context(cfg, predictor, i, self.schema, i.device, i.dtype, i.amp, run)
        self.state = TrainState()
        self.keep = KeepBest(run.path / "checkpoints", log=self.log)
        i.prepare()
        if i.adaptation is not None:
            t = cfg.train
            self.state.chosen["adapt"] = {
                "blocks": t.adapt_blocks,
                "epochs": t.adapt_epochs,
                "lr": t.adapt_lr,
                "final_loss": i.adaptation["history"][-1]["loss"],
                # the collapse guard's verdict (apcnn.adapt): True = the ImageNet top was kept
                "rejected": bool(i.adaptation["history"][-1].get("rejected", False)),
                # the validation gate (train.adapt_gate): {"adapted", "imagenet": probe
                # accuracies, "kept": bool}; None when it did not run
                "gate": i.adaptation["history"][-1].get("gate"),
            }
        # the ridge CV behind the "auto" choices and the probe sees the initial tails (before
        # any resumed state is loaded), so a resumed run chooses exactly as the first did
        self.ridge = None
        if "auto" in (cfg.mtl.task_weights, cfg.mtl.lam) or cfg.train.linear_probe:
            self.ridge = self._ridge_cv()
        if cfg.mtl.task_weights == "auto":
            from ..selection import task_weights_from_ridge

            weights = task_weights_from_ridge(self.ridge.lams).tolist()
            self.state.chosen["task_weights"] = dict(zip(names, weights))
            cfg.mtl.task_weights = weights  # the config saved with checkpoints has them
            self.config_dict = config_to_dict(cfg)
        if weights is not None:
            self.ctx.task_weights = torch.as_tensor(weights, dtype=i.dtype, device=i.device)
        self.sgd: steps.SGD | None = None
        # the tails' initial values (for train.tail_decay_to_init), taken before any resume
        if cfg.train.tail_decay_to_init:
            self.ctx.tail_init = [p.detach().clone() for p in steps.tail_params(predictor)]
        self.scnn_state: dict[str, torch.Tensor] | None = None  # S-CNN's final state
        if resume:
            self._resume()

    # ------------------------------------------------------------------ parts
    @property
    def predictor(self) -> Any:
        return self.ctx.predictor

    @property
    def splits(self) -> dict[str, Any]:
        return self.inputs.splits

    @property
    def chosen(self) -> dict[str, Any]:
        """Hyperparameters chosen so far, keep-best rounds included."""
        return chosen_with_keep_best(self.state.chosen, self.keep)

    def pretrained_inputs(self, split: str) -> torch.Tensor:
        return self.inputs.pretrained_inputs(split)

    def _ridge_cv(self) -> Any:
        """A ridge weight per attribute by 3-fold CV on the training split's initial tail
        features (:func:`apcnn.selection.ridge_cv`, class-weighted with ``train.pos_weight``),
        on all rows by every rank."""
        from ..selection import ridge_cv

        data = self.splits["train"]
        self.log.info("ridge weight per attribute by 3-fold CV on the training split")
        x = steps.tail_features(self.ctx, data, slice(None))
        y, mask = data.targets.cpu().numpy(), data.mask.cpu().numpy()
        weights = steps.class_weights(self.ctx)  # train.pos_weight (None: unweighted)
        sw = None if weights is None else weights.cpu().numpy()
        ridge = ridge_cv(x, y, mask, seed=self.cfg.train.seed, sample_weights=sw)
        self.log.info("ridge weights per attribute: %s", ridge.lams.tolist())
        self.state.chosen["ridge_lam"] = dict(zip(self.schema.names, ridge.lams.tolist()))
        return ridge

    def _mtl_lam(self) -> float:
        """``mtl.lam`` per training sample; "auto": :func:`apcnn.selection.pooled_ridge`."""
        if self.cfg.mtl.lam != "auto":
            return float(self.cfg.mtl.lam)
        from ..selection import pooled_ridge

        value = pooled_ridge(self.ridge.lams, self.ridge.scale)
        self.state.chosen["lam"] = value
        return value

    # ------------------------------------------------------------------ the plan
    def run_plan(self) -> dict[str, Any]:
        """Run the remaining steps, checkpointing after each; returns ``{method: metrics}``."""
        from ..runlog import progress

        bar = progress(
            total=len(self.plan),
            initial=self.state.completed,
            desc="training",
            unit="step",
            disable=not self.run.is_main,
        )
        for i in range(self.state.completed, len(self.plan)):
            name, kind, rnd, epoch = self.plan[i]
            bar.set_postfix_str(f"{name} {kind} r{rnd} e{epoch}")
            self.run_step(METHODS[name], kind, rnd, epoch)
            self.state.completed = i + 1
            self.save_state()
            bar.update(1)
        bar.close()
        return self.state.results

    def run_step(self, method: Method, kind: str, rnd: int, epoch: int) -> None:
        """One plan step: the state it needs goes to the step function explicitly."""
        keep = self.keep if self.cfg.train.keep_best else None
        step = self.state.completed
        if kind == "sgd":
            if self.sgd is None or epoch == 0:
                self.sgd = steps.new_sgd(self.ctx, method)
            steps.sgd_epoch(self.ctx, self.sgd, method, rnd, epoch, step)
            if self.sgd.diverged and keep is not None:
                # the round this stage feeds: S-CNN's SGD is its round 1 (the probe is round
                # 0); a multi-task method's round r is the solve after SGD stage r
                keep.mark_diverged(method.name, rnd if method.multitask else 1)
            if epoch == method.epochs(self.cfg.train) - 1:
                # the stage is over (the next SGD stage starts a new optimizer): free the
                # momentum buffers (as large as the tails) before solves and checkpoint saves
                self.sgd = None
        elif kind == "solve":
            if rnd == 0:  # M-CNN and MG-CNN both start from S-CNN's fine-tuned tails
                self.ctx.predictor.head = steps.new_head(self.ctx, self.schema.num_attributes)
                self.ctx.predictor.load_state_dict(self._scnn_state())
            steps.solve(self.ctx, method, rnd, self._mtl_lam(), self.state, keep, step)
        elif kind == "probe":
            steps.probe(self.ctx, self.ridge.weights, self.ridge.bias, keep)
        else:
            steps.finish(self.ctx, method, self.state, keep, self._save_predictor)
            if not method.multitask:
                self.scnn_state = {k: v.clone() for k, v in self.predictor.state_dict().items()}

    def _scnn_state(self) -> dict[str, torch.Tensor]:
        if self.scnn_state is None:  # resumed after S-CNN finished
            from ..checkpoint import load_checkpoint

            self.scnn_state, _ = load_checkpoint(self.run.path / "checkpoints" / "S-CNN")
        return self.scnn_state

    def _save_predictor(self, method: str, metrics: dict, prior: list) -> None:
        from dataclasses import replace

        from ..predictor import save_predictor

        if self.run.is_main:
            save_predictor(
                self.run.path / "checkpoints" / method,
                self.predictor,
                spec=replace(self.spec, rank=int(self.predictor.head.S.shape[0])),
                schema=self.schema,
                config=self.config_dict,
                extra={
                    "method": method,
                    "metrics": metrics,
                    "calibration_prior": prior,
                    # which images each split held: evaluate uses the same test split and
                    # refuses (or warns) when an evaluated split overlaps train / val
                    "split_ids": {
                        split: source.sample_ids[indices].tolist()
                        for split, (source, indices) in self.inputs.datasets.items()
                    },
                },
            )
        distributed.barrier()

    # ------------------------------------------------------------------ checkpoints
    def _state_path(self) -> Path:
        return self.run.path / "checkpoints" / "state"

    def save_state(self) -> None:
        meta = {
            "plan": [list(p) for p in self.plan],
            "rank": int(self.predictor.head.S.shape[0]),
            "config": self.config_dict,
            "world_size": self.ctx.dist.world_size,
        }
        optimizer = None if self.sgd is None else self.sgd.optimizer
        _save_state(
            self._state_path(),
            model=self.predictor,
            optimizer=optimizer,
            state=self.state,
            keep=self.keep,
            meta=meta,
        )

    def _resume(self) -> None:
        from ..checkpoint import CheckpointError, unflatten_state_dict

        path = self._state_path()
        loaded = load_training_state(path, self.keep)
        if loaded is None:
            self.log.info("no checkpoint in %s: starting from scratch", path.parent)
            drop_metrics_from(self.run.metrics_path, 0)
            return
        state, model, meta = loaded
        changes = config_changes(saved_config(meta.get("config")), self.config_dict)
        if changes:
            from ..config import ConfigError

            raise ConfigError(
                f"--resume of {self.run.path} with a config that changes the run's results "
                f"({'; '.join(changes)}); resume with the run's own config (apcnn train -c "
                f"{self.run.path / 'config.yaml'} --resume) or start a new --out folder"
            )
        if meta["plan"] != [list(p) for p in self.plan]:
            raise CheckpointError(
                f"{path}: the run was started with a different schedule; resume with the "
                "config saved in the run folder or start a new --out folder"
            )
        dropped = drop_metrics_from(self.run.metrics_path, state.completed)
        if dropped:
            self.log.info("metrics.jsonl: dropped %d line(s) of the interrupted step", dropped)
        self.ctx.predictor.head = steps.new_head(self.ctx, int(meta["rank"]))
        self.predictor.load_state_dict(model)
        self.state = state
        done = state.completed
        if meta["optimizer"] is not None and done < len(self.plan):
            method = self.plan[done - 1][0] if done else "S-CNN"
            next_method, next_kind, _, next_epoch = self.plan[done]
            if next_kind == "sgd" and next_epoch > 0 and next_method == method:
                self.sgd = steps.new_sgd(self.ctx, METHODS[next_method])
                optim = unflatten_state_dict(meta["optimizer_tensors"], meta["optimizer"])
                self.sgd.optimizer.load_state_dict(optim)
        self.log.info("resumed after step %d of %d", done, len(self.plan))
