"""The methods as data, and the steps a training plan is made of, as plain functions.

A plan step is ``(method, kind, round, epoch)`` with kind one of:

- ``probe``: S-CNN's heads become the cross-validated per-attribute SVMs (``train.linear_probe``);
- ``sgd``: one epoch of SGD on the masked squared hinge into the tails (S-CNN: also its own head
  L with S = I; M-CNN, MG-CNN: through the fixed W = L S, only the bias moves in the head);
- ``solve``: Algorithm 1 (``apcnn.solvers.fit_alternating``) on the current tail features;
- ``finish``: back to the best-validated round, Platt calibration on validation, test metrics,
  the method's predictor checkpoint.

Every function takes the :class:`Context` (what the run is made of) and the state it changes
explicitly; none keeps state of its own.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..data.schema import AttributeSchema
from ..losses import entry_weights, masked_squared_hinge, positive_ratio_weights
from .inputs import Inputs, SplitData, hash_seed
from .state import KeepBest, TrainState


# ----------------------------------------------------------------------------- the methods
@dataclass(frozen=True)
class Method:
    """One of the paper's CNN methods, described by what it shares."""

    name: str
    #: False: S-CNN, one head per attribute (S = I, column m of L is w_m), trained by SGD;
    #: True: a multi-task layer W = L S solved by Algorithm 1, SGD only below it
    multitask: bool
    #: with ``multitask``: True = the schema's groups (MG-CNN), False = one group (M-CNN)
    grouped: bool

    def groups(self, schema: AttributeSchema) -> list[list[int]]:
        return (schema if self.grouped else schema.with_single_group()).group_indices

    def epochs(self, train_cfg: Any) -> int:
        return train_cfg.epochs_joint if self.multitask else train_cfg.epochs_single


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("S-CNN", multitask=False, grouped=False),
        Method("M-CNN", multitask=True, grouped=False),
        Method("MG-CNN", multitask=True, grouped=True),
    )
}
METHOD_ORDER = tuple(METHODS)


# ----------------------------------------------------------------------------- the context
@dataclass
class Context:
    """What the steps work on: the configuration, the predictor, its inputs and the run."""

    cfg: Any
    predictor: nn.Module
    inputs: Inputs
    schema: AttributeSchema
    device: torch.device
    dtype: torch.dtype
    amp: torch.dtype | None
    run: Any
    task_weights: torch.Tensor | None = None  # (M,) loss weights c_m, None = all 1
    tail_init: list[torch.Tensor] | None = None  # θ₀ for train.tail_decay_to_init
    dist: Any = field(default_factory=distributed.info)

    @property
    def log(self) -> Any:
        return self.run.logger

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)


class FromTrunk(nn.Module):
    """``predictor.forward_from_trunk`` as a module's forward, for DDP to wrap."""

    def __init__(self, predictor: nn.Module) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, trunk_features: torch.Tensor) -> torch.Tensor:
        return self.predictor.forward_from_trunk(trunk_features)


