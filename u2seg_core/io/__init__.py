"""Image input: sources -> plan (shards) -> robust decoding -> batched loading."""

from .decode import ImageDecodeError, load_image, load_rgb
from .loader import ImageBatch, iter_batches
from .plan import make_shards, plan_shards
from .sources import IMAGE_EXTENSIONS, list_images, list_source

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageBatch",
    "ImageDecodeError",
    "iter_batches",
    "list_images",
    "list_source",
    "load_image",
    "load_rgb",
    "make_shards",
    "plan_shards",
]
