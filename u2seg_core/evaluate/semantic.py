"""Unsupervised semantic-segmentation metrics: confusion matrix, cluster-to-class matching, mIoU.

Protocol of STEGO / PiCIE: accumulate one dataset-level confusion matrix `stats[pred, gt]`, match
predicted clusters to ground-truth classes (Hungarian one-to-one, or many-to-one majority), then
score IoU per class, mIoU and pixel accuracy (both x100).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, n_pred: int, n_gt: int, ignore: int = 255) -> np.ndarray:
    """(n_pred, n_gt) int64 pixel counts of (predicted cluster, ground-truth class).

    pred, gt: integer arrays of the same shape ((H, W) or (N,)). Pixels whose gt equals `ignore` or
    lies outside [0, n_gt), or whose prediction lies outside [0, n_pred), are not counted (as in
    STEGO). Matrices of several images add up.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    pred = pred.astype(np.int64).ravel()
    gt = gt.astype(np.int64).ravel()
    valid = (gt != ignore) & (gt >= 0) & (gt < n_gt) & (pred >= 0) & (pred < n_pred)
    counts = np.bincount(pred[valid] * n_gt + gt[valid], minlength=n_pred * n_gt)
    return counts.reshape(n_pred, n_gt)


def hungarian_mapping(confusion: np.ndarray) -> np.ndarray:
    """(n_pred,) ground-truth class of each predicted cluster (one-to-one, max total overlap); -1 = unmatched.

    Works for n_pred != n_gt: the surplus clusters (or classes) stay unmatched.
    """
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    mapping = np.full(confusion.shape[0], -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def majority_mapping(confusion: np.ndarray) -> np.ndarray:
    """(n_pred,) many-to-one mapping: each cluster -> its most frequent class; -1 for empty clusters."""
    if confusion.shape[1] == 0:
        return np.full(confusion.shape[0], -1, np.int64)
    mapping = confusion.argmax(axis=1).astype(np.int64)  # first on ties
    mapping[confusion.sum(axis=1) == 0] = -1
    return mapping


def _mapped_confusion(confusion: np.ndarray, mapping: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confusion as int64 (n_pred, n_gt), mapped (n_gt, n_gt)): mapped[c, g] = pixels of ground truth g predicted
    with a cluster mapped to class c; clusters mapped to -1 are left out of `mapped`."""
    confusion = np.asarray(confusion, dtype=np.int64)
    mapping = np.asarray(mapping, dtype=np.int64)
    n_pred, n_gt = confusion.shape
    if mapping.shape != (n_pred,):
        raise ValueError(f"mapping must have shape ({n_pred},), got {mapping.shape}")
    matched = mapping >= 0
    mapped = np.zeros((n_gt, n_gt), dtype=np.int64)
    np.add.at(mapped, mapping[matched], confusion[matched])
    return confusion, mapped


def semantic_scores(confusion: np.ndarray, mapping: np.ndarray) -> dict[str, Any]:
    """mIoU, pixel accuracy (both x100) and per-class IoU after mapping clusters to classes.

    IoU_c = tp / (gt_c + pred_c - tp) where pred_c counts the pixels of every cluster mapped to c.
    Pixels of unmatched clusters (mapping -1) are errors. A class absent from both ground truth and
    (mapped) predictions has IoU None and is left out of the mean.
    """
    confusion, mapped = _mapped_confusion(confusion, mapping)
    tp = np.diag(mapped).astype(np.float64)
    gt_total = confusion.sum(axis=0).astype(np.float64)
    pred_total = mapped.sum(axis=1).astype(np.float64)
    union = gt_total + pred_total - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = float(confusion.sum())
    present = ~np.isnan(iou)
    return {
        "miou": float(iou[present].mean() * 100) if present.any() else math.nan,
        "pixel_accuracy": float(tp.sum() / total * 100) if total > 0 else math.nan,
        "per_class_iou": [float(v * 100) if not np.isnan(v) else None for v in iou],
        "n_pixels": int(total),
    }


def u2seg_semantic_scores(confusion: np.ndarray, mapping: np.ndarray) -> dict[str, Any]:
    """U2Seg's SemSegEvaluator scores (x100) after mapping: mIoU, fwIoU, mACC, pACC, per-class IoU.

    confusion: (n_pred, n_gt) pixels of (predicted label, ground-truth label), ignore pixels left out;
    mapping: (n_pred,) ground-truth label of each predicted label, -1 = unmapped. As in U2Seg, pixels
    predicted with an unmapped label (its class 16) are left out of every metric, not counted as errors;
    `n_pixels_unmapped` says how many. Predictions applied all at once (U2Seg remaps label by label in
    place, which can chain two mappings; that is a bug we do not copy).
    """
    confusion, mapped = _mapped_confusion(confusion, mapping)
    matched = np.asarray(mapping) >= 0
    tp = np.diag(mapped).astype(np.float64)
    pos_gt = mapped.sum(axis=0).astype(np.float64)
    pos_pred = mapped.sum(axis=1).astype(np.float64)
    union = pos_gt + pos_pred - tp
    acc_valid = pos_gt > 0
    iou_valid = acc_valid & (union > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(acc_valid, tp / pos_gt, np.nan)
        iou = np.where(iou_valid, tp / union, np.nan)
    total = pos_gt.sum()
    return {
        "miou": float(np.nanmean(iou[iou_valid]) * 100) if iou_valid.any() else math.nan,
        "fwiou": float(np.sum(iou[iou_valid] * pos_gt[iou_valid] / total) * 100) if total > 0 else math.nan,
        "macc": float(np.nanmean(acc[acc_valid]) * 100) if acc_valid.any() else math.nan,
        "pixel_accuracy": float(tp.sum() / total * 100) if total > 0 else math.nan,
        "per_class_iou": [float(v * 100) if not np.isnan(v) else None for v in iou],
        "n_pixels": int(total),
        "n_pixels_unmapped": int(confusion[~matched].sum()),
    }
