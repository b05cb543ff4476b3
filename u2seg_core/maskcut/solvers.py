"""The NCut eigensolve of MaskCut: the second-smallest generalised eigenvector of (D - A) y = lambda D y.

Two solvers behind one interface, `solve(graph, method) -> Fiedler`:

* `dense`: the reference, per image in float64 on the CPU, exactly CutLER's
  `scipy.linalg.eigh(D - A, D, subset_by_index=[1, 2])`, column 0.
* `fast`: all images of the batch at once on the graph's device. With u = D^1/2 y the problem is the
  second-largest eigenvector of M = D^-1/2 A D^-1/2, whose largest one, sqrt(d), is known exactly and
  projected out. A block Krylov method with full reorthogonalisation and Rayleigh-Ritz (M is only
  ever applied through `PatchGraph.matmul`: one batched matmul with the 0/1 edge matrix per block).
  An image is accepted once its Ritz residual is small and bounds the eigenvector error (residual /
  gap to the next Ritz value, Davis-Kahan); images that do not converge within `max_dim` columns
  (e.g. a tie between the two top eigenvalues) are solved again by `dense`.

  The vectors are float64 (the edge products are exact float32 GEMMs, `exact_edge_product`), and the
  tolerances are tight: MaskCut's decisions compare eigenvector entries with each other (the seed is
  an argmax, the side test compares corners with the mean), and on near-complete graphs or patches
  with identical neighbourhoods these differ by 1e-5 relative or less, which a float32 solve
  (eigenvector error ~1e-5) got wrong on a few percent of images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from ..config import KrylovConfig
from .affinity import PatchGraph

Method = Literal["dense", "fast"]


@dataclass
class Fiedler:
    """Second-smallest generalised eigenpairs of a batch.

    vectors: (B, N) float64 eigenvectors y (sign and scale arbitrary, as in the reference).
    values:  (B,) float64 eigenvalues lambda_1 (0 <= lambda_1 <= 1 for these graphs).
    dense:   (B,) bool, images solved by the dense solver (all of them for `dense`; the fallbacks for `fast`).
    krylov_dim: (B,) int64, size of the Krylov basis each image needed (0 for `dense`).
    """

    vectors: Tensor
    values: Tensor
    dense: Tensor
    krylov_dim: Tensor


def solve(graph: PatchGraph, method: Method = "fast", settings: KrylovConfig = KrylovConfig()) -> Fiedler:
    """Second-smallest eigenpair of (D - A) y = lambda D y for every image of `graph` (N >= 3)."""
    if graph.n < 3:
        raise ValueError(f"the NCut eigenproblem needs at least 3 patches, got {graph.n}")
    if method == "dense":
        return solve_dense(graph)
    if method == "fast":
        return solve_fast(graph, settings)
    raise ValueError(f"unknown solver {method!r}; use 'dense' or 'fast'")


def dense_fiedler(affinity: np.ndarray) -> tuple[np.ndarray, float]:
    """CutLER's solve for one (N, N) float64 affinity: (y (N,), lambda_1)."""
    degree = np.diag(affinity.sum(axis=1))
    values, vectors = scipy.linalg.eigh(degree - affinity, degree, subset_by_index=[1, 2])
    return vectors[:, 0], float(values[0])


def solve_dense(graph: PatchGraph, images: list[int] | None = None) -> Fiedler:
    """The reference solver on `images` (default: all) of the batch; other rows are left at zero."""
    batch = graph.batch
    vectors = torch.zeros(batch, graph.n, dtype=torch.float64)
    values = torch.zeros(batch, dtype=torch.float64)
    chosen = torch.zeros(batch, dtype=torch.bool)
    for index in range(batch) if images is None else images:
        y, lam = dense_fiedler(graph.dense(index))
        vectors[index] = torch.from_numpy(y)
        values[index] = lam
        chosen[index] = True
    device = graph.edges.device
    dims = torch.zeros(batch, dtype=torch.int64, device=device)
    return Fiedler(vectors.to(device), values.to(device), chosen.to(device), dims)


