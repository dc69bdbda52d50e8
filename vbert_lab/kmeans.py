"""Hierarchical k-means: the visual (and audio) vocabulary of VideoBERT.

Taught in ``05_visual_and_audio_tokens``. The paper clusters 1024-d S3D clip
features with hierarchical k-means, ``k = 12`` and depth 4, into
``12**4 = 20,736`` visual words; the same class makes audio words from
per-clip audio features.

The tree
--------
Level ``l`` (0 = the root's children) holds ``k**(l+1)`` centroids, stored as
``(k**l, k, D)``: node ``n`` at level ``l`` has children ``n * k + c``. A leaf
id is the base-``k`` number of the path's child digits, so leaf ids are
``[0, k**depth)`` and the first digit is the top-level cluster
(``leaf // k**(depth-1)``).

Assignment descends the tree: ``k`` distances per level, ``k * depth`` per
vector (``predict(X)``), instead of ``k**depth`` for a flat search
(``predict(X, exact=True)``, the nearest leaf centroid). A distance is
``||c||^2 - 2 x.c`` (``||x||^2`` is the same for every child, so the argmin
does not need it; the first of equal distances wins), one small matmul per
node. With ``k`` children per node these matmuls are thin (``k`` columns)
and read each row for few flops, so ``predict`` is laid out for the caches
(:meth:`HierarchicalKMeans._predict_descent`): rows are scored in blocks of
about 1,000 (4 MB of 1024-d features, cache-resident), the upper levels
(``max(1, depth // 2)`` of them) on blocks of consecutive rows, then the rows are
grouped by the node they reached and each block of one node's rows is
gathered once and carried through all the lower levels while it is in cache:
the features are read from memory about twice, not once per level. Below a
block's first level its rows are sorted by node, one matmul per node. On the
CPU, chunks of rows go to ``torch.get_num_threads()`` worker threads that run
one intra-op thread each (thousands of small kernels would otherwise each
wait at an OpenMP barrier, which a busy machine makes very slow).
``fit`` assigns points with a tiled batched matmul over all rows
(``_assign_level``), which gives the same ids up to float rounding at
near-ties.

Nodes with fewer distinct points than ``k``
------------------------------------------
``fit`` refuses data with fewer points than leaves (``k**depth``), but deep
nodes of an unbalanced tree can still receive fewer than ``k`` distinct
points. Such a node gets one child per distinct point, in the child slots
``0, 1, ...``; the remaining slots are marked invalid (``valid[l]`` is False),
descent never enters them, and their subtree's leaves are never produced. Leaf
ids therefore stay the base-``k`` path digits (stable across data sets), and
:attr:`leaf_valid` says which leaves can occur. :attr:`leaf_centroids` fills an
invalid leaf with its nearest valid ancestor's centroid so that every row is a
usable embedding initialisation.

Fitting
-------
In memory (``fit(X)``): every node runs k-means++ (greedy, as scikit-learn)
then Lloyd iterations on its points; an empty cluster is re-seeded at the
node's point farthest from its centroid. With ``max_points_per_node`` a node
with more points fits on a random sample of that many (faiss samples 256
points per centroid the same way), and all its points are then assigned to
the fitted children. With ``refine_leaves`` (the default) a final pass moves
every reached leaf centroid to the mean of the points that descent assigns to
it (one more Lloyd step at the leaves; it cannot raise the error). Streaming (``fit_chunks``, or ``fit``
with ``batch_size`` on an array too large for memory, e.g. a ``np.memmap``):
level by level, each node is initialised from a random sample of its points
(at most ``sample_per_node``, collected in one pass) and then refined with
``stream_passes`` exact Lloyd passes over all chunks (sums and counts
accumulated chunk by chunk; a cluster empty in a pass keeps its centroid).
Randomness comes from a generator per (seed, level, node), so a fit is
deterministic for a seed on a given device.

Saved as ``codebook.safetensors`` (centroids and valid masks per level) plus
``codebook.json`` (sizes and settings).
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

__all__ = [
    "HierarchicalKMeans",
    "codebook_usage",
    "perplexity",
    "purity",
    "nmi",
    "nearest_to_centroids",
    "quantisation_error",
]

FORMAT = "vbert_lab.hierarchical_kmeans"
FORMAT_VERSION = 1
_CHUNK = 16384  # rows per distance block: bounds memory at (chunk, k**depth) for exact search
_DESCENT_BLOCK_CPU = 1024  # rows scored together by predict: 4 MB of 1024-d features stay in cache
_DESCENT_BLOCK_GPU = 16384  # on a GPU: fewer, larger kernels
_DESCENT_CHUNK = (8192, 32768)  # CPU: rows one worker sorts and descends at a time (min, max)


def _padded_width(k: int) -> int:
    """Columns of a node's centroid block: 9..15 children are padded to 16 (MKL's 16-wide kernels beat 12-wide ones)."""
    return 16 if 8 < k < 16 else k


def _parallel_workers(device: torch.device, n_chunks: int) -> int:
    """How many single-threaded worker threads ``predict`` uses on the CPU (1: none, the caller's thread as usual)."""
    if device.type != "cpu" or n_chunks < 2:
        return 1
    n = torch.get_num_threads()
    if n < 2 or "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return 1
    return min(n, n_chunks)


def _run_in_workers(n: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` for ``i < n`` in ``n`` threads that each use one intra-op thread; re-raise the first error.

    Descent is thousands of small kernels. Run with intra-op threads, every
    kernel is an OpenMP region whose threads must meet at a barrier, and on a
    busy machine one descheduled thread stalls each of them (measured on 2
    cores at a load average of 7: 2 intra-op threads 45x slower than 1).
    Worker threads that each run their kernels alone (torch releases the GIL
    inside them) use the same number of cores without a barrier per kernel. The thread count is
    per-thread in the OpenMP backend: each worker sets its own to 1 and the
    caller's global setting is restored once every worker has set its own,
    so the caller and threads started later keep ``torch.get_num_threads()``.
    """
    n_caller = torch.get_num_threads()
    ready = threading.Barrier(n + 1)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            torch.get_num_threads()  # initialise this thread's OpenMP/MKL settings first (it reads the global count)
            torch.set_num_threads(1)  # this thread: one intra-op thread
        finally:
            ready.wait()
        try:
            with torch.no_grad():  # grad mode is per thread
                work(i)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,), name=f"kmeans-descent-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    try:
        ready.wait()
    except BaseException:
        ready.abort()  # an interrupt here: release the workers (they stop at the broken barrier)
        raise
    finally:
        torch.set_num_threads(n_caller)  # the global count, which the workers' set_num_threads(1) changed
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _descend_block(xb: torch.Tensor, node: torch.Tensor | None, base: int, levels: range, W: list[torch.Tensor],
                   c_sq: list[torch.Tensor], k: int, ws: dict, best: torch.Tensor | None = None) -> torch.Tensor:
    """Node ids (b,) one level below ``levels`` of the rows ``xb`` (b, D), which all sit in node ``base`` of level ``levels.start``.

    ``node``: unused at the first level (every row is in ``base``). Below it,
    the rows are sorted by their node (within ``base``'s subtree), gathered
    into ``ws["xs"]`` and scored with one ``addmm`` per node into ``ws["d"]``.
    ``W[l]`` (k**l, kp, D) and ``c_sq[l]`` (k**l, kp) are the padded centroids
    and their squared norms (+inf for invalid or padding slots). ``best``
    (b,): receives the level-0 minimum distances (finiteness check).
    """
    b = xb.shape[0]
    l0 = levels.start
    for level in levels:
        Wl, cl = W[level], c_sq[level]
        lo, span = base * k ** (level - l0), k ** (level - l0)  # the subtree's nodes at this level: lo .. lo + span - 1
        if span == 1:  # every row is in node lo
            d = torch.addmm(cl[lo], xb, Wl[lo].T, alpha=-2.0)  # (b, kp)
            if level == 0:
                dmin, digit = d.min(1)
                if best is not None:
                    best.copy_(dmin)
            else:
                digit = d.argmin(1)
            node = lo * k + digit
            continue
        local = node - lo
        order = torch.argsort(local)
        counts = torch.bincount(local, minlength=span).tolist()
        xs = torch.index_select(xb, 0, order, out=ws["xs"][:b])
        d = ws["d"][:b]
        s = 0
        for j, c in enumerate(counts):
            if c:
                torch.addmm(cl[lo + j], xs[s : s + c], Wl[lo + j].T, alpha=-2.0, out=d[s : s + c])
                s += c
        child = torch.empty_like(node)
        child[order] = node[order] * k + d.argmin(1)
        node = child
    return node


def _as_float_tensor(X, device, what: str = "X", check_finite: bool = True) -> torch.Tensor:
    """``X`` (N, D) as a float32 tensor on ``device``; clear errors for wrong shapes and non-finite values.

    ``check_finite=False`` skips the finiteness pass for a caller that checks
    its own results (``predict``: non-finite rows give non-finite distances).
    """
    if isinstance(X, torch.Tensor):
        t = X.detach()
    else:
        arr = np.ascontiguousarray(np.asarray(X))
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # memmap chunks are read-only
    if t.dim() != 2:
        raise ValueError(f"{what} should be a 2-d array of shape (n_vectors, dim), got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
        raise ValueError(f"{what} has dtype {t.dtype}; give float features")
    t = t.to(device=device, dtype=torch.float32)
    if not check_finite or (t.numel() and bool(torch.isfinite(t.sum()))):  # fast path: one float32 reduction, no mask
        return t  # (a float32 sum that overflows falls through to the exact check below)
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        rows = (~finite).any(dim=1).nonzero().flatten()
        raise ValueError(
            f"{what} has NaN or inf values in {rows.numel()} row(s), first at row {int(rows[0])}; "
            "k-means needs finite features: drop or repair those rows (e.g. clips that failed to decode)"
        )
    return t


def _sq_distances(X: torch.Tensor, C: torch.Tensor, C_sq: torch.Tensor | None = None,
                  X_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances (N, K) between X (N, D) and C (K, D); pass the squared norms to reuse them."""
    if C_sq is None:
        C_sq = (C * C).sum(1)
    if X_sq is None:
        X_sq = (X * X).sum(1)
    d = torch.addmm(C_sq[None, :], X, C.T, alpha=-2.0).add_(X_sq[:, None])  # (N, K)
    return d.clamp_min_(0.0)


def _nearest(X: torch.Tensor, C: torch.Tensor, invalid: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_j ||x - c_j||^2 over the valid centroids, without the ||x||^2 term (N,)."""
    C_sq = (C * C).sum(1)
    if invalid is not None:
        C_sq = C_sq.masked_fill(invalid, float("inf"))
    return torch.addmm(C_sq[None, :], X, C.T, alpha=-2.0).argmin(1)


def _node_seed(seed: int, level: int, node: int) -> int:
    return int(np.random.SeedSequence([int(seed) % 2**32, level, node]).generate_state(1)[0])


def _kmeans_pp(X: torch.Tensor, k: int, gen: torch.Generator, X_sq: torch.Tensor) -> torch.Tensor:
    """Greedy k-means++ seeds (scikit-learn's variant, 2 + log k trials); fewer than k if X has fewer distinct points."""
    n = X.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=gen))
    centers = [X[first]]
    closest = _sq_distances(X, X[first : first + 1], X_sq=X_sq).squeeze(1)  # (N,)
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0.0:  # every point sits on a centre: no more distinct points
            break
        probs = (closest / total).double().cpu()
        cand = torch.multinomial(probs, trials, replacement=True, generator=gen).to(X.device)  # (trials,)
        d_cand = torch.minimum(_sq_distances(X, X[cand], X_sq=X_sq), closest[:, None])  # (N, trials)
        best = int(d_cand.sum(0).argmin())
        centers.append(X[cand[best]])
        closest = d_cand[:, best]
    return torch.stack(centers)


def _kmeans_node(X: torch.Tensor, k: int, n_iter: int, tol: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of one node: (centroids (k, D), valid (k,)); invalid slots are zero rows."""
    D = X.shape[1]
    X_sq = (X * X).sum(1)  # (N,)
    seeds = _kmeans_pp(X, k, gen, X_sq)  # (k', D), k' <= k
    kk = seeds.shape[0]
    C = seeds.clone()
    # scikit-learn's stopping rule: the centres moved less than tol x the mean per-feature variance
    shift_tol = tol * float(X.var(0, unbiased=False).mean()) if X.shape[0] > 1 else 0.0
    prev_label = None
    for _ in range(n_iter):
        d = _sq_distances(X, C, X_sq=X_sq)  # (N, k')
        best, label = d.min(1)
        counts = torch.bincount(label, minlength=kk)
        sums = torch.zeros_like(C).index_add_(0, label, X)
        empty = counts == 0
        C_new = sums / counts.clamp_min(1)[:, None].to(X.dtype)
        if bool(empty.any()):  # re-seed each empty cluster at the point farthest from its centroid
            far = best.clone()
            for j in empty.nonzero().flatten().tolist():
                i = int(far.argmax())
                C_new[j] = X[i]
                far[i] = -1.0
        shift = float(((C_new - C) ** 2).sum())
        C = C_new
        if not bool(empty.any()) and (shift <= shift_tol or (prev_label is not None and torch.equal(label, prev_label))):
            break
        prev_label = label
    out = torch.zeros(k, D, dtype=X.dtype, device=X.device)
    out[:kk] = C
    valid = torch.zeros(k, dtype=torch.bool, device=X.device)
    valid[:kk] = True
    return out, valid


class HierarchicalKMeans:
    """Hierarchical k-means with tree-descent assignment (scikit-learn style API).

    ``HierarchicalKMeans(k=12, depth=4)`` is the paper's 20,736-word visual
    vocabulary; ``depth=1`` is flat k-means. ``fit(X)`` returns self,
    ``predict(X)`` gives leaf ids in ``[0, k**depth)`` by tree descent
    (``exact=True``: nearest leaf centroid). ``device``: where the arithmetic
    runs ("cpu", "cuda"). ``max_points_per_node``: fit each node on a random
    sample of at most that many of its points (None: all); ``refine_leaves``:
    end with leaf centroids = means of the points descent assigns them. See
    the module docstring for the tree layout and nodes with fewer points than
    ``k``. Taught in ``05_visual_and_audio_tokens``.
    """

    def __init__(self, k: int = 12, depth: int = 4, seed: int = 0, n_iter: int = 25, tol: float = 1e-4,
                 device: str | torch.device = "cpu", batch_size: int | None = None,
                 sample_per_node: int = 4096, stream_passes: int = 3, max_points_per_node: int | None = None,
                 refine_leaves: bool = True):
        if int(k) != k or k < 2:
            raise ValueError(f"k={k}: hierarchical k-means needs k >= 2 children per node (the paper: 12)")
        if int(depth) != depth or depth < 1:
            raise ValueError(f"depth={depth}: the tree needs depth >= 1 (1 is flat k-means; the paper: 4)")
        if n_iter < 1:
            raise ValueError(f"n_iter={n_iter} must be >= 1")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1 (or None to fit in memory)")
        if max_points_per_node is not None and max_points_per_node < k:
            raise ValueError(f"max_points_per_node={max_points_per_node} must be at least k={k} (or None: all points)")
        if sample_per_node < k:
            raise ValueError(f"sample_per_node={sample_per_node} must be at least k={k}")
        self.k, self.depth, self.seed = int(k), int(depth), int(seed)
        self.n_iter, self.tol = int(n_iter), float(tol)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.sample_per_node, self.stream_passes = int(sample_per_node), int(stream_passes)
        self.max_points_per_node = None if max_points_per_node is None else int(max_points_per_node)
        self.refine_leaves = bool(refine_leaves)
        self.centroids: list[torch.Tensor] = []  # per level: (k**l, k, D)
        self.valid: list[torch.Tensor] = []  # per level: (k**l, k) bool
        self.dim: int | None = None

    # ------------------------------------------------------------------ sizes
    @property
    def n_leaves(self) -> int:
        """Size of the leaf id space, ``k**depth`` (the number of visual words)."""
        return self.k**self.depth

    def _check_fitted(self) -> None:
        if not self.centroids:
            raise RuntimeError("this HierarchicalKMeans is not fitted yet: call fit(X) or HierarchicalKMeans.load(path)")

    @property
    def leaf_valid(self) -> torch.Tensor:
        """(k**depth,) bool: leaves descent can reach (False under nodes that had fewer than k distinct points)."""
        self._check_fitted()
        ok = torch.ones(1, dtype=torch.bool, device=self.device)
        for v in self.valid:
            ok = (ok[:, None] & v).reshape(-1)
        return ok

    @property
    def leaf_centroids(self) -> torch.Tensor:
        """(k**depth, D) leaf centroids; an unreachable leaf repeats its nearest valid ancestor's centroid."""
        self._check_fitted()
        filled = None
        for C, v in zip(self.centroids, self.valid):
            flat = C.reshape(-1, self.dim)  # (k**(l+1), D)
            if filled is None:
                filled = flat.clone()
            else:
                parent = filled.repeat_interleave(self.k, dim=0)
                vflat = v.reshape(-1)
                filled = torch.where(vflat[:, None], flat, parent)
        return filled

    def level_centroids(self, level: int) -> torch.Tensor:
        """(k**(level+1), D) centroids of one level (0 = the root's k children)."""
        self._check_fitted()
        return self.centroids[level].reshape(-1, self.dim)

    # ------------------------------------------------------------------ fitting
    def _check_points(self, n: int) -> None:
        if n < self.n_leaves:
            raise ValueError(
                f"more leaves than points: k**depth = {self.k}**{self.depth} = {self.n_leaves} leaves but only {n} "
                f"vectors; lower depth or k, or fit on more clips"
            )

    def fit(self, X) -> "HierarchicalKMeans":
        """Fit the tree on ``X`` (N, D): numpy, torch, or a ``np.memmap`` (with ``batch_size``, streamed in chunks)."""
        if self.batch_size is not None:
            if getattr(X, "ndim", None) != 2:
                raise ValueError(f"X should be a 2-d array of shape (n_vectors, dim), got shape {tuple(getattr(X, 'shape', ()))}")
            bs = self.batch_size
            return self.fit_chunks(lambda: (X[i : i + bs] for i in range(0, X.shape[0], bs)))
        X = _as_float_tensor(X, self.device)
        self._check_points(X.shape[0])
        self.dim = X.shape[1]
        self.centroids, self.valid = [], []
        node = torch.zeros(X.shape[0], dtype=torch.long, device=self.device)  # (N,) node of each point at this level
        for level in range(self.depth):
            self.centroids.append(torch.zeros(self.k**level, self.k, self.dim, device=self.device))
            self.valid.append(torch.zeros(self.k**level, self.k, dtype=torch.bool, device=self.device))

            def fit_node(n_id: int, Xn: torch.Tensor, level: int = level) -> None:
                gen = torch.Generator().manual_seed(_node_seed(self.seed, level, n_id))
                if self.max_points_per_node is not None and Xn.shape[0] > self.max_points_per_node:
                    pick = torch.randperm(Xn.shape[0], generator=gen)[: self.max_points_per_node].sort().values
                    Xn = Xn[pick.to(Xn.device)]
                self.centroids[level][n_id], self.valid[level][n_id] = _kmeans_node(Xn, self.k, self.n_iter, self.tol, gen)

            node = self._assign_level(X, node, level, fit_node)  # every point's child, as descent gives it
        if self.refine_leaves:
            self._refine_leaves(X, node)
        return self

    def _refine_leaves(self, X: torch.Tensor, leaf: torch.Tensor) -> None:
        """Move every reached leaf centroid to the mean of the points that descent assigns to it.

        The mean minimises each leaf's squared error, and re-descending can only
        pick a nearer sibling, so the quantisation error of ``predict`` does not
        rise. Leaves no point reaches keep their centroid.
        """
        n_leaves = self.n_leaves
        sums = torch.zeros(n_leaves, self.dim, device=X.device).index_add_(0, leaf, X)  # (k**depth, D)
        counts = torch.bincount(leaf, minlength=n_leaves)  # (k**depth,)
        got = counts > 0
        flat = self.centroids[-1].view(-1, self.dim)
        flat[got] = sums[got] / counts[got, None].to(X.dtype)

    def fit_chunks(self, chunks: Callable[[], Iterable] | Iterable) -> "HierarchicalKMeans":
        """Streaming fit over chunks of rows (each (n_i, D)), for features larger than memory.

        ``chunks``: a callable returning a fresh iterable of chunks, or a
        re-iterable (a list, a ``np.memmap`` split...). The data is read
        ``depth * (1 + stream_passes)`` times. See the module docstring.
        """
        if callable(chunks):
            make = chunks
        else:
            if iter(chunks) is chunks:
                raise ValueError("fit_chunks reads the data several times: pass a list of chunks or a function "
                                 "returning a fresh iterator (e.g. lambda: (X[i:i+b] for i in range(0, len(X), b))), not a one-shot iterator")
            make = lambda: chunks  # noqa: E731

        def stream():
            seen = 0
            for i, chunk in enumerate(make()):
                t = _as_float_tensor(chunk, self.device, what=f"chunk {i}")
                if self.dim is not None and t.shape[1] != self.dim:
                    raise ValueError(f"chunk {i} has dim {t.shape[1]}, the first chunk had {self.dim}")
                self.dim = t.shape[1] if self.dim is None else self.dim
                seen += t.shape[0]
                if t.shape[0]:
                    yield t
            if seen == 0:
                raise ValueError("fit_chunks got no data (is the chunk iterator exhausted? pass a function that makes a fresh one)")

        self.dim, self.centroids, self.valid = None, [], []
        n_total = None
        for level in range(self.depth):
            # pass 1: a random sample of at most sample_per_node points per node (smallest random keys win)
            s_node = s_key = s_x = None
            n_seen = 0
            for chunk_i, x in enumerate(stream()):
                n_seen += x.shape[0]
                node = self._descend(x, level)  # (n,)
                g = torch.Generator().manual_seed(_node_seed(self.seed, level + 1000, chunk_i))
                key = torch.rand(x.shape[0], generator=g).to(self.device)
                if s_x is None:
                    s_node, s_key, s_x = node, key, x
                else:
                    s_node, s_key, s_x = torch.cat([s_node, node]), torch.cat([s_key, key]), torch.cat([s_x, x])
                keep = self._smallest_per_node(s_node, s_key)
                s_node, s_key, s_x = s_node[keep], s_key[keep], s_x[keep]
            if n_total is None:
                n_total = n_seen
                self._check_points(n_total)
            C = torch.zeros(self.k**level, self.k, self.dim, device=self.device)
            V = torch.zeros(self.k**level, self.k, dtype=torch.bool, device=self.device)
            order = torch.argsort(s_node, stable=True)
            ids, counts = torch.unique_consecutive(s_node[order], return_counts=True)
            for n_id, idx in zip(ids.tolist(), torch.split(order, counts.tolist())):
                gen = torch.Generator().manual_seed(_node_seed(self.seed, level, n_id))
                C[n_id], V[n_id] = _kmeans_node(s_x[idx], self.k, self.n_iter, self.tol, gen)
            self.centroids.append(C)
            self.valid.append(V)
            # passes 2..: exact Lloyd over all chunks, every node of this level at once
            for _ in range(self.stream_passes):
                sums = torch.zeros(self.k ** (level + 1), self.dim, device=self.device)
                cnt = torch.zeros(self.k ** (level + 1), device=self.device)
                for x in stream():
                    leaf = self._descend(x, level + 1)  # (n,) child index at this level
                    sums.index_add_(0, leaf, x)
                    cnt.index_add_(0, leaf, torch.ones_like(leaf, dtype=torch.float32))
                flat = self.centroids[level].reshape(-1, self.dim)
                got = cnt > 0
                flat[got] = sums[got] / cnt[got, None]
        return self

    def _smallest_per_node(self, node: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Indices of the ``sample_per_node`` smallest keys within each node."""
        order = torch.argsort(key, stable=True)
        order = order[torch.argsort(node[order], stable=True)]  # by node, then key
        sorted_node = node[order]
        first = torch.ones_like(sorted_node, dtype=torch.bool)
        first[1:] = sorted_node[1:] != sorted_node[:-1]
        start = torch.cummax(torch.where(first, torch.arange(len(order), device=node.device), 0), 0).values
        rank = torch.arange(len(order), device=node.device) - start
        return order[rank < self.sample_per_node]

    # ------------------------------------------------------------------ assignment
    def _descend(self, X: torch.Tensor, levels: int) -> torch.Tensor:
        """Node index after descending ``levels`` levels (0: the root, all zeros); k distances per level."""
        node = torch.zeros(X.shape[0], dtype=torch.long, device=X.device)
        workspace: list[torch.Tensor] = []
        for level in range(levels):
            node = self._assign_level(X, node, level, workspace=workspace)
        return node

    def _assign_level(self, X: torch.Tensor, node: torch.Tensor, level: int,
                      fit_node: Callable[[int, torch.Tensor], None] | None = None,
                      workspace: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Child ids (N,) of the rows of ``X`` (N, D) that sit at ``level``'s nodes ``node`` (N,).

        Vectorised descent, k distances per row: level 0 is one ``addmm`` over
        all rows. Below it the rows are copied once, grouped by node, into
        tiles of ``T`` rows (a node's rows fill its own tiles, the last one
        padded), and one ``baddbmm`` scores every tile against its node's k
        children: no Python loop over nodes, no (N, k, D) gather of centroids
        per row, and few, large kernels (small per-node matmuls are slow on a
        busy CPU). ``fit_node(n_id, Xn)``, when given, first fits node
        ``n_id`` on its rows ``Xn`` (a contiguous view), so ``fit`` shares this
        pass. ``workspace``: a list holding a reusable row buffer.
        """
        C, V = self.centroids[level], self.valid[level]  # (k**l, k, D), (k**l, k)
        if level == 0:
            if fit_node is not None:
                fit_node(0, X)
            c_sq = (C[0] * C[0]).sum(1).masked_fill(~V[0], float("inf"))  # (k,)
            best, digit = torch.addmm(c_sq[None, :], X, C[0].T, alpha=-2.0).min(1)  # node 0: child = digit
            if not bool(torch.isfinite(best.sum())):  # a NaN or inf feature (or an overflow): say which row
                _as_float_tensor(X, X.device)
            return digit
        N, D, n_nodes = X.shape[0], X.shape[1], C.shape[0]
        counts = torch.bincount(node, minlength=n_nodes)  # (n_nodes,)
        T = int(min(256, max(16, 2 ** int(math.log2(max(1, N // max(1, int((counts > 0).sum()))))))))
        tiles = (counts + T - 1) // T  # (n_nodes,) tiles per node
        first_tile = torch.cumsum(tiles, 0) - tiles
        order = torch.argsort(node, stable=fit_node is not None)  # rows grouped by node (fit: in row order, for determinism)
        sorted_node = node[order]
        rank = torch.arange(N, device=X.device) - (torch.cumsum(counts, 0) - counts)[sorted_node]
        slot = torch.empty_like(node)
        slot[order] = first_tile[sorted_node] * T + rank  # (N,) row of each point in the tiled buffer
        n_tiles = int(tiles.sum())
        if workspace is None:
            workspace = []
        if not workspace or workspace[0].shape[0] < n_tiles * T or workspace[0].shape[1] != D:
            workspace[:] = [torch.empty(n_tiles * T + n_nodes * 16, D, device=X.device, dtype=X.dtype)]
        buf = workspace[0][: n_tiles * T]
        pad = torch.ones(n_tiles * T, dtype=torch.bool, device=X.device)
        pad[slot] = False
        buf.index_fill_(0, pad.nonzero().flatten(), 0.0)  # padding rows: never read; zeroed so no stale NaN or denormal slows the kernel
        buf.index_copy_(0, slot, X)
        if fit_node is not None:
            for n_id, start, count in zip(torch.nonzero(counts).flatten().tolist(),
                                          (first_tile * T)[counts > 0].tolist(), counts[counts > 0].tolist()):
                fit_node(n_id, buf[start : start + count])
        tile_node = torch.repeat_interleave(torch.arange(n_nodes, device=X.device), tiles)  # (n_tiles,)
        c_sq = (C * C).sum(2).masked_fill(~V, float("inf"))  # (n_nodes, k)
        d = torch.baddbmm(c_sq[tile_node][:, None, :], buf.view(n_tiles, T, D), C[tile_node].transpose(1, 2),
                          alpha=-2.0)  # (n_tiles, T, k)
        return node * self.k + d.argmin(2).view(-1)[slot]

    def _check_predict_input(self, X) -> torch.Tensor:
        self._check_fitted()
        shape = tuple(X.shape) if hasattr(X, "shape") else None
        if shape is not None and len(shape) == 2 and shape[1] != self.dim:
            raise ValueError(
                f"X has dim {shape[1]} but this codebook was fitted on dim {self.dim}; "
                "use features from the same extractor (and the same pooling) as the codebook"
            )
        return _as_float_tensor(X, self.device, check_finite=False)  # descent checks its level-0 distances

    @torch.no_grad()
    def predict(self, X, exact: bool = False) -> torch.Tensor:
        """Leaf ids (N,) int64 in ``[0, k**depth)``: by tree descent, or the nearest leaf centroid with ``exact``."""
        X = self._check_predict_input(X)
        out = torch.empty(X.shape[0], dtype=torch.long, device=self.device)
        if exact:
            _as_float_tensor(X, self.device)  # the finiteness check that descent does on its way
            C, invalid = self.leaf_centroids, ~self.leaf_valid
            for i in range(0, X.shape[0], _CHUNK):
                out[i : i + _CHUNK] = _nearest(X[i : i + _CHUNK], C, invalid)
            return out
        return self._predict_descent(X)

    def _descent_tables(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: padded centroids (k**l, kp, D) and squared norms (k**l, kp), +inf where invalid; cached.

        The cache is keyed on the centroid and mask tensors and their version
        counters, so refitting, loading or editing them in place rebuilds it.
        """
        def version(t: torch.Tensor) -> int | None:
            try:
                return t._version
            except RuntimeError:  # an inference tensor has no version counter: never cached
                return None

        key = [(C, version(C), V, version(V)) for C, V in zip(self.centroids, self.valid)]
        cached = getattr(self, "_descent_cache", None)
        if cached is not None and len(cached[0]) == len(key) and all(
                a[0] is b[0] and a[1] == b[1] is not None and a[2] is b[2] and a[3] == b[3] is not None
                for a, b in zip(cached[0], key)):
            return cached[1], cached[2]
        kp = _padded_width(self.k)
        W, c_sq = [], []
        for C, V in zip(self.centroids, self.valid):
            n = C.shape[0]
            Wl = C.new_zeros(n, kp, C.shape[2])
            Wl[:, : self.k] = C
            cl = C.new_full((n, kp), float("inf"))
            cl[:, : self.k] = (C * C).sum(2).masked_fill(~V, float("inf"))
            W.append(Wl)
            c_sq.append(cl)
        self._descent_cache = (key, W, c_sq)
        return W, c_sq

    def _predict_descent(self, X: torch.Tensor, block: int | None = None, chunk: int | None = None,
                         workers: int | None = None) -> torch.Tensor:
        """Tree-descent leaf ids (N,) of ``X`` (N, D) on ``self.device``, laid out for the caches (module docstring).

        Rows are taken in chunks (CPU: 8k-32k rows, one worker thread each,
        see :func:`_run_in_workers`; GPU: all rows). In a chunk, the top
        ``p = max(1, depth // 2)`` levels score blocks of ``block``
        consecutive rows; the rows are then grouped by their level-``p`` node
        and each block of one node's rows is gathered once and descended
        through the remaining levels. ``block``, ``chunk`` and ``workers``
        override the defaults (tests).
        """
        N, D = X.shape
        k, depth = self.k, self.depth
        out = torch.empty(N, dtype=torch.long, device=X.device)
        if N == 0:
            return out
        W, c_sq = self._descent_tables()
        kp = W[0].shape[1]
        on_cpu = X.device.type == "cpu"
        B = block or (_DESCENT_BLOCK_CPU if on_cpu else _DESCENT_BLOCK_GPU)
        if chunk is None:
            n_threads = torch.get_num_threads() if on_cpu else 1
            chunk = min(max(-(-N // (2 * n_threads)), _DESCENT_CHUNK[0]), _DESCENT_CHUNK[1]) if on_cpu else N
        starts = list(range(0, N, chunk))
        n_workers = _parallel_workers(X.device, len(starts)) if workers is None else max(1, min(workers, len(starts)))
        p = max(1, depth // 2)
        best = torch.empty(N, dtype=X.dtype, device=X.device)  # level-0 minimum distance of every row
        next_chunk = iter(starts)
        lock = threading.Lock()

        def work(_: int) -> None:
            ws = {"xs": X.new_empty(min(B, N), D), "d": X.new_empty(min(B, N), kp), "xb": X.new_empty(min(B, N), D)}
            while True:
                with lock:
                    c0 = next(next_chunk, None)
                if c0 is None:
                    return
                Xc, oc = X[c0 : c0 + chunk], out[c0 : c0 + chunk]
                n = Xc.shape[0]
                node = oc if p == depth else torch.empty(n, dtype=torch.long, device=X.device)
                for i in range(0, n, B):  # levels 0 .. p-1 on consecutive rows
                    e = min(i + B, n)
                    node[i:e] = _descend_block(Xc[i:e], None, 0, range(0, p), W, c_sq, k, ws, best[c0 + i : c0 + e])
                if p == depth:
                    continue
                order = torch.argsort(node, stable=True)  # rows by level-p node, in row order (sequential reads)
                s = 0
                for g, count in enumerate(torch.bincount(node, minlength=k**p).tolist()):
                    for i in range(s, s + count, B):  # levels p .. depth-1 on one node's rows, gathered once
                        idx = order[i : min(i + B, s + count)]
                        xb = torch.index_select(Xc, 0, idx, out=ws["xb"][: idx.shape[0]])
                        oc[idx] = _descend_block(xb, None, g, range(p, depth), W, c_sq, k, ws)
                    s += count

        if n_workers > 1:
            _run_in_workers(n_workers, work)
        else:
            work(0)
        if not bool(torch.isfinite(best.sum())):  # a NaN or inf feature (or an overflow): say which row
            _as_float_tensor(X, X.device)
        return out

    def fit_predict(self, X) -> torch.Tensor:
        return self.fit(X).predict(X)

    @torch.no_grad()
    def path(self, leaf) -> torch.Tensor:
        """(N, depth) child digits of leaf ids, top level first (``leaf = sum digit_l * k**(depth-1-l)``)."""
        leaf = torch.as_tensor(leaf, dtype=torch.long)
        powers = self.k ** torch.arange(self.depth - 1, -1, -1)
        return (leaf[..., None] // powers) % self.k

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``codebook.safetensors`` and ``codebook.json`` into ``directory``; returns it."""
        from safetensors.torch import save_file

        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for level, (C, V) in enumerate(zip(self.centroids, self.valid)):
            tensors[f"level{level}.centroids"] = C.detach().cpu().contiguous()
            tensors[f"level{level}.valid"] = V.detach().cpu().to(torch.uint8).contiguous()
        save_file(tensors, str(directory / "codebook.safetensors"))
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "k": self.k, "depth": self.depth, "dim": self.dim,
                "seed": self.seed, "n_iter": self.n_iter, "tol": self.tol, "max_points_per_node": self.max_points_per_node,
                "refine_leaves": self.refine_leaves, "n_leaves": self.n_leaves,
                "n_valid_leaves": int(self.leaf_valid.sum())}
        (directory / "codebook.json").write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "HierarchicalKMeans":
        """Read a codebook written by :meth:`save`."""
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path, tensor_path = directory / "codebook.json", directory / "codebook.safetensors"
        for p in (meta_path, tensor_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: missing; a codebook folder holds codebook.json and codebook.safetensors (HierarchicalKMeans.save)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
        model = cls(k=meta["k"], depth=meta["depth"], seed=meta["seed"], n_iter=meta["n_iter"], tol=meta["tol"], device=device)
        tensors = load_file(str(tensor_path))
        model.dim = int(meta["dim"])
        for level in range(model.depth):
            C = tensors.get(f"level{level}.centroids")
            if C is None or tuple(C.shape) != (model.k**level, model.k, model.dim):
                raise ValueError(f"{tensor_path}: level{level}.centroids should have shape {(model.k**level, model.k, model.dim)}, "
                                 f"got {None if C is None else tuple(C.shape)}")
            model.centroids.append(C.to(model.device, torch.float32))
            model.valid.append(tensors[f"level{level}.valid"].to(model.device).bool())
        return model

    def __repr__(self) -> str:
        state = f"dim={self.dim}" if self.centroids else "not fitted"
        return f"HierarchicalKMeans(k={self.k}, depth={self.depth}, seed={self.seed}, device={self.device}, {state})"


# --------------------------------------------------------------------------- measuring a codebook


def _labels_array(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def codebook_usage(tokens, n_tokens: int) -> np.ndarray:
    """(n_tokens,) how often each token id occurs. Taught in ``05_visual_and_audio_tokens``."""
    t = _labels_array(tokens).astype(np.int64).ravel()
    if t.size and (t.min() < 0 or t.max() >= n_tokens):
        raise ValueError(f"token ids span [{t.min()}, {t.max()}] but the codebook has ids 0..{n_tokens - 1}")
    return np.bincount(t, minlength=n_tokens)


def perplexity(tokens, n_tokens: int) -> float:
    """exp(entropy) of the token distribution: the effective number of words used (<= n_tokens).

    Taught in ``05_visual_and_audio_tokens``.
    """
    counts = codebook_usage(tokens, n_tokens).astype(np.float64)
    if counts.sum() == 0:
        raise ValueError("perplexity of no tokens is undefined")
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def purity(tokens, labels) -> float:
    """Fraction of items whose label is the majority label of their token. Taught in ``05_visual_and_audio_tokens``."""
    t, y = _labels_array(tokens).ravel(), _labels_array(labels).ravel()
    if t.shape != y.shape or t.size == 0:
        raise ValueError(f"tokens and labels should be equally long and non-empty, got {t.shape} and {y.shape}")
    _, y_idx = np.unique(y, return_inverse=True)
    _, t_idx = np.unique(t, return_inverse=True)
    table = np.zeros((t_idx.max() + 1, y_idx.max() + 1), dtype=np.int64)
    np.add.at(table, (t_idx, y_idx), 1)
    return float(table.max(1).sum() / t.size)


def nmi(tokens, labels) -> float:
    """Normalised mutual information of tokens and labels (scikit-learn's). Taught in ``05_visual_and_audio_tokens``."""
    from sklearn.metrics import normalized_mutual_info_score

    t, y = _labels_array(tokens).ravel(), _labels_array(labels).ravel()
    if t.shape != y.shape or t.size == 0:
        raise ValueError(f"tokens and labels should be equally long and non-empty, got {t.shape} and {y.shape}")
    return float(normalized_mutual_info_score(y, t))


@torch.no_grad()
def nearest_to_centroids(X, centroids, n: int = 8) -> torch.Tensor:
    """(K, n) indices of the ``n`` rows of ``X`` nearest each centroid: cluster exemplars for a browser.

    ``centroids`` (K, D), e.g. ``km.leaf_centroids[ids]``. Taught in ``05_visual_and_audio_tokens``.
    """
    C = _as_float_tensor(centroids, "cpu", "centroids")
    X = _as_float_tensor(X, "cpu")
    if X.shape[1] != C.shape[1]:
        raise ValueError(f"X has dim {X.shape[1]} but the centroids have dim {C.shape[1]}")
    n = min(n, X.shape[0])
    return _sq_distances(C, X).topk(n, dim=1, largest=False).indices


@torch.no_grad()
def quantisation_error(X, centroids, assignment) -> float:
    """Mean squared distance of each row of ``X`` to its assigned centroid. Taught in ``05_visual_and_audio_tokens``."""
    X = _as_float_tensor(X, "cpu")
    C = _as_float_tensor(centroids, "cpu", "centroids")
    a = torch.as_tensor(assignment, dtype=torch.long).cpu()
    total = 0.0
    for i in range(0, X.shape[0], _CHUNK):
        total += float(((X[i : i + _CHUNK] - C[a[i : i + _CHUNK]]) ** 2).sum(dtype=torch.float64))
    return total / X.shape[0]
