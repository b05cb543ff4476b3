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
    mapping = confusion.argmax(axis=1).astype(np.int64)
    mapping[confusion.sum(axis=1) == 0] = -1
    return mapping


def semantic_scores(confusion: np.ndarray, mapping: np.ndarray) -> dict[str, Any]:
    """mIoU, pixel accuracy (both x100) and per-class IoU after mapping clusters to classes.

    IoU_c = tp / (gt_c + pred_c - tp) where pred_c counts the pixels of every cluster mapped to c.
    Pixels of unmatched clusters (mapping -1) are errors. A class absent from both ground truth and
    (mapped) predictions has IoU None and is left out of the mean.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    mapping = np.asarray(mapping, dtype=np.int64)
    n_pred, n_gt = confusion.shape
    if mapping.shape != (n_pred,):
        raise ValueError(f"mapping must have shape ({n_pred},), got {mapping.shape}")
    matched = mapping >= 0
    # mapped[c_pred, c_gt]: pixels predicted as class c_pred (after mapping) with ground truth c_gt
    mapped = np.zeros((n_gt, n_gt), dtype=np.int64)
    np.add.at(mapped, mapping[matched], confusion[matched])
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
