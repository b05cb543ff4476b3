"""STEGO: stuff (semantic) maps from a head trained on frozen backbone features, without labels.

    head.py        the segmentation head (1x1 linear + 1x1 conv-ReLU-conv branches, channel dropout)
    probe.py       the cluster probe (cosine centroids) and the released checkpoints' linear probe
    loss.py        the contrastive correspondence loss (self / KNN / random terms)
    knn.py         the KNN table of training items from pooled features (faiss, exact cosine)
    crops.py       five-crop training items cut from the stored token grids
    train.py       `train_stego`: training with checkpoints and exact resume, loss curves
    checkpoint.py  our head.pt, and released STEGO Lightning checkpoints (read with weights_only=True)
    crf.py         the multi-class dense CRF: pydensecrf reference and batched torch mean-field
    infer.py       `SemanticSegmenter`: flip-averaged codes -> probe -> CRF -> class maps
    stage.py       `train_head` (global step) and `stego_shard`: the pipeline steps
"""

from .checkpoint import SemanticHead, load_head, load_released, save_head
from .head import StegoHead
from .infer import SemanticSegmenter
from .loss import correspondence_loss
from .probe import ClusterProbe, LinearProbe
from .train import TrainResult, train_stego

__all__ = [
    "ClusterProbe",
    "LinearProbe",
    "SemanticHead",
    "SemanticSegmenter",
    "StegoHead",
    "TrainResult",
    "correspondence_loss",
    "load_head",
    "load_released",
    "save_head",
    "train_stego",
]
