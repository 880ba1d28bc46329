"""Chunked kNN: exact agreement with brute force and prdc, chunking invariance, bounded block size."""

import numpy as np
import pytest
import torch
from prdc.prdc import compute_nearest_neighbour_distances

from cxrbench.metrics import knn


@pytest.fixture
def pts():
    rng = np.random.default_rng(0)
    return rng.normal(size=(130, 7)).astype(np.float32), rng.normal(size=(97, 7)).astype(np.float32) + 0.3


def brute(q, r):
    return np.sqrt(((q[:, None, :].astype(np.float64) - r[None, :, :]) ** 2).sum(-1))


def test_knn_matches_brute_force(pts):
    q, r = pts
    d = brute(q, r)
    v, i = knn.knn(q, r, 4)
    np.testing.assert_array_equal(i, np.argsort(d, 1)[:, :4])
    np.testing.assert_allclose(v, np.sort(d, 1)[:, :4], rtol=1e-6)


def test_knn_scaled_matches_brute_force(pts):
    q, r = pts
    scale = np.random.default_rng(1).uniform(0.5, 2.0, len(r))
    v, i = knn.knn(q, r, 3, scale=scale)
    ratio = brute(q, r) / scale
    np.testing.assert_array_equal(i, np.argsort(ratio, 1)[:, :3])
    np.testing.assert_allclose(v, np.sort(ratio, 1)[:, :3], rtol=1e-6)


def test_kth_radii_match_prdc(pts):
    x = pts[0]
    np.testing.assert_allclose(knn.kth_radii(x, 5), compute_nearest_neighbour_distances(x, 5), rtol=1e-5)


def test_ball_counts_match_brute_force(pts):
    q, r = pts
    radii = np.random.default_rng(2).uniform(1.0, 3.0, len(r))
    expected = (brute(q, r) <= radii[None, :]).sum(1)
    np.testing.assert_array_equal(knn.ball_counts(q, r, radii, dtype=torch.float64), expected)


def test_exact_copy_is_at_distance_zero():
    rng = np.random.default_rng(3)
    r = (rng.normal(size=(50, 64)) * 100 + 1000).astype(np.float32)  # large norms: cancellation-prone
    d, i = knn.nearest(r[[7, 21]], r)
    np.testing.assert_array_equal(d, [0.0, 0.0])
    np.testing.assert_array_equal(i, [7, 21])


def test_chunking_bounds_every_block_and_changes_nothing(pts, monkeypatch):
    q, r = pts
    shapes = []
    real = knn._sq_dists

    def spy(a, b, a_sq, b_sq):
        shapes.append((a.shape[0], b.shape[0]))
        return real(a, b, a_sq, b_sq)

    big_v, big_i = knn.knn(q, r, 5)
    big_c = knn.ball_counts(q, r, np.full(len(r), 2.0))
    monkeypatch.setattr(knn, "_sq_dists", spy)
    budget = 300
    v, i = knn.knn(q, r, 5, budget=budget)
    c = knn.ball_counts(q, r, np.full(len(r), 2.0), budget=budget)
    assert len(shapes) > 10  # really chunked
    assert max(a * b for a, b in shapes) <= budget
    np.testing.assert_array_equal(i, big_i)
    np.testing.assert_allclose(v, big_v)
    np.testing.assert_array_equal(c, big_c)


def test_block_sizes_for_50k_stay_within_budget():
    q, r = knn.block_sizes(50_000, 50_000)
    assert q * r <= knn.DEFAULT_BUDGET  # 64 MB of float32 per block, never 50k x 50k
    for nq, nr, k in [(10, 10**6, 5), (10**6, 10, 5), (3, 3, 3)]:
        q, r = knn.block_sizes(nq, nr, budget=1000, min_ref=k)
        assert q * r <= 1000 and k <= r <= nr and 1 <= q <= nq


def test_one_pass_serves_every_query_of_a_pair():
    """knn_multi (PRDC's fused passes) returns exactly what separate knn and ball_counts calls return, over
    several blocks in both directions."""
    from cxrbench.metrics import knn as K

    rng = np.random.default_rng(11)
    a, b = rng.normal(size=(230, 6)), rng.normal(size=(170, 6)) + 0.2
    scale, radii = rng.uniform(0.5, 2.0, 170), rng.uniform(0.5, 1.5, 170)
    for budget in (2**9, 2**24):
        kw = dict(budget=budget)
        (scaled, plain), counts = K.knn_multi(a, b, 7, scales=(scale, None), radii=radii, **kw)
        for got, want in ((scaled, K.knn(a, b, 7, scale=scale, **kw)), (plain, K.knn(a, b, 7, **kw))):
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(counts, K.ball_counts(a, b, radii, **kw))
        assert counts.sum() > 0 and (counts < len(b)).all()
