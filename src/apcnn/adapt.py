"""Trunk adaptation: fine-tune the top of the shared trunk on all attributes, before the methods.

The paper fine-tunes its CNNs on the attribute labels. ImageNet features miss what some
attributes need most: on Clothing, frozen features leave the colours near their majority rate
(red 94.4 % against 94.7 % always-"no"). Fine-tuning the whole network every epoch is too slow on
a CPU, so only the last ``n`` blocks of the backbone and its head convolution (the *top*) are
trained, on cached outputs of the frozen blocks below them (the *bottom*):

    z(i) = bottom(image_i)                   (C, H', W')   computed once per dataset, cached
    x(i) = pool(top_θ(z(i)))                 (D,)          pool: ``model.pool_region`` window
    s(i) = A x(i) + b                        (M,)          a temporary linear head
    loss = Σ_{i,m labelled} log(1 + exp(−y_im s_im)) / #labelled

with AdamW, a one-cycle learning rate (the head at 10x the top's) and random horizontal flips:
the bottom maps of the mirror images when they are given (``model.flip_average`` caches them),
otherwise the cached maps flipped (an approximation: the bottom's convolutions are nearly
flip-equivariant). Batch norms keep their ImageNet statistics (eval mode): batches of a few dozen
images would give noisy ones. The head is thrown away; the adapted top stays in the backbone, so
everything after it (the pooled-feature cache, S-CNN, M-CNN, MG-CNN, checkpoints) sees the
adapted trunk. All attributes share this step; the methods differ in the layer above it.

Clothing, fold 0, 224 x 336, 2 CPU cores: the ImageNet trunk at 320 x 480 gave MG-CNN test
accuracy 91.64 % (colours 89.4 %); top = last 5 blocks, 8 epochs of about 13-21 s (the recipe
of ``configs/clothing.yaml``): 93.33 % (colours 91.65 %); top = last 8 blocks (from stride 16),
6 epochs of about 25 s: 93.44 % (colours 92.22 %), but over the 5 folds no better (93.01 against
93.04; README, Table III section).

**Collapse guard.** With too few labels the adaptation can kill the top's units (issue 19:
Clothing fold 0, ``data.label_fraction=0.05``, 4 epochs: 99.8 % of the pooled features constant
over the photos, their summed spread 4.5e-6 of the ImageNet trunk's; every CNN method then
answers the majority class). :func:`adapt_top` therefore pools the top's features on up to
``check_images`` training maps before and after training; when the adapted features have
*collapsed* -- more than :data:`COLLAPSE_DEAD_SHARE` of the features that vary over the sample
before are constant after (spread below 1e-3 of their own ImageNet spread), or the summed
per-feature spread (std over the sample) fell below :data:`COLLAPSE_SPREAD` of the ImageNet
trunk's -- it logs a WARNING, puts the un-adapted (ImageNet) top back and records
``rejected: True`` in the last history record. Measured on 200 Clothing photos (same runs): the
ImageNet trunk has 30.1 % of its pooled values exactly 0 (ReLU6) but no constant feature;
adapted with all labels 0 % constant (spread 1.15x), 25 % of the labels 0.6 % (0.91x), 10 %
70 % (0.20x; S-CNN 88.69 % below S-extract's 89.84 %, not rejected), 5 % 99.8 % (4.5e-6x).

**Validation gate** (``train.adapt_gate: validation``, the default). A partial collapse passes
the guard and still costs accuracy, so after it, when the run has validation labels, training
(:meth:`apcnn.training.inputs.Inputs._validation_gate`) scores both tops by the probe the CNN
methods start from: per-attribute squared-hinge SVMs on the pooled features, fitted on the
training split along the ridge path and scored on the validation split at each attribute's best
ridge weight (micro accuracy over its known labels, :func:`probe_accuracy`).
The adapted top is kept unless its accuracy is more than :data:`GATE_TOLERANCE` below the
ImageNet top's (:func:`validation_gate`); otherwise the ImageNet top is put back with a WARNING
and the last history record gets ``gate: {"adapted", "imagenet", "kept"}`` (``chosen.adapt.gate``
of the run). The ImageNet features come from the same cached bottom maps (those of
``pretrained_inputs``, S-extract's); the decision is saved with the (possibly reverted) top in
``checkpoints/adapted_top``, and under torchrun rank 0's decision is broadcast.
Measured on Clothing fold 0, ``--quick`` schedule, ``apcnn train -c configs/clothing.yaml``.
All labels, this probe: kept, 93.65 % on the adapted features against 92.08 % on the ImageNet
ones (4758 validation labels); the step took 3 min 24 s on 2 cores, including the pooled
features of both tops for every photo and its mirror (the adapted ones are cached and reused
by the methods; the split between features and probes was not measured). 10 % of the labels,
this probe: reverted, 90.81 % against 92.07 % (479 validation labels; gate step 1 min 54 s).
With the gate's first probe (3-fold ridge CV): 89.14 % against 89.77 %, reverted; test accuracy
/ mA S-CNN 89.79 / 61.8 (88.69 / 62.7 adapted), M-CNN 89.25 / 63.2 (89.02 / 62.2), MG-CNN
89.38 / 63.1 (88.83 / 62.6), S-extract 89.84 / 63.3.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .models.attribute_cnn import efficientnet_blocks
from .models.pooling import Region, check_region, region_mean

__all__ = [
    "COLLAPSE_DEAD_SHARE",
    "COLLAPSE_SPREAD",
    "GATE_TOLERANCE",
    "Mirrored",
    "adapt_top",
    "feature_collapse",
    "probe_accuracy",
    "split_top",
    "top_features",
    "validation_gate",
]

#: an adaptation is rejected when more than this share of the features that vary over the check
#: sample before it are constant after it (Clothing: 0-0.6 % when healthy, 70 % at 10 % of the
#: labels, 99.8-100 % at 5 %; the 64-pixel synthetic test run: 60 %). Only a near-total collapse
#: is rejected: a partial one (10 %) still learns (mA 62.7) and is left to the user
COLLAPSE_DEAD_SHARE = 0.95
#: ... or when the summed per-feature spread fell below this share of the ImageNet trunk's
COLLAPSE_SPREAD = 0.01
#: the validation gate keeps the adapted top unless its probe's validation accuracy is more than
#: this below the ImageNet top's: 0.2 points, one label in the 479 validation labels of Clothing
#: fold 0 at 10 % of the labels (about 10 of some 4 800 at all labels), far below the 1.15-point
#: loss the gate exists to catch; a tie or a one-label difference keeps the adaptation, which
#: also gains from what a linear probe does not measure (the methods fine-tune above it)
GATE_TOLERANCE = 0.002
_DEAD = 1e-3  # a feature is dead when its spread fell below this share of its own spread before

_log = logging.getLogger(__name__)


class Mirrored(nn.Module):
    """``module`` applied to the left-right mirror images: ``module(images.flip(-1))``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.flip(-1))


