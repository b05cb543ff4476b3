"""STEGO stage steps: maps at original size, released heads, and quality against K-means on raw features.

Quality protocol (stuff only): ground-truth semantic PNGs hold 0 = any thing, 1..S = stuff class,
255 = void. Thing and void pixels are ignored; the S stuff classes are matched one-to-one (Hungarian) to
the n_classes predicted clusters over the whole set, then mIoU over the S classes. The baseline is
K-means (same number of clusters, 10 inits) on the raw stored tokens, each pixel assigned from the
bilinearly upsampled tokens (as the STEGO codes are upsampled).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from u2seg_core import storage
from u2seg_core.backbone import PixelFeaturizer
from u2seg_core.config import PipelineConfig, SourceConfig, SynthConfig
from u2seg_core.evaluate.semantic import confusion_matrix, hungarian_mapping, semantic_scores
from u2seg_core.features.stage import training_sample
from u2seg_core.io.loader import iter_batches
from u2seg_core.manifest import ImageRecord, ShardManifest
from u2seg_core.local_runner import run_pipeline_local
from u2seg_core.rundir import RunDir
from u2seg_core.stego.checkpoint import load_head, save_head
from u2seg_core.stego.head import StegoHead
from u2seg_core.stego.infer import SemanticSegmenter
from u2seg_core.stego.probe import ClusterProbe
from u2seg_core.stego.stage import map_url, stego_shard, train_head
from u2seg_core.stego.tokens import StoredRows
from u2seg_core.store import FeatureStore


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def small_cfg(**stego):
    demo = PipelineConfig.demo()
    return demo.model_copy(
        update={"stego": demo.stego.model_copy(update={"inference_resolution": 32, "n_classes": 4, **stego})}
    )


def odd_shard(tmp_path):
    """Two images of sizes other than the inference resolution, and one broken file."""
    rng = np.random.default_rng(0)
    records = []
    for image_id, (h, w) in enumerate([(37, 53), (64, 48)], start=1):
        path = tmp_path / f"{image_id}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(image_id=image_id, file_name=path.name, url=str(path)))
    broken = tmp_path / "3.png"
    broken.write_bytes(b"not a png")
    records.append(ImageRecord(image_id=3, file_name=broken.name, url=str(broken)))
    return ShardManifest(shard_index=0, source=str(tmp_path), images=records)


def test_stego_shard_writes_maps_at_original_size(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    cfg = small_cfg()
    with pytest.raises(FileNotFoundError, match="train_head"):
        stego_shard(run, odd_shard(tmp_path), cfg)
    torch.manual_seed(0)
    dim = PixelFeaturizer().embed_dim
    save_head(run.url("stego", "head.pt"), StegoHead(dim, 5), ClusterProbe(5, 4), {"source": "test"})
    result = stego_shard(run, odd_shard(tmp_path), cfg)
    assert result.n_images == 3 and result.n_failed == 1
    assert result.failures[0].image_id == 3 and result.failures[0].stage == "stego"
    assert result.outputs == {"maps": "stego/maps/shard-00000"} and result.counts["images_per_s"] > 0
    for image_id, shape in ((1, (37, 53)), (2, (64, 48))):
        semantic = storage.read_png(map_url(run, "shard-00000", image_id))
        assert semantic.shape == shape and semantic.dtype == np.uint8 and semantic.max() < 4
    assert map_url(run, "shard-00000", 1) == run.url("stego", "maps", "shard-00000", "1.png")
    assert not storage.exists(map_url(run, "shard-00000", 3))
    with pytest.raises(ValueError, match="multiple of the patch"):
        stego_shard(run, odd_shard(tmp_path), small_cfg(inference_resolution=36))


def test_train_head_converts_a_released_checkpoint(tmp_path, make_released_stego_ckpt):
    run = RunDir(str(tmp_path / "run"))
    ckpt = tmp_path / "released.ckpt"
    state = make_released_stego_ckpt(ckpt, dim=5, backbone_dim=PixelFeaturizer().embed_dim, n_classes=4)
    cfg = small_cfg(pretrained=str(ckpt), probe="linear")
    result = train_head(run, cfg)
    assert result.outputs == {"head": "stego/head.pt"}
    assert result.summary == {"source": str(ckpt), "in_dim": PixelFeaturizer().embed_dim, "dim": 5, "n_classes": 4}
    model = load_head(run.url("stego", "head.pt"))
    assert torch.equal(model.head.nonlinear[2].weight, state["net.cluster2.2.weight"])
    shard = stego_shard(run, odd_shard(tmp_path), cfg)
    assert shard.n_failed == 1 and storage.read_png(map_url(run, "shard-00000", 2)).shape == (64, 48)

    with pytest.raises(ValueError, match="set stego.n_classes=4"):
        train_head(run, small_cfg(pretrained=str(ckpt), n_classes=5))
    make_released_stego_ckpt(tmp_path / "patch16.ckpt", patch=16, n_classes=4)
    with pytest.raises(ValueError, match="patch-16"):
        train_head(run, small_cfg(pretrained=str(tmp_path / "patch16.ckpt")))


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """24 synthetic 224-px images in 2 shards with stored `pixel` features (demo config otherwise)."""
    demo = PipelineConfig.demo()
    cfg = demo.model_copy(
        update={"source": SourceConfig(shard_size=12, synthetic=SynthConfig(n=24, size=224, seed=0))}
    )
    run_dir = str(tmp_path_factory.mktemp("stego_quality"))
    run_pipeline_local(cfg, run_dir, stages=["plan", "features"])
    return RunDir(run_dir), cfg


def stuff_ground_truth(run: RunDir, image_id: int, n_stuff: int) -> np.ndarray:
    semantic = storage.read_png(run.url("synthetic", "semantic", f"{image_id:06d}.png")).astype(np.int64)
    return np.where((semantic >= 1) & (semantic <= n_stuff), semantic - 1, 255)


def stuff_miou(labels: dict[int, np.ndarray], run: RunDir, n_clusters: int, n_stuff: int) -> float:
    confusion = sum(
        confusion_matrix(pred, stuff_ground_truth(run, image_id, n_stuff), n_clusters, n_stuff)
        for image_id, pred in labels.items()
    )
    return semantic_scores(confusion, hungarian_mapping(confusion))["miou"]


def sample_ids(sample, shard: str) -> list[int]:
    return [int(i) for part in sample if part.shard == shard for i in part.image_ids]


def kmeans_labels(tokens: np.ndarray, image_ids: np.ndarray, k: int, size: int) -> dict[int, np.ndarray]:
    from sklearn.cluster import KMeans

    flat = tokens.astype(np.float32).transpose(0, 2, 3, 1).reshape(-1, tokens.shape[1])
    centroids = torch.from_numpy(KMeans(k, n_init=10, random_state=0).fit(flat).cluster_centers_).float()
    labels = {}
    for image_tokens, image_id in zip(tokens, image_ids):
        up = F.interpolate(torch.from_numpy(image_tokens.astype(np.float32))[None], size=(size, size), mode="bilinear")
        pixels = up[0].reshape(up.shape[1], -1).T
        labels[int(image_id)] = torch.cdist(pixels, centroids).argmin(1).reshape(size, size).numpy()
    return labels


def test_head_and_cluster_probe_beat_kmeans_on_raw_features(synthetic_run):
    run, cfg = synthetic_run
    from u2seg_core.synth import STUFF_CLASSES

    n_stuff, k, size = len(STUFF_CLASSES), cfg.stego.n_classes, cfg.source.synthetic.size
    trained = train_head(run, cfg)
    assert trained.outputs == {"head": "stego/head.pt", "loss": "stego/loss.json", "loss_plot": "stego/loss.png"}
    assert trained.summary["n_images"] == 24 and trained.summary["n_items"] == 120
    results = [stego_shard(run, shard, cfg) for shard in run.shards()]
    assert sum(r.n_failed for r in results) == 0
    shards = [shard.name for shard in run.shards()]
    sample = training_sample(run, shards, cfg)
    assert [part.shard for part in sample] == shards  # the sample is every image here
    stored = StoredRows(FeatureStore(run.store), sample)
    tokens, image_ids = stored.load().tokens.numpy(), stored.image_ids
    maps = {i: storage.read_png(map_url(run, shard, i)) for shard in shards for i in sample_ids(sample, shard)}
    stego = stuff_miou(maps, run, k, n_stuff)

    segmenter = SemanticSegmenter(PixelFeaturizer(), load_head(run.url("stego", "head.pt")))
    no_crf = {}
    for shard in run.shards():
        for batch in iter_batches(shard, size, 12, stage="stego", resample="bilinear"):
            no_crf.update(zip((r.image_id for r in batch.records), segmenter.predict(batch.pixels)))
    stego_no_crf = stuff_miou(no_crf, run, k, n_stuff)
    kmeans = stuff_miou(kmeans_labels(tokens, image_ids, k, size), run, k, n_stuff)
    print(f"\nstuff mIoU: STEGO head + cluster probe + CRF {stego:.1f}, without CRF {stego_no_crf:.1f}, "
          f"K-means on raw pixel features {kmeans:.1f}")
    assert stego > kmeans + 3.0
