"""Zero-shot classification from predicted attributes: Lampert's DAP and IAP.

Lampert, Nickisch & Harmeling, "Attribute-based classification for zero-shot visual object
categorization" (TPAMI 2014). An attribute predictor gives p(a_m = 1 | x) for M binary
attributes; every class z (seen in training or not) is described by a binary attribute
signature a^z in {0, 1}^M (a row of the class-attribute matrix A, (C, M)).

**DAP** (direct attribute prediction), with a uniform class prior::

    p(z | x)  ∝  Π_m  p(a_m = a^z_m | x) / p(a_m = a^z_m)

    log p(z | x) = Σ_m [ a^z_m (log p_m(x) − log π_m)
                         + (1 − a^z_m)(log(1 − p_m(x)) − log(1 − π_m)) ]
                   − logsumexp over the candidate classes

where p_m(x) = p(a_m = 1 | x) and π_m = p(a_m = 1). Each factor p(a_m | x) / p(a_m) is the
likelihood ratio p(x | a_m) / p(x) only when π_m is the prior *of the distribution p_m(x) was
estimated under*. Lampert's attribute classifiers are trained on the training classes' images, so
his π_m is the mean of column m of A over the *training* classes (:func:`attribute_priors`,
clipped to [eps, 1 − eps]: an attribute always on or off in training would otherwise give log 0).
apcnn's default probabilities are Platt posteriors fitted on the validation split; their prior is
that split's (smoothed) label frequency ρ_m (:func:`apcnn.calibration.calibration_prior`), so DAP
divides them by ρ_m (:func:`probability_priors`). With π_m instead, every attribute's evidence
would be off by logit ρ_m − logit π_m (the sampling error of a small validation split, or a real
difference where classes have unequal image counts); these x-independent terms add up per class,
Σ_m a^z_m (logit ρ_m − logit π_m), and bias DAP towards some candidate classes. The sigmoid of a
raw score has no prior of its own; it is divided by π_m.

**IAP** (indirect attribute prediction): attributes are inferred *through the training
classes*, p(a_m | x) = Σ_k a^{y_k}_m p(y_k | x), then classified with the DAP rule. Lampert
trains a multi-class classifier for p(y_k | x); the apcnn predictor has none, so the seen-class
posterior p(y_k | x) comes from one of two documented stand-ins (``iap_posteriors``):

- ``"dap"`` (default, no training): the DAP posterior over the *seen* classes computed from the
  predictor's own attribute probabilities (a "class-posterior-weighted" IAP: it projects each
  image's attribute probabilities onto the mixture of seen-class signatures);
- ``"logistic"``: a multinomial logistic regression from the predictor's M attribute scores to
  the seen class, fitted on the training split (an attribute→class layer, not Lampert's image
  classifier).

Class-attribute matrices with continuous strengths (AwA ``continuous=True``, CUB) are binarised
at 0.5 (``strength >= threshold``); binary matrices pass unchanged.

Shapes: N images, M attributes, C candidate classes, K seen classes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "binarize_class_attributes",
    "attribute_priors",
    "probability_priors",
    "dap_scores",
    "iap_attribute_probabilities",
    "iap_scores",
    "zero_shot_evaluate",
    "zeroshot_from_checkpoint",
    "format_zeroshot",
]

log = logging.getLogger(__name__)

#: attribute probabilities are clipped to [PROB_EPS, 1 − PROB_EPS] before taking logs
PROB_EPS = 1e-6


def _as_2d(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf; pass finite values")
    return a


def binarize_class_attributes(class_attributes: Any, threshold: float = 0.5) -> np.ndarray:
    """(C, M) class-attribute matrix -> (C, M) float 0/1 signatures ``a^z = [A >= threshold]``.

    A binary matrix is returned unchanged (as float); continuous strengths in [0, 1] (AwA's
    continuous matrix / 100, CUB's class-level percentages / 100) are thresholded.
    """
    a = _as_2d(class_attributes, "class_attributes")
    if np.isin(a, (0.0, 1.0)).all():
        return a.copy()
    return (a >= threshold).astype(np.float64)


def attribute_priors(
    train_class_attributes: Any, *, eps: float = 0.05, threshold: float = 0.5
) -> np.ndarray:
    """(M,) attribute prior π_m = clip(mean_k a^{y_k}_m, eps, 1 − eps) over the K training classes.

    ``train_class_attributes`` is the (K, M) block of the class-attribute matrix of the classes
    the predictor was trained on (class-level frequencies, as in Lampert's DAP, not image counts).
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    a = binarize_class_attributes(train_class_attributes, threshold)
    if a.shape[0] == 0:
        raise ValueError("train_class_attributes has no rows; pass the training classes' rows")
    return np.clip(a.mean(axis=0), eps, 1.0 - eps)


def probability_priors(class_priors: Any, calibration_prior: Any = None) -> np.ndarray:
    """(M,) prior of the attribute probabilities fed to DAP: ρ_m where defined, else π_m.

    Args:
        class_priors: (M,) π_m from :func:`attribute_priors` (the training classes).
        calibration_prior: (M,) ρ_m = p(a_m = 1) under which the probabilities were calibrated
            (:func:`apcnn.calibration.calibration_prior`), NaN for attributes without a
            calibration; None: no calibration at all (e.g. the sigmoid of the raw score).

    DAP then uses p_m(x) / ρ_m = p(x | a_m = 1) / p(x), the likelihood ratio (module docstring).
    """
    pi = np.asarray(class_priors, dtype=np.float64).reshape(-1)
    if calibration_prior is None:
        return pi.copy()
    rho = np.asarray(calibration_prior, dtype=np.float64).reshape(-1)
    if rho.shape != pi.shape:
        raise ValueError(
            f"calibration_prior has {rho.shape[0]} attributes, class_priors {pi.shape[0]}"
        )
    defined = np.isfinite(rho)
    if not ((rho[defined] > 0) & (rho[defined] < 1)).all():
        raise ValueError("calibration_prior must lie strictly inside (0, 1) (or be NaN)")
    return np.where(defined, rho, pi)


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(x, axis=axis, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))


def dap_scores(
    attr_probs: Any, class_attributes: Any, priors: Any, *, threshold: float = 0.5
) -> np.ndarray:
    """DAP log-posteriors (N, C): log p(z | x_n) over the C candidate classes (rows sum to 1).

    Args:
        attr_probs: (N, M) p(a_m = 1 | x_n), e.g. the predictor's calibrated probabilities;
            clipped to [1e-6, 1 − 1e-6].
        class_attributes: (C, M) signatures of the candidate classes (binarised at
            ``threshold`` if continuous).
        priors: (M,) p(a_m = 1) in (0, 1), the prior ``attr_probs`` were estimated under:
            π_m of the training classes (:func:`attribute_priors`) or the calibration
            split's ρ_m (:func:`probability_priors`).

    Formula (see the module docstring)::

        s[n, z] = Σ_m a^z_m log(p_nm / π_m) + (1 − a^z_m) log((1 − p_nm) / (1 − π_m))
                (π = ``priors``)
        out[n, z] = s[n, z] − logsumexp_z' s[n, z']
    """
    p = _as_2d(attr_probs, "attr_probs")
    a = binarize_class_attributes(class_attributes, threshold)
    pi = np.asarray(priors, dtype=np.float64).reshape(-1)
    m = p.shape[1]
    if a.shape[1] != m or pi.shape[0] != m:
        raise ValueError(
            f"attribute counts differ: attr_probs (N, {m}), class_attributes {a.shape}, "
            f"priors ({pi.shape[0]},); pass matrices over the same attributes"
        )
    if not ((pi > 0) & (pi < 1)).all():
        raise ValueError("priors must lie strictly inside (0, 1); clip them (attribute_priors)")
    p = np.clip(p, PROB_EPS, 1.0 - PROB_EPS)
    pos = np.log(p) - np.log(pi)  # (N, M)
    neg = np.log1p(-p) - np.log1p(-pi)  # (N, M)
    s = pos @ a.T + neg @ (1.0 - a).T  # (N, C)
    return s - _logsumexp(s, axis=1)


def iap_attribute_probabilities(
    seen_posteriors: Any, seen_class_attributes: Any, *, threshold: float = 0.5
) -> np.ndarray:
    """IAP attribute probabilities (N, M): p(a_m = 1 | x) = Σ_k p(y_k | x) a^{y_k}_m.

    Args:
        seen_posteriors: (N, K) p(y_k | x) over the K training classes (rows sum to 1).
        seen_class_attributes: (K, M) signatures of those classes.
    """
    post = _as_2d(seen_posteriors, "seen_posteriors")
    a = binarize_class_attributes(seen_class_attributes, threshold)
    if post.shape[1] != a.shape[0]:
        raise ValueError(
            f"seen_posteriors has {post.shape[1]} classes but seen_class_attributes has "
            f"{a.shape[0]} rows; pass the same seen classes in the same order"
        )
    return post @ a


def iap_scores(
    attr_probs: Any,
    class_attributes: Any,
    seen_class_attributes: Any,
    priors: Any,
    *,
    seen_posteriors: Any = None,
    input_priors: Any = None,
    threshold: float = 0.5,
) -> np.ndarray:
    """IAP log-posteriors (N, C) over the candidate classes.

    ``seen_posteriors`` (N, K) p(y_k | x); when None, the DAP posterior over the K seen classes
    from ``attr_probs`` divided by ``input_priors`` (their own prior, default ``priors``;
    the class-posterior-weighted variant, see the module docstring). Then
    p_IAP(a | x) = seen_posteriors @ A_seen, whose prior is the training classes' ``priors`` π,
    and the DAP rule with π over ``class_attributes`` (C, M).
    """
    if seen_posteriors is None:
        own = priors if input_priors is None else input_priors
        seen_posteriors = np.exp(
            dap_scores(attr_probs, seen_class_attributes, own, threshold=threshold)
        )
    probs = iap_attribute_probabilities(seen_posteriors, seen_class_attributes, threshold=threshold)
    return dap_scores(probs, class_attributes, priors, threshold=threshold)


def zero_shot_evaluate(
    log_posteriors: Any,
    true_classes: Any,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy of arg-max class predictions.

    Args:
        log_posteriors: (N, C) class scores (any monotone scores; DAP/IAP log-posteriors).
        true_classes: (N,) ints in 0..C−1, the row of the true class among the C candidates.
        class_names: C names (default ``"0"``..).

    Returns a dict: ``mean_class_accuracy`` (mean over classes with images of the per-class
    recall; a fraction), ``per_class_accuracy`` {name: fraction or None when the class has no
    image}, ``confusion_matrix`` (C, C) counts as nested lists (rows true, columns predicted),
    ``class_names``, ``chance`` = 1 / (number of classes with images), ``accuracy`` (over images),
    ``num_images``, ``predictions`` (N,) predicted rows.
    """
    s = _as_2d(log_posteriors, "log_posteriors")
    y = np.asarray(true_classes).reshape(-1)
    n, c = s.shape
    if y.shape[0] != n:
        raise ValueError(f"true_classes has {y.shape[0]} entries for {n} rows of log_posteriors")
    if n == 0:
        raise ValueError("no images to evaluate; the split is empty")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= c:
        raise ValueError(f"true_classes must be ints in 0..{c - 1} (rows of the candidates)")
    names = [str(i) for i in range(c)] if class_names is None else [str(x) for x in class_names]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} candidate classes")
    pred = s.argmax(axis=1)
    conf = np.zeros((c, c), dtype=np.int64)
    np.add.at(conf, (y, pred), 1)
    counts = conf.sum(axis=1)
    per_class = {names[k]: (float(conf[k, k] / counts[k]) if counts[k] else None) for k in range(c)}
    present = counts > 0
    recall = np.diag(conf)[present] / counts[present]
    return {
        "mean_class_accuracy": float(recall.mean()),
        "per_class_accuracy": per_class,
        "confusion_matrix": conf.tolist(),
        "class_names": names,
        "chance": float(1.0 / present.sum()),
        "accuracy": float((pred == y).mean()),
        "num_images": int(n),
        "predictions": pred.tolist(),
    }


# ----------------------------------------------------------------------------- checkpoints
def _unique_in_order(ids: np.ndarray) -> list[int]:
    return [int(c) for c in dict.fromkeys(int(i) for i in ids) if c >= 0]


def zeroshot_from_checkpoint(
    checkpoint: str | Path,
    *,
    root: str | None = None,
    split: str | None = None,
    json_path: str | Path | None = None,
    method: str = "dap",
    iap_posteriors: str = "dap",
    probabilities: str = "calibrated",
    prior_eps: float = 0.05,
    threshold: float = 0.5,
    batch_size: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Zero-shot class prediction with a predictor checkpoint on a split of its dataset.

    The predictor's calibrated attribute probabilities on ``split`` go through DAP (or IAP) over
    the classes present in that split; the attribute prior comes from the classes of the
    dataset's ``train`` split. Default split: ``"unseen"`` when the dataset has one (synthetic),
    else ``"test"`` (AwA/AwA2: the images of testclasses.txt; CUB's official test split holds the
    same 200 classes as training, so there the result is attribute-based classification of seen
    classes, flagged ``"zero_shot": False``).

    ``probabilities``: the attribute probabilities p(a_m = 1 | x) fed to DAP/IAP:
    ``"calibrated"`` (default): the predictor's Platt calibration, σ(α_m f_m + β_m), fitted on
    the *seen*-class validation split and divided by that split's prior ρ_m (module docstring;
    ρ_m from the checkpoint's ``calibration_prior`` when it has one, else recomputed from the
    labels of the run's validation split); ``"sigmoid"``: σ(f_m) of the raw score (for the
    squared hinge, f = ±1 at the margin), uncalibrated, divided by π_m.

    Returns :func:`zero_shot_evaluate`'s dict plus ``method``, ``probabilities``, ``dataset``,
    ``split``, ``checkpoint``, ``zero_shot`` (candidate classes disjoint from the training
    classes), ``train_classes``, ``class_priors`` (π, the training classes' attribute
    frequencies) and ``priors`` (what DAP divides the predictor's probabilities by: ρ where
    calibrated, else π); written to ``json_path`` as JSON when given.
    """
    import torch

    from .config import TrainConfig, config_from_dict
    from .data import create_dataset
    from .data.schema import AttributeSchema
    from .data.splits import available_splits
    from .devices import resolve_device
    from .features import extract_features
    from .predictor import checkpoint_spec, load_predictor

    if method not in ("dap", "iap"):
        raise ValueError(f"method must be 'dap' or 'iap', got {method!r}")
    if iap_posteriors not in ("dap", "logistic"):
        raise ValueError(f"iap_posteriors must be 'dap' or 'logistic', got {iap_posteriors!r}")
    if probabilities not in ("calibrated", "sigmoid"):
        raise ValueError(f"probabilities must be 'calibrated' or 'sigmoid', got {probabilities!r}")
    predictor, meta = load_predictor(checkpoint)
    schema = AttributeSchema.from_dict(meta["schema"])
    if schema.class_attributes is None:
        raise ValueError(
            f"{checkpoint}: the checkpoint's schema has no class-attribute matrix; zero-shot needs "
            "a model trained on a class-level dataset (synthetic, awa2, awa, cub)"
        )
    cfg = config_from_dict(TrainConfig, meta["config"])
    if root is not None:
        cfg.data.root = root
    d = cfg.data
    splits = available_splits(d.name, d.root)
    if split is None:
        split = "unseen" if "unseen" in splits else "test"
    if split not in splits:
        raise ValueError(
            f"unknown split {split!r} for dataset {d.name}; valid: {', '.join(splits)}"
        )
    # the checkpoint's own evaluation transform (portrait input and crop included), the one
    # evaluate and predict use
    transform = checkpoint_spec(meta, checkpoint).eval_transform()
    kwargs: dict[str, Any] = dict(root=d.root, transform=transform, **(d.options or {}))
    if d.skip_bad_images:
        kwargs["skip_bad_images"] = True
    dataset = create_dataset(d.name, split=split, **kwargs)
    if "train" not in splits:
        raise ValueError(f"dataset {d.name} has no 'train' split to take the attribute prior from")
    train_ds = dataset if split == "train" else create_dataset(d.name, split="train", **kwargs)
    candidates = _unique_in_order(np.sort(dataset.class_ids))
    train_classes = _unique_in_order(np.sort(train_ds.class_ids))
    if not candidates or not train_classes:
        raise ValueError(f"dataset {d.name} has no class ids; zero-shot needs class labels")
    A = schema.class_attributes
    names = list(schema.class_names or [str(i) for i in range(A.shape[0])])
    class_priors = attribute_priors(A[train_classes], eps=prior_eps, threshold=threshold)

    dev = resolve_device(device or cfg.train.device)
    predictor.to(dev)
    scores = extract_features(
        predictor,
        dataset,
        batch_size=batch_size or cfg.train.batch_size,
        num_workers=d.num_workers,
        device=dev,
        amp=False,
        # plain lines every 10 s when not on a terminal: at about 40 images/s on 2 cores
        # (bench_awa2_case.py) the unseen classes of real AwA2 take minutes, silent without
        progress=True,
        desc="zero-shot",
    )
    if probabilities == "calibrated":
        with torch.inference_mode():
            probs = predictor.probabilities(scores.to(dev)).float().cpu().numpy()
        rho = _checkpoint_calibration_prior(meta, cfg, transform, predictor.calibration)
        priors = probability_priors(class_priors, rho)
    else:
        probs = torch.sigmoid(scores).numpy()
        priors = probability_priors(class_priors)

    cand_attr = A[candidates]
    if method == "dap":
        log_post = dap_scores(probs, cand_attr, priors, threshold=threshold)
    else:
        seen_post = None
        if iap_posteriors == "logistic":
            seen_post = _logistic_seen_posteriors(
                predictor,
                train_ds,
                scores.numpy(),
                train_classes,
                dev,
                batch_size or cfg.train.batch_size,
                d.num_workers,
            )
        log_post = iap_scores(
            probs,
            cand_attr,
            A[train_classes],
            class_priors,
            seen_posteriors=seen_post,
            input_priors=priors,
            threshold=threshold,
        )
    where = {c: k for k, c in enumerate(candidates)}
    true = np.asarray([where[int(c)] for c in dataset.class_ids], dtype=np.int64)
    result = zero_shot_evaluate(log_post, true, [names[c] for c in candidates])
    result.update(
        method=method if method == "dap" else f"iap ({iap_posteriors} seen-class posteriors)",
        probabilities=probabilities,
        dataset=d.name,
        split=split,
        checkpoint=str(checkpoint),
        zero_shot=not set(candidates) & set(train_classes),
        train_classes=[names[c] for c in train_classes],
        class_priors=class_priors.tolist(),
        priors=priors.tolist(),
    )
    if not result["zero_shot"]:
        log.warning(
            "split %r shares classes with the training split: this is attribute-based "
            "classification, not zero-shot transfer",
            split,
        )
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2))
    return result