class FromImages(FromTrunk):
    """The whole predictor on images, trunk included (trainable trunk), for DDP to wrap. The trunk
    stays float32; its output goes to the tails in their precision."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        trunk = self.predictor.cnn.forward_trunk(images)
        dtype = next(self.predictor.cnn.tails.parameters()).dtype
        return self.predictor.forward_from_trunk(trunk.to(dtype))


def cosine_lr(base_lr: float, step: int, total: int, schedule: str) -> float:
    if schedule == "constant" or total <= 1:
        return base_lr
    if schedule == "step":
        return base_lr * (0.1 ** (3 * step // max(total, 1)))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total))


# ----------------------------------------------------------------------------- evaluation
@torch.inference_mode()
def tail_features(ctx: Context, data: SplitData, rows: slice) -> np.ndarray:
    """X (n, M, D) of ``rows`` from the current tails, in eval mode (float32, or float64 with
    ``train.precision=float64``: the solvers then work in that precision)."""
    ctx.predictor.eval()
    out = []
    for chunk in ctx.inputs.trunk_batches(data, rows):
        with ctx.autocast():
            feats = ctx.predictor.cnn.forward_tails(chunk)
        out.append(feats.to(ctx.dtype).cpu())
    return torch.cat(out).numpy()


@torch.inference_mode()
def split_scores(ctx: Context, split: str) -> np.ndarray:
    """(N, M) scores of a split, in dataset order: each rank scores its shard, once."""
    ctx.predictor.eval()
    data = ctx.inputs.splits[split]
    out = [torch.zeros(0, ctx.schema.num_attributes)]
    for chunk in ctx.inputs.trunk_batches(data, ctx.inputs.my_rows(data)):
        with ctx.autocast():
            out.append(ctx.predictor.forward_from_trunk(chunk).float().cpu())
    return distributed.gather_rows(torch.cat(out), len(data)).numpy()


def predictor_decisions(predictor: nn.Module, scores: np.ndarray) -> np.ndarray:
    """(N, M) bool: the predictor's own decisions p >= threshold on ``scores`` (N, M), with its
    calibration and threshold buffers (what ``apcnn predict`` and the ONNX model decide)."""
    with torch.inference_mode():
        s = torch.as_tensor(scores).to(predictor.calibration)
        return predictor.decisions(predictor.probabilities(s)).cpu().numpy()


def evaluate(ctx: Context, split: str, *, thresholds: bool = True) -> dict[str, Any]:
    """:func:`apcnn.metrics.attribute_metrics` of the current predictor on a split.

    ``thresholds``: decide as the predictor does, p >= its threshold (the test metrics of a
    finished method); False: the trained boundary, score > 0 (model selection during training,
    before calibration and thresholds are chosen)."""
    from ..metrics import attribute_metrics

    data = ctx.inputs.splits[split]
    targets, mask = data.targets.cpu().numpy(), data.mask.cpu().numpy()
    scores = split_scores(ctx, split)
    decisions = predictor_decisions(ctx.predictor, scores) if thresholds else None
    return attribute_metrics(scores, targets, mask, ctx.schema, decisions=decisions)


def val_accuracy(ctx: Context) -> float:
    """Validation accuracy at the trained boundary (score > 0): the model-selection figure."""
    return evaluate(ctx, "val", thresholds=False)["accuracy"]["total"]


# ----------------------------------------------------------------------------- SGD
@dataclass
class SGD:
    """The optimizer of the current SGD stage and the module it steps (DDP under torchrun), the
    stage's epoch losses so far, and whether one of its epochs diverged (then keep-best does
    not return to the stage's round)."""

    optimizer: torch.optim.Optimizer
    module: nn.Module
    losses: list[float] = field(default_factory=list)
    diverged: bool = False


#: an SGD epoch whose mean training loss is above this multiple of the previous epoch's is
#: diverging (a healthy stage's loss falls: Clothing 0.078 -> 0.072 -> 0.069 with all labels;
#: 0.32 -> 0.99 -> 4.07 at 10 % of them, where mtl.task_weights spanned 0.29 to 87)
DIVERGENCE_RATIO = 2.0


def tail_params(predictor: nn.Module) -> list[nn.Parameter]:
    """The trainable CNN parameters: the tails, and the trunk when it is trainable."""
    return [p for p in predictor.cnn.parameters() if p.requires_grad]


def new_sgd(ctx: Context, method: Method) -> SGD:
    """SGD with momentum over the method's trainable parameters, in groups: the tails (weight
    decay, or none with ``tail_decay_to_init``), the head (L with S-CNN, the bias; its own decay
    with ``head_weight_decay``) and a trainable trunk (``lr * trunk_lr_scale``)."""
    t, head = ctx.cfg.train, ctx.predictor.head
    head.L.requires_grad_(not method.multitask)
    head.S.requires_grad_(False)
    # the set of trainable parameters changes between methods and heads are replaced by
    # solves, so the DDP wrapper is rebuilt with every optimizer
    module: nn.Module = (FromTrunk if ctx.cfg.model.freeze_trunk else FromImages)(ctx.predictor)
    if ctx.dist.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        module = DistributedDataParallel(module, device_ids=ids)
    head_wd = t.weight_decay if t.head_weight_decay is None else t.head_weight_decay
    cnn_params = tail_params(ctx.predictor)
    trunk_module = getattr(ctx.predictor.cnn, "trunk", None)
    in_trunk = set() if trunk_module is None else {id(p) for p in trunk_module.parameters()}
    # with tail_decay_to_init the decay is added to the gradients in sgd_epoch
    cnn_wd = 0.0 if t.tail_decay_to_init else t.weight_decay
    head_params = [head.bias] if method.multitask else [head.L, head.bias]
    groups = [
        {"params": [p for p in cnn_params if id(p) not in in_trunk], "weight_decay": cnn_wd},
        {"params": head_params, "weight_decay": head_wd},
    ]
    trunk = [p for p in cnn_params if id(p) in in_trunk]
    if trunk:  # trainable trunk: a slower learning rate (lr_scale, applied in sgd_epoch)
        groups.append({"params": trunk, "weight_decay": cnn_wd, "lr_scale": t.trunk_lr_scale})
    return SGD(torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum), module)


