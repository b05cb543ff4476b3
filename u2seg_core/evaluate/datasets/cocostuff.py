"""COCO-Stuff ground truth in STEGO's 27 coarse classes (semantic labels only, no panoptic segments).

Official COCO-Stuff layout (github.com/nightrome/cocostuff, stuffthingmaps_trainval2017.zip):

    ROOT/stuffthingmaps_trainval2017/<split>/*.png   uint8 fine label 0..181 (COCO id - 1), 255 unlabeled
    ROOT/<split>/*.jpg                               images

STEGO's copy (its `cocostuff` folder: images/<split>/*.jpg, annotations/<split>/*.png) is read too, and its
curated image list `curated/<split>/Coco164kFull_Stuff_Coarse_7.txt` restricts the images when present
(the list STEGO evaluates val on). Fine labels map to coarse ones through tables/cocostuff27.json.
"""

from __future__ import annotations

import numpy as np

from ... import storage
from .base import IGNORE, GroundTruth, GtImage, GtSample, load_table, table_categories

CURATED_LIST = "Coco164kFull_Stuff_Coarse_7.txt"


class CocoStuff27GroundTruth(GroundTruth):
    format = "cocostuff27"
    has_panoptic = False

    def __init__(self, root: str, split: str | None = None):
        self.root, split = root, split or "val2017"
        table = load_table("cocostuff27")
        self.table_source = table["source"]
        self.categories = table_categories(table)
        self.fine_to_coarse = np.full(256, IGNORE, dtype=np.int64)
        for fine, coarse in table["fine_to_coarse"].items():
            self.fine_to_coarse[int(fine)] = coarse
        layouts = (
            (storage.join(root, "stuffthingmaps_trainval2017", split), storage.join(root, split)),
            (storage.join(root, "annotations", split), storage.join(root, "images", split)),
        )
        label_dir, image_dir = next(((lab, img) for lab, img in layouts if storage.exists(lab)), (None, None))
        if label_dir is None:
            raise FileNotFoundError(
                f"cocostuff27 ground truth {root}: neither {layouts[0][0]} (official COCO-Stuff) nor "
                f"{layouts[1][0]} (STEGO's copy) exists"
            )
        curated = storage.join(root, "curated", split, CURATED_LIST)
        if storage.exists(curated):
            stems = [line.strip() for line in storage.read_bytes(curated).decode().splitlines() if line.strip()]
        else:
            stems = [name[:-4] for name in storage.listdir(label_dir) if name.endswith(".png")]
        images = [
            GtImage(
                image_id=int(stem) if stem.isdigit() else i + 1, file_name=f"{stem}.jpg", height=0, width=0,
                image_url=storage.join(image_dir, f"{stem}.jpg"), label_url=storage.join(label_dir, f"{stem}.png"),
            )
            for i, stem in enumerate(stems)
        ]
        super().__init__(images)

    def read(self, image: GtImage) -> GtSample:
        fine = storage.read_png(image.label_url)
        if fine.ndim != 2:
            raise ValueError(f"{image.label_url} is not a single-channel label PNG (shape {fine.shape})")
        return GtSample(None, [], self.fine_to_coarse[fine.astype(np.int64)])