def _checkpoint_calibration_prior(meta, cfg, transform, calibration) -> np.ndarray:
    """(M,) ρ_m under which the checkpoint's Platt calibration was fitted (NaN: none fitted).

    Read from the checkpoint's ``calibration_prior`` when stored, else recomputed from the labels
    of the run's validation split (the split the engine calibrates on; no image is loaded).
    Attributes whose calibration is the identity (a = 1, c = 0: not fitted) get NaN.
    """
    from .calibration import calibration_prior

    stored = meta.get("calibration_prior")
    if stored is not None:
        rho = np.asarray([np.nan if v is None else v for v in stored], dtype=np.float64)
    else:
        from .data.splits import build_datasets

        source, idx = build_datasets(cfg, transform)["val"]
        rho = calibration_prior(np.asarray(source.targets)[idx], np.asarray(source.mask)[idx])
    params = calibration.detach().cpu().double().numpy()
    if rho.shape[0] != params.shape[1]:
        raise ValueError(
            f"calibration prior has {rho.shape[0]} attributes, the predictor {params.shape[1]}"
        )
    rho[(params[0] == 1.0) & (params[1] == 0.0)] = np.nan
    return rho


def _logistic_seen_posteriors(
    predictor, train_ds, eval_scores, train_classes, device, batch_size, num_workers
) -> np.ndarray:
    """(N, K) p(y_k | x) from a multinomial logistic regression on the M attribute scores,
    fitted on the training split (an attribute→class layer over the K seen classes)."""
    from sklearn.linear_model import LogisticRegression

    from .features import extract_features

    train_scores = extract_features(
        predictor, train_ds, batch_size=batch_size, num_workers=num_workers, device=device
    ).numpy()
    where = {c: k for k, c in enumerate(train_classes)}
    y = np.asarray([where[int(c)] for c in train_ds.class_ids])
    clf = LogisticRegression(max_iter=1000, C=1.0).fit(train_scores, y)
    post = np.zeros((eval_scores.shape[0], len(train_classes)))
    post[:, clf.classes_] = clf.predict_proba(eval_scores)
    return post


def format_zeroshot(result: dict[str, Any]) -> str:
    """A short text summary: mean per-class accuracy vs chance and per-class accuracies."""
    lines = [
        f"zero-shot {result.get('method', '')} ({result.get('probabilities', '')} attribute "
        f"probabilities) on {result.get('dataset', '?')}:"
        f"{result.get('split', '?')} ({result['num_images']} images, "
        f"{len(result['class_names'])} classes)",
        f"mean per-class accuracy {100 * result['mean_class_accuracy']:.2f}%  "
        f"(chance {100 * result['chance']:.2f}%)",
    ]
    width = max(len(n) for n in result["class_names"])
    for name, acc in result["per_class_accuracy"].items():
        lines.append(f"  {name:<{width}}  {'-' if acc is None else f'{100 * acc:.1f}%'}")
    return "\n".join(lines)
