"""Head files: our `head.pt` (save / load) and the released STEGO Lightning checkpoints.

Released checkpoints (e.g. `cocostuff27_vit_base_5.ckpt`) hold a `state_dict` with the head under
`net.cluster1.0.*` and `net.cluster2.{0,2}.*`, the cluster probe `cluster_probe.clusters`, the
supervised `linear_probe.*`, an unused `decoder.*` and the frozen DINO backbone `net.model.*`, plus
Lightning bookkeeping and `hyper_parameters` (an omegaconf config). They are read with
`torch.load(weights_only=True)`: every class the pickle names outside torch's allowlist is replaced
by an inert `OpaqueObject` that only records its arguments and state, so no code from the file runs
and neither omegaconf nor Lightning is needed.
"""

from __future__ import annotations

import io
import logging
import pickle
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import storage
from .head import StegoHead
from .probe import ClusterProbe, LinearProbe

log = logging.getLogger(__name__)

HEAD_FORMAT = "u2seg-stego-head/1"
RELEASED_HEAD_PREFIXES = {"net.cluster1.": "linear.", "net.cluster2.": "nonlinear."}


@dataclass
class SemanticHead:
    """A trained or released STEGO head with its probes (modules in eval mode on the CPU).

    meta: in_dim, dim, n_classes, dropout, source ('trained' or the checkpoint path); for released
    checkpoints also backbone_dim / backbone_patch (from `net.model.*`) and hparams.
    """

    head: StegoHead
    cluster_probe: ClusterProbe
    linear_probe: LinearProbe | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device) -> "SemanticHead":
        for module in (self.head, self.cluster_probe, self.linear_probe):
            if module is not None:
                module.to(device).eval()
        return self


def save_head(url: str, head: StegoHead, cluster_probe: ClusterProbe, meta: dict[str, Any],
              linear_probe: LinearProbe | None = None) -> None:
    """Atomically write `head.pt` (state dicts + plain metadata; readable with weights_only=True)."""
    def cpu_state(module: torch.nn.Module) -> dict[str, Tensor]:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    payload = {
        "format": HEAD_FORMAT,
        "head": cpu_state(head),
        "cluster_probe": cpu_state(cluster_probe),
        "linear_probe": None if linear_probe is None else cpu_state(linear_probe),
        "meta": {"in_dim": head.in_dim, "dim": head.dim, "n_classes": cluster_probe.clusters.shape[0],
                 "dropout": head.dropout.p, **meta},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    storage.atomic_write_bytes(url, buffer.getvalue())


def load_head(url: str) -> SemanticHead:
    """Read a `head.pt` written by `save_head`."""
    payload = torch.load(io.BytesIO(storage.read_bytes(url)), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != HEAD_FORMAT:
        raise ValueError(f"{url} is not a u2seg STEGO head file (expected format {HEAD_FORMAT})")
    meta = payload["meta"]
    head = StegoHead(meta["in_dim"], meta["dim"], meta["dropout"])
    head.load_state_dict(payload["head"])
    probe = ClusterProbe(meta["dim"], meta["n_classes"])
    probe.load_state_dict(payload["cluster_probe"])
    linear = None
    if payload["linear_probe"] is not None:
        weight = payload["linear_probe"]["conv.weight"]
        linear = LinearProbe(weight.shape[1], weight.shape[0])
        linear.load_state_dict(payload["linear_probe"])
    return SemanticHead(head, probe, linear, dict(meta)).to(torch.device("cpu"))


class OpaqueObject:
    """Inert stand-in for a class a checkpoint names but that is never imported (records args and state)."""

    qualified_name: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "OpaqueObject":
        obj = super().__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


def read_checkpoint(url: str) -> dict[str, Any]:
    """`torch.load(weights_only=True)` of a checkpoint whose pickle may name foreign classes (see module doc)."""
    data = storage.read_bytes(url)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    stand_ins = [
        (type(name.rsplit(".", 1)[-1], (OpaqueObject,), {"qualified_name": name}), name) for name in names
    ]
    log.info("%s: reading %d foreign classes as inert stand-ins: %s", url, len(names), ", ".join(names))
    with torch.serialization.safe_globals(stand_ins):
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def plain(obj: Any, depth: int = 0) -> Any:
    """JSON-ready view of checkpoint metadata (omegaconf containers become dicts and lists)."""
    if depth > 32:
        return "..."
    if isinstance(obj, OpaqueObject):
        state = obj.state[0] if isinstance(obj.state, tuple) and len(obj.state) == 2 else obj.state
        if isinstance(state, dict) and "_content" in state:  # omegaconf DictConfig / ListConfig
            return plain(state["_content"], depth + 1)
        if isinstance(state, dict) and "_val" in state:  # omegaconf value node
            return plain(state["_val"], depth + 1)
        return f"<{obj.qualified_name}>"
    if isinstance(obj, type):
        return f"<{getattr(obj, 'qualified_name', obj.__qualname__)}>"
    if isinstance(obj, dict):
        return {str(k): plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, depth + 1) for v in obj]
    if isinstance(obj, Tensor):
        return obj.tolist() if obj.numel() <= 16 else f"<tensor {tuple(obj.shape)}>"
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def load_released(url: str) -> SemanticHead:
    """Map a released STEGO checkpoint onto our head and probes (dim and n_classes from the shapes)."""
    checkpoint = read_checkpoint(url)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or "net.cluster1.0.weight" not in state or "cluster_probe.clusters" not in state:
        raise ValueError(
            f"{url} is not a released STEGO checkpoint: expected a Lightning `state_dict` with "
            "`net.cluster1.0.weight` and `cluster_probe.clusters`"
        )
    head_state = {
        new + key[len(old):]: value
        for key, value in state.items()
        for old, new in RELEASED_HEAD_PREFIXES.items()
        if key.startswith(old)
    }
    dim, in_dim = state["net.cluster1.0.weight"].shape[:2]
    head = StegoHead(in_dim, dim)
    head.load_state_dict(head_state)
    clusters = state["cluster_probe.clusters"]
    probe = ClusterProbe(clusters.shape[1], clusters.shape[0])
    probe.load_state_dict({"clusters": clusters})
    linear = None
    if "linear_probe.weight" in state:
        weight = state["linear_probe.weight"]
        linear = LinearProbe(weight.shape[1], weight.shape[0])
        linear.load_state_dict({"conv.weight": weight, "conv.bias": state["linear_probe.bias"]})
    meta: dict[str, Any] = {"source": url, "hparams": plain(checkpoint.get("hyper_parameters", {}))}
    patch_weight = state.get("net.model.patch_embed.proj.weight")
    if patch_weight is not None:
        meta["backbone_dim"] = int(patch_weight.shape[0])
        meta["backbone_patch"] = int(patch_weight.shape[-1])
    meta.update(in_dim=int(in_dim), dim=int(dim), n_classes=int(clusters.shape[0]), dropout=head.dropout.p)
    return SemanticHead(head, probe, linear, meta).to(torch.device("cpu"))
