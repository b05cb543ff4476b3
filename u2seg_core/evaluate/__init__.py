"""Evaluation of prediction sets (pseudo-labels, model predictions) against ground truth.

datasets/     ground-truth adapters (COCO 2017, COCO-Stuff-27, Cityscapes, synthetic) behind `GroundTruth`
predictions   the one reader of prediction sets in the merge layout
evidence      per-shard evidence from one read of every PNG (the fan-out)
pq, matching, semantic, ap    PQ tables, cluster-to-class mappings, semantic scores, COCO AP
reduce        the global reduce: mappings per protocol (u2seg, hungarian, stego27) and scores
report        report.json / report.md / confusion.png / overlays
stage         the evaluate stage's steps and `evaluate_predictions` outside a run
"""
