"""Hierarchical k-means: the tree, parity with scikit-learn and faiss, streaming, errors, save/load."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from vbert_lab.kmeans import (
    HierarchicalKMeans,
    codebook_usage,
    nearest_to_centroids,
    nmi,
    perplexity,
    purity,
    quantisation_error,
)


def mixture(n: int, dim: int, n_centers: int, seed: int = 0, spread: float = 3.0) -> np.ndarray:
    """Structured features: a mixture of Gaussians (more centres than k, as clip features are)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_centers, dim)) * spread
    return (centers[rng.integers(n_centers, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def X():
    return mixture(3000, 16, 60)


@pytest.fixture(scope="module")
def tree(X):
    return HierarchicalKMeans(k=4, depth=3, seed=0).fit(X)


def test_tree_descent_takes_the_argmin_along_the_path(X, tree):
    leaves = tree.predict(X)
    digits = tree.path(leaves)  # (N, depth)
    assert digits.shape == (len(X), 3)
    Xt = torch.from_numpy(X)
    node = torch.zeros(len(X), dtype=torch.long)
    for level in range(tree.depth):
        C = tree.centroids[level][node]  # (N, k, D)
        d = ((Xt[:, None, :] - C) ** 2).sum(-1)  # (N, k)
        d[~tree.valid[level][node]] = float("inf")
        torch.testing.assert_close(digits[:, level], d.argmin(1))
        node = node * tree.k + digits[:, level]
    assert torch.equal(node, leaves)


def test_exact_assignment_is_the_nearest_leaf_and_never_worse(X, tree):
    exact = tree.predict(X, exact=True)
    C = tree.leaf_centroids
    d = torch.cdist(torch.from_numpy(X), C) ** 2
    d[:, ~tree.leaf_valid] = float("inf")
    assert (exact == d.argmin(1)).float().mean() > 0.999  # ties aside
    e_tree = quantisation_error(X, C, tree.predict(X))
    e_exact = quantisation_error(X, C, exact)
    assert e_exact <= e_tree + 1e-6
    assert e_tree < 1.2 * e_exact  # descent loses little on structured data


def test_depth_one_is_flat_kmeans_within_two_percent_of_sklearn():
    from sklearn.cluster import KMeans

    X = mixture(4000, 24, 40, seed=1)
    for seed in range(3):
        ours = HierarchicalKMeans(k=12, depth=1, seed=seed).fit(X)
        ours_inertia = quantisation_error(X, ours.leaf_centroids, ours.predict(X)) * len(X)
        theirs = KMeans(12, n_init=1, random_state=seed).fit(X).inertia_
        # the same algorithm (greedy k-means++ then Lloyd); compare the best of the seeds too below
        assert ours.leaf_centroids.shape == (12, 24)
        if seed == 0:
            best_ours, best_theirs = ours_inertia, theirs
        best_ours, best_theirs = min(best_ours, ours_inertia), min(best_theirs, theirs)
    assert best_ours <= 1.02 * best_theirs, (best_ours, best_theirs)


def test_k12_depth2_within_1_3x_of_faiss_flat_144():
    faiss = pytest.importorskip("faiss", reason="faiss-cpu (the bench extra) is not installed: pip install -e '.[bench]'")
    X = mixture(12000, 32, 300, seed=2)
    ours = HierarchicalKMeans(k=12, depth=2, seed=0).fit(X)
    ours_error = quantisation_error(X, ours.leaf_centroids, ours.predict(X))
    flat = faiss.Kmeans(32, 144, niter=25, seed=0, verbose=False)
    flat.train(X)
    faiss_error = float(flat.index.search(X, 1)[0].mean())
    assert ours_error <= 1.3 * faiss_error, (ours_error, faiss_error)


def test_deterministic_for_a_seed_and_different_across_seeds(X):
    a = HierarchicalKMeans(k=4, depth=2, seed=3).fit(X)
    b = HierarchicalKMeans(k=4, depth=2, seed=3).fit(X)
    c = HierarchicalKMeans(k=4, depth=2, seed=4).fit(X)
    assert torch.equal(a.leaf_centroids, b.leaf_centroids)
    assert not torch.equal(a.leaf_centroids, c.leaf_centroids)


def test_leaf_centroids_match_the_feature_dimension_and_leaf_count(tree):
    assert tree.leaf_centroids.shape == (4**3, 16)
    assert tree.n_leaves == 64
    assert tree.predict(np.zeros((2, 16), np.float32)).max() < 64


def test_nodes_with_fewer_distinct_points_than_k_get_stable_ids():
    # 3 tight groups of 10 identical points each, one group of 1 point: the
    # level-1 node of the singleton can only have one valid child (slot 0).
    rng = np.random.default_rng(0)
    groups = [np.full((10, 4), v, np.float32) for v in (0.0, 10.0, 20.0)] + [np.full((1, 4), 30.0, np.float32)]
    X = np.concatenate(groups) + rng.normal(scale=1e-3, size=(31, 4)).astype(np.float32)
    X[30] = 30.0  # the singleton, exact
    km = HierarchicalKMeans(k=4, depth=2, seed=0).fit(X)
    leaves = km.predict(X)
    singleton_leaf = int(leaves[30])
    assert singleton_leaf % 4 == 0  # the only child of its node sits in slot 0
    node = singleton_leaf // 4
    assert km.valid[1][node].tolist() == [True, False, False, False]
    assert bool(km.leaf_valid[singleton_leaf]) and not bool(km.leaf_valid[singleton_leaf + 1])
    # an unreachable leaf repeats its parent's centroid
    torch.testing.assert_close(km.leaf_centroids[singleton_leaf + 1], km.centroids[0][0, node])
    assert set(leaves.tolist()) <= set(km.leaf_valid.nonzero().flatten().tolist())
    assert bool(km.leaf_valid[km.predict(X, exact=True)].all())  # exact search skips unreachable leaves too


def test_empty_cluster_is_reseeded():
    # duplicated points make k-means++ and Lloyd meet empty clusters; every centroid must stay used
    X = np.repeat(mixture(40, 3, 8, seed=5), 50, axis=0)
    km = HierarchicalKMeans(k=8, depth=1, seed=0).fit(X)
    counts = codebook_usage(km.predict(X), 8)
    assert (counts > 0).all(), counts


def test_streaming_fit_over_chunks_is_close_to_in_memory(X):
    memory = HierarchicalKMeans(k=4, depth=2, seed=0).fit(X)
    stream = HierarchicalKMeans(k=4, depth=2, seed=0, sample_per_node=200, stream_passes=3)
    stream.fit_chunks(lambda: (X[i : i + 500] for i in range(0, len(X), 500)))
    e_mem = quantisation_error(X, memory.leaf_centroids, memory.predict(X))
    e_stream = quantisation_error(X, stream.leaf_centroids, stream.predict(X))
    assert e_stream < 1.15 * e_mem, (e_stream, e_mem)


def test_fit_with_batch_size_streams_a_memmap(tmp_path, X):
    path = tmp_path / "features.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    km = HierarchicalKMeans(k=4, depth=2, seed=0, batch_size=700, sample_per_node=300).fit(mm)
    ref = HierarchicalKMeans(k=4, depth=2, seed=0, sample_per_node=300).fit_chunks([X[i : i + 700] for i in range(0, len(X), 700)])
    assert torch.equal(km.leaf_centroids, ref.leaf_centroids)


def test_one_shot_iterator_and_one_row_chunks():
    X = mixture(200, 4, 6)
    with pytest.raises(ValueError, match="fresh iterator"):
        HierarchicalKMeans(k=3, depth=1).fit_chunks(iter([X]))
    km = HierarchicalKMeans(k=3, depth=1, sample_per_node=50).fit_chunks([X[i : i + 1] for i in range(len(X))])
    assert km.leaf_centroids.shape == (3, 4)


def test_save_and_load_round_trip(tmp_path, X, tree):
    tree.save(tmp_path / "codebook")
    assert (tmp_path / "codebook" / "codebook.safetensors").is_file()
    back = HierarchicalKMeans.load(tmp_path / "codebook")
    assert torch.equal(back.leaf_centroids, tree.leaf_centroids)
    assert torch.equal(back.predict(X), tree.predict(X))
    with pytest.raises(FileNotFoundError, match="codebook.json"):
        HierarchicalKMeans.load(tmp_path / "nowhere")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_a_clear_error(bad):
    X = mixture(100, 4, 3)
    X[17, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf.*row 17"):
        HierarchicalKMeans(k=2, depth=1).fit(X)


def test_bad_sizes_are_clear_errors(tree):
    with pytest.raises(ValueError, match="k >= 2"):
        HierarchicalKMeans(k=1, depth=2)
    with pytest.raises(ValueError, match="depth >= 1"):
        HierarchicalKMeans(k=4, depth=0)
    with pytest.raises(ValueError, match="more leaves than points.*64 leaves but only 50"):
        HierarchicalKMeans(k=4, depth=3).fit(mixture(50, 4, 3))
    with pytest.raises(ValueError, match="dim 8 but this codebook was fitted on dim 16"):
        tree.predict(np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="2-d"):
        tree.predict(np.zeros(16, np.float32))
    with pytest.raises(RuntimeError, match="not fitted"):
        HierarchicalKMeans(k=2, depth=1).predict(np.zeros((1, 2)))


def test_metrics_helpers():
    tokens = np.array([0, 0, 1, 1, 2, 2])
    assert purity(tokens, ["a", "a", "b", "b", "a", "b"]) == pytest.approx(5 / 6)
    assert nmi(tokens, tokens) == pytest.approx(1.0)
    assert nmi([0, 0, 0, 0], [0, 1, 0, 1]) == pytest.approx(0.0)
    assert perplexity([0, 1, 2, 3], 10) == pytest.approx(4.0)
    assert perplexity([5, 5, 5], 10) == pytest.approx(1.0)
    assert codebook_usage([1, 1, 3], 5).tolist() == [0, 2, 0, 1, 0]
    with pytest.raises(ValueError, match="codebook has ids 0..4"):
        codebook_usage([7], 5)
    X = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]], np.float32)
    near = nearest_to_centroids(X, np.array([[9.0, 0.0], [0.2, 0.0]], np.float32), n=2)
    assert near.tolist() == [[2, 1], [0, 1]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_matches_cpu_assignment(X, tree):
    gpu = HierarchicalKMeans(k=4, depth=3, seed=0, device="cuda").fit(X)
    assert gpu.leaf_centroids.device.type == "cuda"
    agree = (gpu.predict(X).cpu() == tree.predict(X)).float().mean()
    assert agree > 0.95


def test_descent_matches_a_brute_force_reference_on_a_deeper_uneven_tree():
    # an independent per-row reference (k distances per level, no grouping) against the vectorised tiled descent,
    # on a tree whose nodes get very different numbers of points (some tiles padded, some nodes tiny)
    X = np.concatenate([mixture(2500, 8, 30, seed=7), mixture(60, 8, 3, seed=8) * 5])
    km = HierarchicalKMeans(k=3, depth=4, seed=1).fit(X)
    Xt = torch.from_numpy(X)
    node = torch.zeros(len(X), dtype=torch.long)
    for level in range(km.depth):
        C = km.centroids[level][node]  # (N, k, D)
        d = ((Xt[:, None, :] - C) ** 2).sum(-1).masked_fill(~km.valid[level][node], float("inf"))  # (N, k)
        node = node * km.k + d.argmin(1)
    assert (km.predict(X) == node).float().mean() > 0.999  # float ties aside


def test_leaf_refinement_lowers_the_error_and_leaves_are_the_means_of_their_points():
    X = mixture(6000, 16, 80, seed=3)
    kwargs = dict(k=6, depth=2, seed=0, n_iter=2, max_points_per_node=60)
    raw = HierarchicalKMeans(refine_leaves=False, **kwargs).fit(X)
    refined = HierarchicalKMeans(refine_leaves=True, **kwargs).fit(X)
    e_raw = quantisation_error(X, raw.leaf_centroids, raw.predict(X))
    e_refined = quantisation_error(X, refined.leaf_centroids, refined.predict(X))
    assert e_refined < e_raw, (e_refined, e_raw)
    # refinement only moves leaves: the upper levels are the same tree
    torch.testing.assert_close(refined.centroids[0], raw.centroids[0])
    # each reached leaf is the mean of the points the unrefined descent sent there
    leaves = raw.predict(X)
    for leaf in leaves.unique()[:10].tolist():
        mean = torch.from_numpy(X)[leaves == leaf].mean(0)
        torch.testing.assert_close(refined.leaf_centroids[leaf], mean, rtol=1e-4, atol=1e-4)


def test_max_points_per_node_subsamples_deterministically_and_stays_close():
    X = mixture(6000, 16, 80, seed=4)
    full = HierarchicalKMeans(k=4, depth=2, seed=0).fit(X)
    a = HierarchicalKMeans(k=4, depth=2, seed=0, max_points_per_node=400).fit(X)
    b = HierarchicalKMeans(k=4, depth=2, seed=0, max_points_per_node=400).fit(X)
    assert torch.equal(a.leaf_centroids, b.leaf_centroids)
    e_full = quantisation_error(X, full.leaf_centroids, full.predict(X))
    e_sub = quantisation_error(X, a.leaf_centroids, a.predict(X))
    assert e_sub < 1.15 * e_full, (e_sub, e_full)
    with pytest.raises(ValueError, match="max_points_per_node=2 must be at least k=4"):
        HierarchicalKMeans(k=4, depth=2, max_points_per_node=2)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_at_predict_are_a_clear_error(tree, bad):
    X = mixture(50, 16, 3)
    X[33, 5] = bad
    for exact in (False, True):
        with pytest.raises(ValueError, match="NaN or inf.*row 33"):
            tree.predict(X, exact=exact)


# --------------------------------------------------------------------------- the blocked descent of predict


def _reference_tiled_level(km, X, node, level):
    """The tiled descent ``predict`` used before the cache-blocked one (kept verbatim as the reference).

    Rows copied once per level, grouped by node into tiles of T rows, one
    ``baddbmm`` of every tile against its node's k children.
    """
    C, V = km.centroids[level], km.valid[level]
    if level == 0:
        c_sq = (C[0] * C[0]).sum(1).masked_fill(~V[0], float("inf"))
        return torch.addmm(c_sq[None, :], X, C[0].T, alpha=-2.0).min(1)[1]
    N, D, n_nodes = X.shape[0], X.shape[1], C.shape[0]
    counts = torch.bincount(node, minlength=n_nodes)
    T = int(min(256, max(16, 2 ** int(math.log2(max(1, N // max(1, int((counts > 0).sum()))))))))
    tiles = (counts + T - 1) // T
    first_tile = torch.cumsum(tiles, 0) - tiles
    order = torch.argsort(node)
    sorted_node = node[order]
    rank = torch.arange(N) - (torch.cumsum(counts, 0) - counts)[sorted_node]
    slot = torch.empty_like(node)
    slot[order] = first_tile[sorted_node] * T + rank
    n_tiles = int(tiles.sum())
    buf = torch.zeros(n_tiles * T, D)
    buf.index_copy_(0, slot, X)
    tile_node = torch.repeat_interleave(torch.arange(n_nodes), tiles)
    c_sq = (C * C).sum(2).masked_fill(~V, float("inf"))
    d = torch.baddbmm(c_sq[tile_node][:, None, :], buf.view(n_tiles, T, D), C[tile_node].transpose(1, 2), alpha=-2.0)
    return node * km.k + d.argmin(2).view(-1)[slot]


def reference_tiled_predict(km, X):
    X = torch.as_tensor(X, dtype=torch.float32)
    out = torch.empty(X.shape[0], dtype=torch.long)
    for i in range(0, X.shape[0], 65536):
        node = torch.zeros(min(65536, X.shape[0] - i), dtype=torch.long)
        for level in range(km.depth):
            node = _reference_tiled_level(km, X[i : i + 65536], node, level)
        out[i : i + 65536] = node
    return out


def brute_force_path(km, X):
    """The argmin along the path in float64, one row at a time in spirit: (N, k, D) centroids per level."""
    X = torch.as_tensor(X, dtype=torch.float64)
    node = torch.zeros(X.shape[0], dtype=torch.long)
    for level in range(km.depth):
        C = km.centroids[level].double()[node]  # (N, k, D)
        d = ((X[:, None, :] - C) ** 2).sum(-1).masked_fill(~km.valid[level][node], float("inf"))
        node = node * km.k + d.argmin(1)
    return node


def assert_same_leaves_up_to_float_ties(km, X, got, want, rtol=1e-5, max_ties=0.002):
    """``got == want``, except rows whose paths first part at a near-tie: two valid siblings at equal float64 distance."""
    X = torch.as_tensor(X, dtype=torch.float64)
    assert got.shape == want.shape and got.dtype == torch.long
    assert bool(km.leaf_valid[got].all())
    bad = (got != want).nonzero().flatten()
    if bad.numel() == 0:
        return
    x, pg, pw = X[bad], km.path(got[bad]), km.path(want[bad])
    level = (pg != pw).int().argmax(1)  # first differing level
    parent = torch.zeros(bad.numel(), dtype=torch.long)
    for lv in range(km.depth):
        here = level == lv
        idx = here.nonzero().flatten()
        for dig in (pg, pw):
            assert bool(km.valid[lv][parent[idx], dig[idx, lv]].all())
        cg = km.centroids[lv].double()[parent[idx], pg[idx, lv]]
        cw = km.centroids[lv].double()[parent[idx], pw[idx, lv]]
        dg, dw = ((x[idx] - cg) ** 2).sum(1), ((x[idx] - cw) ** 2).sum(1)
        scale = (x[idx] ** 2).sum(1) + (cg**2).sum(1) + (cw**2).sum(1)
        assert bool(((dg - dw).abs() <= rtol * scale).all()), f"rows {bad[idx].tolist()} differ at level {lv}, not a near-tie"
        parent = torch.where(here, parent, parent * km.k + pg[:, lv])
    assert bad.numel() <= max(3, max_ties * len(got)), f"{bad.numel()} rows at near-ties: too many"


def _uneven_tree():
    X = np.concatenate([mixture(2500, 8, 30, seed=7), mixture(60, 8, 3, seed=8) * 5])
    return HierarchicalKMeans(k=3, depth=4, seed=1).fit(X), X


def _few_points_tree():
    rng = np.random.default_rng(0)
    groups = [np.full((10, 4), v, np.float32) for v in (0.0, 10.0, 20.0)] + [np.full((1, 4), 30.0, np.float32)]
    X = np.concatenate(groups) + rng.normal(scale=1e-3, size=(31, 4)).astype(np.float32)
    km = HierarchicalKMeans(k=4, depth=2, seed=0).fit(X)
    probe = np.concatenate([X, rng.normal(scale=15.0, size=(400, 4)).astype(np.float32)])
    return km, probe


def _k12_random_tree():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(6000, 48)).astype(np.float32)  # unstructured: many close calls
    return HierarchicalKMeans(k=12, depth=3, seed=0, n_iter=5, max_points_per_node=300).fit(X), X


def _binary_deep_tree():
    X = mixture(3000, 12, 40, seed=9)
    return HierarchicalKMeans(k=2, depth=6, seed=0).fit(X), X


def _edited_tree():
    """A fitted tree with children masked out by hand (as fit marks nodes with few points) and exact duplicate centroids."""
    X = mixture(3000, 16, 60, seed=12)
    km = HierarchicalKMeans(k=12, depth=2, seed=0, n_iter=5).fit(X)
    km.valid[1][0, 3:] = False  # node 0 keeps 3 children
    km.valid[1][1, 1:] = False  # node 1 keeps one child
    km.centroids[1][2, 7] = km.centroids[1][2, 2]  # node 2: children 2 and 7 tie exactly; the first wins
    km.centroids[0][0, 5] = km.centroids[0][0, 4]  # the root: children 4 and 5 tie exactly
    return km, X


TREES = {"structured k4 d3": lambda: (HierarchicalKMeans(k=4, depth=3, seed=0).fit(mixture(3000, 16, 60)), mixture(3000, 16, 60)),
         "uneven k3 d4": _uneven_tree, "few points k4 d2": _few_points_tree, "random k12 d3": _k12_random_tree,
         "binary d6": _binary_deep_tree, "masked and tied k12 d2": _edited_tree}


@pytest.mark.parametrize("name", list(TREES))
def test_blocked_descent_matches_the_old_tiled_descent_and_the_path_argmin(name):
    km, X = TREES[name]()
    ref = reference_tiled_predict(km, X)
    brute = brute_force_path(km, X)
    # float32 against float64: tight duplicate groups (the few-points tree) make real near-ties
    assert_same_leaves_up_to_float_ties(km, X, ref, brute, max_ties=0.05)  # the reference is the path argmin
    Xt = torch.from_numpy(X)
    variants = {"predict": km.predict(X),
                "tiny blocks, 3 workers": km._predict_descent(Xt, block=37, chunk=500, workers=3),
                "one block": km._predict_descent(Xt, block=len(X), chunk=len(X), workers=1),
                "2 workers": km._predict_descent(Xt, block=256, chunk=700, workers=2)}
    for label, got in variants.items():
        assert_same_leaves_up_to_float_ties(km, X, got, ref)  # (measured: no row differs on any of these trees)
        assert_same_leaves_up_to_float_ties(km, X, got, brute, max_ties=0.05)
        assert torch.equal(got, variants["predict"]), label  # the blocking does not change the ids
    if name.startswith("masked"):
        leaves = variants["predict"]
        assert not bool(((leaves // 12) == 5).any())  # a root child that ties an earlier one is never chosen
        assert not bool((leaves == 2 * 12 + 7).any())
        assert bool((leaves == 2 * 12 + 2).any())
        assert set((leaves[leaves // 12 == 1] % 12).tolist()) <= {0}
        assert set((leaves[leaves // 12 == 0] % 12).tolist()) <= {0, 1, 2}


def test_blocked_descent_keeps_the_thread_count_and_reports_bad_rows_from_workers(tree, X):
    n = torch.get_num_threads()
    Xt = torch.from_numpy(X).clone()
    got = tree._predict_descent(Xt, block=64, chunk=300, workers=2)
    assert torch.equal(got, tree.predict(X))
    assert torch.get_num_threads() == n
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [n]  # a thread started later gets the caller's count, not the workers' 1
    Xt[2345, 3] = float("nan")  # a later chunk, scored by a worker
    with pytest.raises(ValueError, match="NaN or inf.*row 2345"):
        tree._predict_descent(Xt, block=64, chunk=300, workers=2)
    assert tree._predict_descent(Xt[:0], workers=2).shape == (0,)


def test_descent_tables_follow_in_place_edits(X):
    km = HierarchicalKMeans(k=4, depth=2, seed=0).fit(X)
    before = km.predict(X)
    km.centroids[1].view(-1, km.dim)[before[0]] += 50.0  # move the first row's leaf far away
    after = km.predict(X)
    assert int(after[0]) != int(before[0])
    assert_same_leaves_up_to_float_ties(km, X, after, reference_tiled_predict(km, X))
    km.valid[1][before[0] // 4, before[0] % 4] = False
    assert bool(km.leaf_valid[km.predict(X)].all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_descent_matches_the_cpu_descent(tmp_path, X, tree):
    tree.save(tmp_path / "cb")
    gpu = HierarchicalKMeans.load(tmp_path / "cb", device="cuda")
    got = gpu.predict(X)
    assert got.device.type == "cuda"
    assert_same_leaves_up_to_float_ties(tree, X, got.cpu(), tree.predict(X))
    exact = gpu.predict(X, exact=True).cpu()
    assert (exact == tree.predict(X, exact=True)).float().mean() > 0.999
