"""Hierarchical k-means: the tree, parity with scikit-learn and faiss, streaming, errors, save/load."""

from __future__ import annotations

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