def class_weights(ctx: Context) -> torch.Tensor | None:
    """``train.pos_weight``: None for "none"; for "ratio" the training split's (N, M) per-entry
    loss weights (:func:`apcnn.losses.positive_ratio_weights` of all its labels, so the same
    whatever the number of ranks; 0 where unlabelled) in the working precision, for the SGD loss
    (rows of the global batch), the solvers (this rank's rows) and the probe's ridge CV."""
    if ctx.cfg.train.pos_weight == "none":
        return None
    data = ctx.inputs.splits["train"]
    pos_w, neg_w = positive_ratio_weights(data.targets, data.mask)
    return entry_weights(data.targets, data.mask, pos_w, neg_w, ctx.dtype)


def _decay_tails_to_init(ctx: Context) -> None:
    """L2-SP: grad += weight_decay (θ − θ₀) for the tails (θ₀: their initial values)."""
    assert ctx.tail_init is not None  # taken by the trainer when the option is on
    wd = ctx.cfg.train.weight_decay
    for p, p0 in zip(tail_params(ctx.predictor), ctx.tail_init, strict=True):
        if p.grad is not None:
            p.grad.add_(p.detach() - p0, alpha=wd)


def sgd_epoch(ctx: Context, sgd: SGD, method: Method, rnd: int, epoch: int, step: int) -> None:
    """One epoch of SGD on the training split: the same global batches whatever the number of
    ranks (each rank takes its slice), a learning rate that is a function of the step only.
    ``step``: the plan step, for the metrics log."""
    t = ctx.cfg.train
    data = ctx.inputs.splits["train"]
    steps_per_epoch = math.ceil(len(data) / t.batch_size)
    total = method.epochs(t) * steps_per_epoch
    world = ctx.dist.world_size
    sampler = distributed.GlobalBatchSampler(
        len(data),
        t.batch_size,
        seed=hash_seed(t.seed, method.name, rnd, 0),
        rank=ctx.dist.rank,
        world_size=world,
    )
    sampler.set_epoch(epoch)
    global_batches = list(sampler.global_batches())
    images = None
    if data.inputs is None:  # trainable trunk: (augmented) images, loaded in the background
        images = ctx.inputs.augmented_batches(
            data,
            [sampler.local(b) for b in global_batches],
            seed=hash_seed(t.seed, method.name, rnd, epoch) + ctx.dist.rank,
        )
    weights = class_weights(ctx)  # (N, M) or None
    ctx.predictor.train()
    running, start = 0.0, time.time()
    for i, batch in enumerate(global_batches):
        lr = cosine_lr(t.lr, epoch * steps_per_epoch + i, total, t.schedule)
        for group in sgd.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        idx = sampler.local(batch).to(ctx.device)
        inputs = data.inputs[idx] if images is None else next(images).to(ctx.device)
        with ctx.autocast():
            scores = sgd.module(inputs)
        # DDP averages gradients over ranks: scale so that they sum to the global batch's
        # (class weights: the weighted mean over the global batch's labels)
        rows = batch.to(ctx.device)
        n_labelled = data.mask[rows].sum() if weights is None else weights[rows].sum()
        loss = (
            masked_squared_hinge(
                scores.to(ctx.dtype),
                data.targets[idx],
                data.mask[idx],
                n_labelled,
                ctx.task_weights if t.sgd_task_weights else None,
                None if weights is None else weights[idx],
            )
            * world
        )
        sgd.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.tail_decay_to_init:
            _decay_tails_to_init(ctx)
        sgd.optimizer.step()
        running += float(loss.detach())
    # every step sets the gradients to None before its backward, so they are dead from here
    # on: free them (as large as the tails) before evaluation, checkpoint saves and solves
    sgd.optimizer.zero_grad(set_to_none=True)
    if images is not None:
        images.close()  # leaves its fork_rng block now: the global random state comes back
    n_steps = len(global_batches)
    running = float(distributed.all_reduce_sum(torch.tensor([running]))) / world
    val = val_accuracy(ctx)
    ctx.run.log_metrics(
        step,
        method=method.name,
        phase="sgd",
        round=rnd,
        epoch=epoch,
        loss=running / n_steps,
        val_accuracy=val,
        lr=lr,
        seconds=time.time() - start,
    )
    ctx.log.info(
        "%s round %d epoch %d: loss %.4f, val accuracy %.2f%%",
        method.name,
        rnd,
        epoch,
        running / n_steps,
        100 * val,
    )
    _warn_if_diverging(ctx, sgd, method, rnd, epoch, running / n_steps)


