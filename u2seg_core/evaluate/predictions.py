"""One reader for prediction sets in the merge layout (docs/architecture.md, CONTRACTS C2).

A prediction set is a stage folder of a run (`merge`, `predict`) or an outside folder in the same layout
(`u2seg predict --output DIR`):

    <set>/shards/<shard>.json   {"images": [...], "panoptic": [...], "instances": [...]}, one per shard
    <set>/panoptic/<file_name>  PNGs; `file_name` of a panoptic annotation is relative to <set>/panoptic/
                                (`shard-NNNNN/<id>.png` nested, or `<id>.png` flat: both are read)

Shards are read one at a time, never the dataset-level JSON. A model's set (predict's shards carry `model`)
is scored semantically on its semantic-head PNGs `<set>/semantic/<file_name>` (as U2Seg scores its model). Categories: `<set>/categories.json` if
present, else the `model: {num_things, num_stuff}` a predict shard carries (things 1..K, stuff K+1..K+S),
else the run's config (cluster.k, stego.n_classes) for a run stage, else the `categories` of
`<set>/panoptic.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import storage
from ..config import PipelineConfig
from ..rundir import RunDir


@dataclass(frozen=True)
class PredictionSet:
    """A named prediction set: where it lives and its categories (COCO panoptic, with isthing)."""

    name: str
    root: str
    categories: tuple[dict[str, Any], ...]
    semantic_head: bool = False  # a model's shard (it names its `model`): semantic view from <set>/semantic/

    @property
    def thing_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.categories if c.get("isthing")]

    @property
    def stuff_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.categories if not c.get("isthing")]

    def shard_names(self) -> list[str]:
        return [name[:-5] for name in storage.listdir(storage.join(self.root, "shards")) if name.endswith(".json")]

    def read_shard(self, shard: str) -> dict[str, Any] | None:
        """The shard's C2 JSON, or None when this set has no such shard (e.g. it failed or is not run)."""
        url = storage.join(self.root, "shards", f"{shard}.json")
        return storage.read_json(url) if storage.exists(url) else None

    def png_url(self, annotation: dict[str, Any]) -> str:
        return storage.join(self.root, "panoptic", annotation["file_name"])


def is_run_dir(path: str) -> bool:
    return storage.exists(storage.join(path, "plan", "manifest.json"))


def open_prediction_set(name: str, where: str, run: RunDir | None, cfg: PipelineConfig | None) -> PredictionSet:
    """`where` is a stage of `run` (e.g. "merge") or a folder in the merge layout."""
    stage_of_run = run is not None and "/" not in where and not storage.exists(storage.join(where, "shards"))
    root = run.url(where) if stage_of_run and run is not None else where
    if not storage.exists(storage.join(root, "shards")):
        hint = f"run the '{where}' stage first" if stage_of_run else "expected <dir>/shards/*.json and <dir>/panoptic/"
        raise FileNotFoundError(f"prediction set '{name}': {storage.join(root, 'shards')} does not exist; {hint}")
    categories_url = storage.join(root, "categories.json")
    from ..merge.stage import categories as pseudo_label_categories

    model = _model_of(root) if where != "merge" else None  # predict's shards name the model's K and S
    if storage.exists(categories_url):
        categories = storage.read_json(categories_url)
    elif model:
        categories = pseudo_label_categories(int(model["num_things"]), int(model["num_stuff"]))
    elif stage_of_run and cfg is not None:
        categories = pseudo_label_categories(cfg.cluster.k, cfg.stego.n_classes)
    elif storage.exists(storage.join(root, "panoptic.json")):
        categories = storage.read_json(storage.join(root, "panoptic.json"))["categories"]
    else:
        raise FileNotFoundError(f"prediction set '{name}' ({root}) has neither categories.json nor panoptic.json")
    return PredictionSet(name, root, tuple(categories))


def _model_of(root: str) -> dict[str, Any] | None:
    shards = [n for n in storage.listdir(storage.join(root, "shards")) if n.endswith(".json")]
    return storage.read_json(storage.join(root, "shards", shards[0])).get("model") if shards else None