def _orthonormalize(
    block: Tensor, basis: Tensor | None, trivial: Tensor, generator: torch.Generator, sync_free: bool = False
) -> Tensor:
    """Orthonormal (B, N, k) block orthogonal to `trivial` (B, N, 1) and to `basis` (B, N, m).

    Classical Gram-Schmidt twice, then QR. Columns that were (numerically) inside the span already
    are replaced by fresh random directions, so rounding noise is never normalised into the basis.
    `sync_free` (GPU): the replacement is computed for every image and selected per image, instead
    of asking the host whether any column is weak (a device sync per step); the result is the same.
    """

    def project(x: Tensor) -> Tensor:
        for _ in range(2):
            x = x - trivial @ (trivial.transpose(1, 2) @ x)
            if basis is not None:
                x = x - basis @ (basis.transpose(1, 2) @ x)
        return x

    block = block / torch.linalg.vector_norm(block, dim=1, keepdim=True).clamp_min(1e-30)
    q, r = torch.linalg.qr(project(block))
    weak = torch.diagonal(r, dim1=1, dim2=2).abs() < 1e-3
    if not sync_free and not bool(weak.any()):
        return q
    fresh = torch.randn(block.shape, generator=generator, dtype=block.dtype, device=generator.device).to(block.device)
    replaced, _ = torch.linalg.qr(project(torch.where(weak.unsqueeze(1), fresh, q)))
    return torch.where(weak.any(1).view(-1, 1, 1), replaced, q)


def _krylov_setup(graph: PatchGraph) -> tuple[Tensor, Tensor]:
    """(D^-1/2 as (B, N, 1), the unit trivial eigenvector sqrt(d)/||sqrt(d)|| as (B, N, 1)), float64."""
    degrees = graph.degrees(torch.float64)
    trivial = degrees.sqrt()
    trivial = trivial / torch.linalg.vector_norm(trivial, dim=1, keepdim=True)
    return degrees.rsqrt().unsqueeze(-1), trivial.unsqueeze(-1)


def _grow_projection(small: Tensor | None, basis: Tensor, image: Tensor, new: int) -> Tensor:
    """The Rayleigh quotient V^T M V (B, m, m) of `basis` V (B, N, m), grown by its last `new` columns.

    Only the new rows are multiplied (V^T (M V_new), m x new per image instead of the whole m x m
    product); the matrix is kept symmetric by mirroring them.
    """
    rows = basis.transpose(1, 2) @ image[..., -new:]  # (B, m, new): V^T M V_new
    if small is None:
        return 0.5 * (rows + rows.transpose(1, 2))
    m = basis.shape[-1]
    grown = torch.zeros(basis.shape[0], m, m, dtype=basis.dtype, device=basis.device)
    grown[:, : m - new, : m - new] = small
    grown[:, :, m - new :] = rows
    grown[:, m - new :, : m - new] = rows[:, : m - new].transpose(1, 2)
    corner = grown[:, m - new :, m - new :]
    grown[:, m - new :, m - new :] = 0.5 * (corner + corner.transpose(1, 2))
    return grown


def _ritz(small: Tensor) -> tuple[Tensor, Tensor]:
    """(B, m, m) symmetric -> (eigenvalues (B, m) ascending, eigenvectors (B, m, m)) on the input's device.

    Solved on the host: the matrices are tiny (m <= max_dim), and a batched eigh of such matrices on
    CUDA runs one solver call (with its own syncs) per image, while the host's LAPACK takes
    microseconds each; the copy replaces the device sync the convergence test needs anyway.
    """
    values, coords = torch.linalg.eigh(small.cpu())
    return values.to(small.device, non_blocking=True), coords.to(small.device, non_blocking=True)