def _warn_if_diverging(
    ctx: Context, sgd: SGD, method: Method, rnd: int, epoch: int, loss: float
) -> None:
    """A WARNING when the epoch's mean loss exceeds :data:`DIVERGENCE_RATIO` times the previous
    epoch's of the same stage, naming the likely cause and the fixes, and ``sgd.diverged`` set:
    the trainer then keeps the stage's round out of keep-best's choice (a diverged model can win
    on a small validation split by chance: Clothing fold 3 at 10 % of the labels kept a round
    whose loss had gone from 7.8 to 1142, 2 validation labels of 474 ahead of the probe)."""
    previous = sgd.losses[-1] if sgd.losses else None
    sgd.losses.append(loss)
    if previous is None or not loss > DIVERGENCE_RATIO * previous:
        return
    sgd.diverged = True
    weights = ""
    c = ctx.task_weights
    if c is not None and ctx.cfg.train.sgd_task_weights:
        weights = (
            f"; mtl.task_weights scale each attribute's steps and span {float(c.min()):.2g} to "
            f"{float(c.max()):.2g}: set train.sgd_task_weights=false"
        )
    ctx.log.warning(
        "%s round %d epoch %d: the training loss rose from %.4g to %.4g (x%.1f), SGD is "
        "diverging (keep-best will not return to this round); lower train.lr (now %g)%s",
        method.name,
        rnd,
        epoch,
        previous,
        loss,
        loss / previous,
        ctx.cfg.train.lr,
        weights,
    )


