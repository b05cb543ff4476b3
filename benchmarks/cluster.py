"""faiss K-means (the cluster stage's `kmeans_fit`) against scikit-learn's KMeans on the same data.

Both run Lloyd from a random sample of the points (U2Seg's init), one initialisation, the same
iteration cap and the same number of threads (`--threads`, default 1: OpenMP's busy-waiting makes
multi-threaded faiss erratic on a machine that other jobs share; raise it on an idle machine).
faiss is timed twice: with the stage's sampling (256 points per centroid, then the whole set
assigned) and on every point. Inertia (sum of squared distances to the nearest centroid) is always
measured on the whole data set with the same exact assignment. scikit-learn stops once no label
changes; faiss runs every iteration, so the table also compares time per iteration.

    python benchmarks/cluster.py            # quick: 60k x 128, K = 100, 20 iterations
    python benchmarks/cluster.py --full     # 200k x 768, K = 300, 100 iterations (minutes)
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from u2seg_core.cluster.kmeans import assign, kmeans_fit


def gaussian_mixture(n: int, d: int, n_components: int, seed: int) -> np.ndarray:
    """(n, d) float32 points around `n_components` random centres (unit noise, centre spread 4)."""
    rng = np.random.default_rng(seed)
    centres = (4.0 * rng.standard_normal((n_components, d))).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 50_000):
        stop = min(n, start + 50_000)
        x[start:stop] = centres[rng.integers(0, n_components, stop - start)]
        x[start:stop] += rng.standard_normal((stop - start, d), dtype=np.float32)
    return x


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    return float(assign(x, centroids, "l2", use_gpu="never")[1].astype(np.float64).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3, help="initialisations per method (results are averaged)")
    parser.add_argument("--threads", type=int, default=1, help="threads for both libraries")
    parser.add_argument("--full", action="store_true", help="200k x 768, K = 300, 100 iterations")
    args = parser.parse_args()
    if args.full:
        args.n, args.d, args.k, args.niter = 200_000, 768, 300, 100
    x = gaussian_mixture(args.n, args.d, args.k, seed=0)
    print(
        f"data {args.n} x {args.d} float32 ({args.k}-component mixture), K = {args.k}, max {args.niter} iterations, "
        f"1 random-sample init per run, mean of {args.seeds} seeds, {args.threads} thread(s)"
    )
    faiss.omp_set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        report(x, args)


def one_run(x: np.ndarray, args: argparse.Namespace, method: str, seed: int) -> tuple[float, int, float]:
    """(seconds, iterations, inertia on all points) of one fit + full assignment."""
    start = time.perf_counter()
    if method == "sklearn":
        fit = KMeans(
            n_clusters=args.k, init="random", n_init=1, max_iter=args.niter, tol=0.0, random_state=seed,
            algorithm="lloyd",
        ).fit(x)
        return time.perf_counter() - start, int(fit.n_iter_), inertia(x, fit.cluster_centers_.astype(np.float32))
    per_centroid = 256 if method == "faiss-sampled" else len(x)
    centroids, _ = kmeans_fit(
        x, args.k, niter=args.niter, seed=seed, max_points_per_centroid=per_centroid, use_gpu="never"
    )
    assign(x, centroids, use_gpu="never")  # the stage labels every point afterwards
    return time.perf_counter() - start, args.niter, inertia(x, centroids)


def report(x: np.ndarray, args: argparse.Namespace) -> None:
    labels = {
        "sklearn": "sklearn KMeans (all points)",
        "faiss-sampled": f"faiss, stage sampling (n_train={min(len(x), 256 * args.k)})",
        "faiss-all": f"faiss (all points, n_train={len(x)})",
    }
    runs = {method: [one_run(x, args, method, seed) for seed in range(args.seeds)] for method in labels}
    means = {method: np.mean(np.array(r, dtype=np.float64), axis=0) for method, r in runs.items()}
    base_time, base_iters, base_inertia = means["sklearn"]
    print(
        f"{'method':<46} {'seconds':>8} {'iters':>6} {'inertia':>11} {'time ratio':>10} {'per-iter ratio':>14} "
        f"{'inertia ratio':>13}"
    )
    for method, (seconds, iters, value) in means.items():
        per_iter = (seconds / iters) / (base_time / base_iters)
        print(
            f"{labels[method]:<46} {seconds:8.2f} {iters:6.1f} {value:11.4g} {seconds / base_time:10.3f} "
            f"{per_iter:14.3f} {value / base_inertia:13.4f}"
        )
    print("ratios are method / sklearn: time < 1 = faster, inertia < 1 = a better (lower) objective")


if __name__ == "__main__":
    main()