def solve_fast(
    graph: PatchGraph, settings: KrylovConfig = KrylovConfig(), sync_free: bool | None = None
) -> Fiedler:
    """Batched block Krylov solve with a dense fallback (see the module docstring).

    `sync_free`: orthonormalise without asking the host whether a column is weak (`_orthonormalize`);
    None = on for GPU devices (on the CPU a sync costs nothing and skipping the spare QR is cheaper).

    The convergence test (Rayleigh-Ritz on the host, two device syncs) runs at step `first_check` and
    every `check_every` steps after; between tests the loop queues GPU work without waiting for it.
    Converged images stop being multiplied once half or more of the batch has converged (the batch is
    then cut down, a copy of the edges), so one hard image does not make the others pay.
    """
    batch, n, device = graph.batch, graph.n, graph.edges.device
    block = min(settings.block, n - 1)
    max_dim = min(settings.max_dim, n - 1)
    sync_free = device.type != "cpu" if sync_free is None else sync_free
    generator = torch.Generator().manual_seed(settings.seed)
    fresh_generator = torch.Generator(device).manual_seed(settings.seed) if sync_free else generator
    theta = torch.zeros(batch, dtype=torch.float64, device=device)
    vectors = torch.zeros(batch, n, dtype=torch.float64, device=device)
    dims = torch.zeros(batch, dtype=torch.int64, device=device)

    live = torch.arange(batch, device=device)  # images of the current sub-batch
    pending = torch.ones(batch, dtype=torch.bool, device=device)  # ... that have not converged yet
    sub = graph
    inv_sqrt, trivial = _krylov_setup(sub)
    start = torch.randn(batch, n, block, generator=generator, dtype=torch.float64).to(device)
    basis = _orthonormalize(start, None, trivial, fresh_generator, sync_free)
    image = inv_sqrt * sub.matmul(inv_sqrt * basis)
    small = _grow_projection(None, basis, image, basis.shape[-1])
    step = 0
    while True:
        step += 1
        dim = basis.shape[-1]
        last = dim + block > max_dim
        due = step >= settings.first_check and (step - settings.first_check) % settings.check_every == 0
        if due or last:
            values, coords = _ritz(small)
            top = coords[..., -1:]
            ritz = (basis @ top).squeeze(-1)
            residual = torch.linalg.vector_norm((image @ top).squeeze(-1) - values[:, -1:] * ritz, dim=1)
            gap = values[:, -1] - values[:, -2]
            ok = pending & (residual <= settings.residual_tol) & (residual <= settings.angle_tol * gap)
            theta[live] = torch.where(ok, values[:, -1], theta[live])
            vectors[live] = torch.where(ok.unsqueeze(1), inv_sqrt.squeeze(-1) * ritz, vectors[live])
            dims[live] = torch.where(pending, dim, dims[live])
            pending = pending & ~ok
            n_pending = int(pending.sum())  # with the host Ritz solve above: the test's two device syncs
            if last or n_pending == 0:
                break
            if 2 * n_pending <= len(live):  # shrink the batch (a copy of the edges) only by half or more
                keep = pending.nonzero().flatten()
                live, basis, image, small, pending = live[keep], basis[keep], image[keep], small[keep], pending[keep]
                sub = graph.select(live)
                inv_sqrt, trivial = _krylov_setup(sub)
        new = _orthonormalize(image[..., -block:], basis, trivial, fresh_generator, sync_free)
        basis = torch.cat([basis, new], dim=-1)
        image = torch.cat([image, inv_sqrt * sub.matmul(inv_sqrt * new)], dim=-1)
        small = _grow_projection(small, basis, image, new.shape[-1])

    unsolved = live[pending]
    dense = torch.zeros(batch, dtype=torch.bool, device=device)
    dense[unsolved] = True
    result = Fiedler(vectors, 1.0 - theta, dense, dims)
    if len(unsolved):
        fallback = solve_dense(graph, unsolved.tolist())
        result.vectors[unsolved] = fallback.vectors[unsolved]
        result.values[unsolved] = fallback.values[unsolved]
    return result
