"""MaskCut (CutLER): class-agnostic instance pseudo-masks from DINO attention keys, batched and fast.

    affinity.py      the patch graph (binary cosine affinity, eps elsewhere, per-round zeroing)
    solvers.py       the NCut eigensolve: `dense` (scipy reference) and `fast` (batched block Krylov)
    bipartition.py   eigenvector -> foreground side and seed -> the seed's component
    components.py    batched 4-connected region growing and hole filling
    maskcut.py       the N-round procedure (`maskcut_batch`) and the literal per-image reference
    permutohedral.py the permutohedral-lattice Gaussian filter in torch
    crf.py           dense CRF: pydensecrf reference and the batched torch mean-field
    postprocess.py   CRF + hole filling + drop rule + resize to the original size
    embed.py         one embedding per mask (CLS of the instance crop, or pooled tokens)
    stage.py         `maskcut_shard`: the pipeline step
"""

from .affinity import PatchGraph, cosine_edges
from .maskcut import MaskCutResult, maskcut_batch, maskcut_reference
from .solvers import Fiedler, solve

__all__ = [
    "Fiedler",
    "MaskCutResult",
    "PatchGraph",
    "cosine_edges",
    "maskcut_batch",
    "maskcut_reference",
    "solve",
]