# ----------------------------------------------------------------------------- probe and solve
def probe(ctx: Context, weights: np.ndarray, bias: np.ndarray, keep: KeepBest | None) -> None:
    """``train.linear_probe``: S-CNN's heads become the given per-attribute SVMs (W (D, M),
    bias (M,), fitted on the initial tail features of the training split); SGD fine-tunes from
    there. Round 0 of S-CNN for ``keep``."""
    head = ctx.predictor.head
    with torch.no_grad():
        head.L.copy_(torch.as_tensor(weights, dtype=head.L.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
    val = val_accuracy(ctx)
    ctx.log.info("S-CNN linear probe: validation accuracy %.2f%%", 100 * val)
    if keep is not None:
        keep.update("S-CNN", 0, val, ctx.predictor)


def fit_mtl(ctx: Context, method: Method, mu: float, lam: float, x: Any, **start: Any) -> Any:
    """``fit_alternating`` on tail features x (n, M, D) of this rank's training rows (an array,
    or an :class:`apcnn.features_store.FactoredFeatures`), with the per-sample penalties ``mu``,
    ``mtl.gamma`` and ``lam`` scaled to eq. 2 by :func:`apcnn.selection.solver_penalties`;
    ``start``: ``W0=`` or ``L0=, S0=`` (tensors or arrays). The budgets ``mtl.time_budget``,
    ``mtl.iter_budget`` and ``mtl.gap_tol`` apply per call; the log gets one line per outer
    iteration (objective, relative decrease, KKT gap, estimated time left) and a heartbeat at
    least every 10 seconds inside long sub-problems. Under torchrun the solvers all-reduce their
    sums over samples. With ``train.pos_weight: ratio`` the loss is weighted by
    :func:`class_weights` (this rank's rows) and the penalties scale with their sum."""
    from ..selection import solver_penalties
    from ..solvers import SolverProgress, fit_alternating

    m_cfg, data = ctx.cfg.mtl, ctx.inputs.splits["train"]
    rows = ctx.inputs.my_rows(data)
    y, mask = data.targets[rows].cpu().numpy(), data.mask[rows].cpu().numpy()
    weights = class_weights(ctx)
    # n counts the labels (or their weights) of all ranks
    penalties = solver_penalties(
        data.mask, sample_weights=weights, mu=mu, gamma=m_cfg.gamma, lam=lam
    )
    start = {
        k: None if v is None else np.asarray(v.detach().cpu() if torch.is_tensor(v) else v)
        for k, v in start.items()
    }
    label = f"{method.name} solve (mu={mu:g})"

    def report(p: SolverProgress) -> None:
        ctx.log.info("%s: %s", label, p.line())

    result = fit_alternating(
        x,
        y,
        method.groups(ctx.schema),
        **penalties,
        K=ctx.cfg.model.rank,
        mask=mask,
        **start,
        max_outer=m_cfg.max_outer,
        tol=m_cfg.tol,
        method=m_cfg.method,
        loss=m_cfg.loss,
        bias=True,
        seed=ctx.cfg.train.seed,
        max_iter=m_cfg.max_iter,
        inner_tol=m_cfg.inner_tol,
        sample_reduce=distributed.all_reduce_sum if ctx.dist.distributed else None,
        task_weights=None if ctx.task_weights is None else ctx.task_weights.cpu().numpy(),
        sample_weights=None if weights is None else weights[rows].cpu().numpy(),
        time_budget_s=m_cfg.time_budget,
        iter_budget=m_cfg.iter_budget,
        gap_tol=m_cfg.gap_tol,
        report=report,
        progress_every_s=10.0,
    )
    how = {
        "time_budget": f"stopped by mtl.time_budget={m_cfg.time_budget} s (not converged)",
        "iter_budget": f"stopped by mtl.iter_budget={m_cfg.iter_budget} (not converged)",
        "max_outer": f"stopped at mtl.max_outer={m_cfg.max_outer} (not converged)",
        "kkt": f"converged (KKT gap <= mtl.gap_tol={m_cfg.gap_tol})",
        "tol": "converged",
    }.get(result.stop, result.stop)
    log = ctx.log.warning if result.stop in ("time_budget", "iter_budget") else ctx.log.info
    log("%s: %s after %d outer iterations, %.1f s", label, how, result.n_iter, result.seconds)
    return result


def single_heads(predictor: nn.Module) -> None:
    """S-CNN head: S = I (K = M), so column m of L is attribute m's own w_m."""
    head = predictor.head
    with torch.no_grad():
        head.L.zero_()
        head.S.copy_(torch.eye(head.S.shape[0], head.S.shape[1]))
        head.bias.zero_()
    head.S.requires_grad_(False)


def new_head(ctx: Context, rank: int) -> nn.Module:
    """A fresh multi-task layer with K = ``rank`` on the predictor's device and precision."""
    from ..models.latent import LatentTaskLayer

    dim, m = ctx.predictor.cnn.feature_dim, ctx.schema.num_attributes
    head = LatentTaskLayer(dim, num_latent=rank, num_attributes=m)
    return head.to(ctx.device, ctx.dtype)


def solver_features(ctx: Context, data: SplitData) -> Any:
    """This rank's rows of ``data`` as the solvers take them (``mtl.features``): ``dense``, the
    (n, M, D) array of :func:`tail_features`; ``factored`` (fc tails only), an
    :class:`apcnn.features_store.FactoredFeatures` of the trunk features and the tails' weights,
    exact and never (n, M, D) in memory (the tails run in the working precision, no autocast)."""
    rows = ctx.inputs.my_rows(data)
    if ctx.cfg.mtl.features != "factored":
        return tail_features(ctx, data, rows)
    from ..features_store import FactoredFeatures

    cnn = ctx.predictor.cnn
    if getattr(cnn, "tail", None) != "fc":
        raise ValueError(
            f"mtl.features=factored needs model.tail=fc (got {ctx.cfg.model.tail!r}); "
            "use mtl.features=dense"
        )
    ctx.predictor.eval()
    with torch.no_grad():
        h = torch.cat(
            [t.flatten(1).to(ctx.dtype).cpu() for t in ctx.inputs.trunk_batches(data, rows)]
        )
        tails = cnn.tails
        x = FactoredFeatures(h, tails.weight.to(ctx.dtype).cpu(), tails.bias.to(ctx.dtype).cpu())
    # what grows with N once SGD has moved the tails: 10 bytes per negative pre-activation
    ctx.log.info(
        "factored features: %d of %d pre-activations negative (%.1f%%), ReLU correction %.2f GB",
        x.nnz,
        x.numel(),
        100 * x.nnz / max(x.numel(), 1),
        x.correction_nbytes / 1e9,
    )
    return x


def solve(
    ctx: Context,
    method: Method,
    rnd: int,
    lam: float,
    state: TrainState,
    keep: KeepBest | None,
    step: int,
) -> None:
    """Algorithm 1 on the current tail features: L, S (and bias) of eq. 2, per-sample ``lam``.

    Round 0 starts from S-CNN's heads (W = [w_1 .. w_M], L from its SVD; the caller has put
    S-CNN's state into the predictor) and chooses mu from ``mtl.mu_grid`` on validation
    (:func:`apcnn.selection.choose_on_validation`); later rounds warm-start from the current L
    and S with the chosen mu.
    """
    from ..selection import choose_on_validation

    m_cfg = ctx.cfg.mtl
    head = ctx.predictor.head
    train = ctx.inputs.splits["train"]
    started = time.time()
    ctx.log.info("%s round %d: tail features of the training split", method.name, rnd)
    x = solver_features(ctx, train)
    ctx.log.info(
        "%s round %d: %s tail features %s (%.2f GB) in %.1f s",
        method.name,
        rnd,
        m_cfg.features,
        "x".join(str(n) for n in x.shape),
        x.nbytes / 1e9,
        time.time() - started,
    )
    val: float | None = None
    if rnd > 0:
        mu = state.chosen.get(method.name, {}).get("mu", m_cfg.mu)
        result = fit_mtl(ctx, method, mu, lam, x, L0=head.L, S0=head.S)
    else:
        w0 = (head.L @ head.S).detach()
        ctx.predictor.head = new_head(ctx, ctx.cfg.model.rank)

        def validate(mu: float, candidate: Any) -> float:
            ctx.predictor.head.load_solution(candidate.L, candidate.S, candidate.bias)
            acc = val_accuracy(ctx)
            ctx.log.info("%s: mu=%g gives validation accuracy %.2f%%", method.name, mu, 100 * acc)
            return acc

        previous: list[Any] = []  # mtl.warm_start_grid: the last mu's solution

        def fit(mu: float) -> Any:
            if m_cfg.warm_start_grid and previous:
                result = fit_mtl(ctx, method, mu, lam, x, L0=previous[-1].L, S0=previous[-1].S)
            else:
                result = fit_mtl(ctx, method, mu, lam, x, W0=w0)
            previous[:] = [result]
            return result

        best = choose_on_validation(m_cfg.mu_grid or [m_cfg.mu], fit, validate)
        val, result = best.score, best.result
        state.chosen[method.name] = {"mu": best.candidate, "val_accuracy": val}
    ctx.predictor.head.load_solution(result.L, result.S, result.bias)
    if keep is not None:
        keep.update(method.name, rnd, val if val is not None else val_accuracy(ctx), ctx.predictor)
    if ctx.cfg.train.dist_debug:
        for name in ("L", "S", "bias"):
            distributed.assert_same_on_all_ranks(
                getattr(ctx.predictor.head, name), f"{method.name} round {rnd}: {name}"
            )
    state.histories.setdefault(method.name, []).append([float(v) for v in result.history])
    ctx.run.log_metrics(
        step,
        method=method.name,
        phase="solve",
        round=rnd,
        objective=float(result.history[-1]),
        outer_iterations=int(result.n_iter),
        converged=bool(result.converged),
        stop=str(result.stop),
        seconds=float(result.seconds),
    )
    ctx.log.info(
        "%s round %d: solver objective %.5g after %d outer iterations",
        method.name,
        rnd,
        result.history[-1],
        result.n_iter,
    )


# ----------------------------------------------------------------------------- finish
def finish(
    ctx: Context, method: Method, state: TrainState, keep: KeepBest | None, save: Any
) -> None:
    """The method is done: back to its best-validated round (``keep``), Platt calibration on
    the validation split, the decision thresholds of ``train.threshold`` chosen there
    (:func:`apcnn.calibration.choose_thresholds`; ``"0"``: σ(c_m), the trained boundary), test
    metrics of the predictor's decisions p >= threshold into ``state.results`` (with a
    ``"thresholds"`` entry: rule and values), and ``save(method, metrics, prior)`` writes its
    predictor checkpoint."""
    from ..calibration import boundary_thresholds, calibration_prior, fit_platt

    if keep is not None:
        if not method.multitask and keep.has_best(method.name):
            keep.update(method.name, 1, val_accuracy(ctx), ctx.predictor)  # after the probe
        keep.restore(method.name, ctx.predictor)
    val = ctx.inputs.splits["val"]
    val_targets, val_mask = val.targets.cpu().numpy(), val.mask.cpu().numpy()
    val_scores = split_scores(ctx, "val")
    params = fit_platt(val_scores, val_targets, val_mask)
    # the label frequency the calibration was fitted under (zero-shot divides by it)
    prior = [None if np.isnan(r) else float(r) for r in calibration_prior(val_targets, val_mask)]
    ctx.predictor.calibration.copy_(torch.as_tensor(params, dtype=torch.float32))
    # rule "0": decide p >= σ(c_m), the same decisions as score >= 0 (the trained boundary)
    ctx.predictor.threshold.copy_(torch.as_tensor(boundary_thresholds(params)))
    rule = ctx.cfg.train.threshold
    shift = None
    if rule != "0":
        shift = choose_thresholds_on_val(ctx, method, val_scores, val_targets, val_mask, rule)
    metrics = evaluate(ctx, "test")
    metrics["thresholds"] = {
        "rule": rule,
        "per_attribute": dict(zip(ctx.schema.names, ctx.predictor.threshold.tolist(), strict=True)),
    }
    if shift is not None:  # rule prior_shift: the step chosen on validation
        metrics["thresholds"]["shift"] = shift
    state.results[method.name] = metrics
    save(method.name, metrics, prior)
    if keep is not None:
        keep.discard(method.name)  # the method's final predictor replaces its best snapshot
    ctx.log.info("%s test accuracy %.2f%%", method.name, 100 * metrics["accuracy"]["total"])


def choose_thresholds_on_val(
    ctx: Context,
    method: Method,
    val_scores: np.ndarray,
    val_targets: np.ndarray,
    val_mask: np.ndarray,
    rule: str,
) -> float | None:
    """Set the predictor's thresholds to :func:`apcnn.calibration.thresholds_by_rule` of the
    calibrated validation probabilities (the boundary thresholds in the buffer are the
    fallback and the tie-break; ``prior_shift`` moves towards the validation label frequencies)
    and log the validation accuracy and mA before and
    after. Returns the prior shift w (rule ``prior_shift``), else None."""
    from ..calibration import thresholds_by_rule
    from ..metrics import attribute_metrics

    pred = ctx.predictor

    def on_val() -> dict[str, Any]:
        d = predictor_decisions(pred, val_scores)
        return attribute_metrics(val_scores, val_targets, val_mask, ctx.schema, decisions=d)

    before = on_val()
    with torch.inference_mode():
        probs = pred.probabilities(torch.as_tensor(val_scores).to(pred.calibration)).cpu().numpy()
    boundary = pred.threshold.detach().cpu().numpy().copy()  # not a view of the buffer
    loss = ctx.cfg.train.threshold_max_accuracy_loss
    chosen, shift = thresholds_by_rule(probs, val_targets, val_mask, rule, boundary, loss)
    if shift is not None:
        ctx.log.info(
            "%s prior shift w=%.2f (validation accuracy loss <= %g)", method.name, shift, loss
        )
    pred.threshold.copy_(torch.as_tensor(chosen))
    after = on_val()
    ctx.log.info(
        "%s thresholds (train.threshold=%s): %d of %d attributes off the boundary; validation "
        "accuracy %.2f%% -> %.2f%%, mA %.2f%% -> %.2f%%",
        method.name,
        rule,
        int(np.sum(chosen != boundary)),
        chosen.size,
        100 * before["accuracy"]["total"],
        100 * after["accuracy"]["total"],
        100 * before["balanced_accuracy"]["total"],
        100 * after["balanced_accuracy"]["total"],
    )
    return shift