def split_top(backbone: nn.Module, blocks: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(bottom, top) of a timm EfficientNet-family ``backbone``, sharing its modules (training
    ``top`` changes ``backbone``). ``bottom(images)`` then ``top`` equals
    ``backbone.forward_features(images)``; ``top`` = the last ``blocks`` blocks (counted over all
    stages) + ``conv_head`` + ``bn2``."""
    flat = efficientnet_blocks(backbone, "train.adapt_blocks needs")
    if not 1 <= blocks <= len(flat):
        raise ValueError(f"train.adapt_blocks must be in [1, {len(flat)}], got {blocks}")
    cut = len(flat) - blocks
    bottom = nn.Sequential(backbone.conv_stem, backbone.bn1, *flat[:cut])
    top = nn.Sequential(*flat[cut:], backbone.conv_head, backbone.bn2)
    return bottom, top


def _pooled(top: nn.Module, z: torch.Tensor, region: Region | None) -> torch.Tensor:
    return region_mean(top(z), region)


def _batches(n: int, size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    return [order[i : i + size] for i in range(0, n, size)]


def feature_collapse(before: torch.Tensor, after: torch.Tensor) -> dict[str, float | bool]:
    """Compare pooled features (n, D) of the same images before and after an adaptation.

    Returns ``dead_share`` (of the features whose spread over the images was > 0 before, the
    share whose spread fell below 1e-3 of it), ``spread_ratio`` (summed per-feature std after
    over before) and ``collapsed`` (``dead_share > COLLAPSE_DEAD_SHARE`` or ``spread_ratio <
    COLLAPSE_SPREAD``). Spreads, not exact zeros: ReLU6 trunks give many exact zeros when healthy
    (ImageNet Lite0: 30 % of the pooled values), but a unit that answers the same for every
    image carries nothing."""
    std0, std1 = before.double().std(0), after.double().std(0)
    varying = std0 > 0
    dead = (std1[varying] <= _DEAD * std0[varying]).double().mean() if varying.any() else 0.0
    ratio = float(std1.sum() / std0.sum()) if std0.sum() > 0 else 1.0
    dead_share = float(dead)
    return {
        "dead_share": dead_share,
        "spread_ratio": ratio,
        "collapsed": dead_share > COLLAPSE_DEAD_SHARE or ratio < COLLAPSE_SPREAD,
    }


def adapt_top(
    top: nn.Module,
    maps: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    *,
    pool_region: Sequence[float] | None = None,
    mirrored: torch.Tensor | None = None,
    epochs: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
    amp: torch.dtype | None = None,
    progress: bool = False,
    log: logging.Logger | None = None,
    check_images: int = 256,
) -> list[dict[str, float]]:
    """Fine-tune ``top`` in place on cached bottom maps (see the module docstring).

    Args:
        top: the trainable part (e.g. from :func:`split_top`); moved to ``device``.
        maps: (N, C, H', W') bottom outputs of the training images (any float dtype, any device;
            batches are moved to ``device`` as float32).
        targets: (N, M) in {-1, +1} (0 or anything where ``mask`` is False).
        mask: (N, M) bool, True = labelled.
        pool_region: the window of the top's output that is averaged (None: all of it).
        mirrored: bottom maps of the mirror images, like ``maps``, used for the random flips
            (None: ``maps`` flipped left-right instead).
        epochs, lr, weight_decay, batch_size: AdamW with a one-cycle schedule to ``lr`` (the
            top) and ``10 * lr`` (the head).
        seed: batch order, flips and the head's start are a pure function of it.
        amp: autocast dtype for the forward pass (None: off).
        check_images: the collapse guard (module docstring) pools the top's features on this
            many evenly spaced rows of ``maps`` before and after training (0 or 1: no guard).

    Returns one ``{"epoch", "loss"}`` record per epoch (mean training loss); with the guard the
    last record also has ``dead_share``, ``spread_ratio`` (:func:`feature_collapse`) and
    ``rejected`` (True: the features collapsed and ``top`` was given its starting weights back).
    """
    if maps.ndim != 4 or targets.shape != mask.shape or len(maps) != len(targets):
        raise ValueError(
            f"maps (N, C, H, W), targets and mask (N, M) expected; got {tuple(maps.shape)}, "
            f"{tuple(targets.shape)}, {tuple(mask.shape)}"
        )
    if mirrored is not None and mirrored.shape != maps.shape:
        raise ValueError(
            f"mirrored maps {tuple(mirrored.shape)} must have the maps' shape {tuple(maps.shape)}"
        )
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
    region = check_region(pool_region)
    device = torch.device(device)
    top.to(device).requires_grad_(True)  # a frozen trunk's modules come with gradients off
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dim = _pooled(top.eval(), maps[:1].to(device, torch.float32), region).shape[1]
    # the guard's sample and reference: evenly spaced rows (no draw from the seeded stream)
    sample = torch.linspace(0, len(maps) - 1, min(check_images, len(maps))).round().long()
    check = len(sample) >= 2
    if check:
        start = {k: v.detach().clone() for k, v in top.state_dict().items()}
        reference = top_features(top, maps[sample], pool_region)
    head = nn.Linear(dim, targets.shape[1]).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.AdamW(
        [{"params": top.parameters(), "lr": lr}, {"params": head.parameters(), "lr": 10 * lr}],
        weight_decay=weight_decay,
    )
    steps = epochs * math.ceil(len(maps) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, [lr, 10 * lr], total_steps=steps, pct_start=0.15
    )
    # fp16 gradients need loss scaling; bf16 and float32 do not (the scaler is then a no-op)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    y = (targets > 0).float()
    weight = mask.float()
    history: list[dict[str, float]] = []
    bar = None
    if progress:
        from .runlog import progress as progress_bar

        bar = progress_bar(total=steps, desc="adapting the trunk top", unit="batch")
    top.eval()  # batch norms keep their statistics; gradients still flow
    try:
        for epoch in range(epochs):
            total, count = 0.0, 0
            for rows in _batches(len(maps), batch_size, generator):
                flip = torch.rand(len(rows), generator=generator) < 0.5
                z = maps[rows].to(device, torch.float32)
                if mirrored is not None:
                    z[flip.to(device)] = mirrored[rows[flip]].to(device, torch.float32)
                else:
                    z[flip.to(device)] = z[flip.to(device)].flip(-1)
                w = weight[rows].to(device)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    scores = head(_pooled(top, z, region))
                losses = nn.functional.binary_cross_entropy_with_logits(
                    scores.float(), y[rows].to(device), reduction="none"
                )
                loss = (losses * w).sum() / w.sum().clamp_min(1.0)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                total += float(loss.detach()) * len(rows)
                count += len(rows)
                if bar is not None:
                    bar.update()
            history.append({"epoch": epoch, "loss": total / max(count, 1)})
            if log is not None:
                log.info("trunk adaptation epoch %d: loss %.4f", epoch, history[-1]["loss"])
    finally:
        if bar is not None:
            bar.close()
    top.requires_grad_(False)
    if check:
        verdict = feature_collapse(reference, top_features(top, maps[sample], pool_region))
        history[-1].update(
            dead_share=float(verdict["dead_share"]),
            spread_ratio=float(verdict["spread_ratio"]),
            rejected=bool(verdict["collapsed"]),
        )
        if verdict["collapsed"]:
            top.load_state_dict(start)
            (log or _log).warning(
                "trunk adaptation REJECTED, the ImageNet trunk is kept: its pooled features "
                "collapsed on %d training images (%.1f %% of the features constant, spread "
                "%.2g of the ImageNet trunk's). Too few labels for this adaptation (%d labelled "
                "entries, %d steps at lr %g): set train.adapt_blocks=0 to skip it, or lower "
                "train.adapt_lr / train.adapt_epochs",
                len(sample),
                100 * float(verdict["dead_share"]),
                float(verdict["spread_ratio"]),
                int(mask.sum()),
                steps,
                lr,
            )
    return history


@torch.no_grad()
def top_features(
    top: nn.Module,
    maps: torch.Tensor,
    pool_region: Sequence[float] | None = None,
    *,
    mirrored: torch.Tensor | None = None,
    batch_size: int = 64,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """Pooled features (N, D), float32 on the CPU, of ``top`` (eval mode) on cached bottom maps
    (N, C, H', W'): the trunk features of the images the maps came from, without running the
    bottom again. With ``mirrored`` (the bottom maps of the mirror images) the features are
    averaged over each image and its mirror image, as ``PooledTrunk(flip_average=True)``."""
    if mirrored is not None:
        if mirrored.shape != maps.shape:
            raise ValueError(
                f"mirrored maps {tuple(mirrored.shape)} must have the maps' shape "
                f"{tuple(maps.shape)}"
            )
        own = top_features(top, maps, pool_region, batch_size=batch_size, amp=amp)
        return (own + top_features(top, mirrored, pool_region, batch_size=batch_size, amp=amp)) / 2
    region = check_region(pool_region)
    top.eval()
    device = next(top.parameters()).device
    out = []
    for i in range(0, len(maps), batch_size):
        z = maps[i : i + batch_size].to(device, torch.float32)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out.append(_pooled(top, z, region).float().cpu())
    return torch.cat(out)


def probe_accuracy(
    x_train: np.ndarray,
    y_train: np.ndarray,
    mask_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    mask_val: np.ndarray,
    *,
    seed: int = 0,
) -> float:
    """Micro accuracy over the known labels of ``mask_val`` of per-attribute squared-hinge SVMs
    fitted on ``x_train`` (N, D) (features scaled to unit spread, :func:`apcnn.selection.
    feature_scale`) along the ridge path :data:`apcnn.selection.RIDGE_LAMBDAS`, each attribute
    scored at its best λ on the validation rows ``x_val`` (n, D)::

        acc = Σ_m max_λ #{i : sign(s_im(λ)) = y_im, (i, m) labelled} / #labelled

    One warm-started path on the training rows (the 3-fold CV fits four paths); the
    choice of λ on the scored rows flatters both tops alike, which is all a comparison needs.
    ``seed`` is unused (the path is deterministic); kept for the callers."""
    from .selection import RIDGE_LAMBDAS, feature_scale, ridge_path, scores

    del seed
    x_train, x_val = np.asarray(x_train, np.float64), np.asarray(x_val, np.float64)
    y_val, mask_val = np.asarray(y_val), np.asarray(mask_val, bool)
    scale = feature_scale(x_train)
    best = np.zeros(y_val.shape[1])
    path = ridge_path(x_train / scale, np.asarray(y_train), np.asarray(mask_train), RIDGE_LAMBDAS)
    for _, W, bias in path:
        right = (np.sign(scores(x_val / scale, W, bias)) == y_val) & mask_val
        best = np.maximum(best, right.sum(axis=0))
    return float(best.sum() / max(int(mask_val.sum()), 1))


def validation_gate(
    adapted: tuple[np.ndarray, np.ndarray],
    imagenet: tuple[np.ndarray, np.ndarray],
    y_train: np.ndarray,
    mask_train: np.ndarray,
    y_val: np.ndarray,
    mask_val: np.ndarray,
    *,
    seed: int = 0,
    tolerance: float = GATE_TOLERANCE,
) -> dict[str, float | bool]:
    """The validation gate (module docstring): ``adapted`` and ``imagenet`` are the pooled
    features (train (N, D), val (n, D)) of the same images from the adapted and the ImageNet top.
    Returns ``{"adapted": acc, "imagenet": acc, "kept": acc_adapted >= acc_imagenet -
    tolerance}`` (accuracies of :func:`probe_accuracy`, the same seed for both)."""
    labels = (y_train, mask_train)
    acc = {
        name: probe_accuracy(train, *labels, val, y_val, mask_val, seed=seed)
        for name, (train, val) in (("adapted", adapted), ("imagenet", imagenet))
    }
    return {**acc, "kept": bool(acc["adapted"] >= acc["imagenet"] - tolerance)}
