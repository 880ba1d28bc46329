"""KID: agreement with torchmetrics on the same features, identities, and the reweighting bootstrap."""

import numpy as np
import pytest
import torch
from torchmetrics.image.kid import KernelInceptionDistance

from cxrbench.engine.metric_runner import run_metric
from cxrbench.metrics.kid import KID, kid_subsets, mmd2_unbiased

from ..metric_helpers import context, feature_set


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    return rng.normal(size=(120, 24)).astype(np.float32), (rng.normal(size=(120, 24)) * 1.3 + 0.2).astype(np.float32)


def torchmetrics_kid(a, b, subset_size, subsets, seed=0):
    torch.manual_seed(seed)
    with pytest.warns(UserWarning):  # torchmetrics warns that it buffers features
        m = KernelInceptionDistance(feature=torch.nn.Identity(), subset_size=subset_size, subsets=subsets)
    m.update(torch.as_tensor(a, dtype=torch.float64), real=True)
    m.update(torch.as_tensor(b, dtype=torch.float64), real=False)
    mean, std = m.compute()
    return float(mean), float(std)


def test_whole_set_agrees_with_torchmetrics(feats):
    a, b = feats
    expected, _ = torchmetrics_kid(a, b, subset_size=len(a), subsets=1)
    assert mmd2_unbiased(torch.as_tensor(b), torch.as_tensor(a)) == pytest.approx(expected, rel=1e-9)
    res = kid_subsets(b, a, subset_size=len(a), n_subsets=3)
    assert res.mean == pytest.approx(expected, rel=1e-9) and res.std == pytest.approx(0.0, abs=1e-12)


def test_subset_average_agrees_with_torchmetrics(feats):
    a, b = feats
    ours = kid_subsets(b, a, subset_size=40, n_subsets=200, seed=1)
    theirs, std = torchmetrics_kid(a, b, subset_size=40, subsets=200)
    # two independent averages of 200 subset estimates of the same expectation
    assert abs(ours.mean - theirs) < 4 * np.hypot(ours.std, std) / np.sqrt(200)
    assert ours.std == pytest.approx(std, rel=0.3)


def test_identical_distribution_gives_about_zero(feats):
    a, b = feats
    same = kid_subsets(a[:60], a[60:], subset_size=60, n_subsets=20)
    diff = kid_subsets(b, a, subset_size=60, n_subsets=20)
    assert abs(same.mean) < 0.1 * diff.mean


def test_reweighting_is_the_distinct_pair_u_statistic_of_the_resampled_multiset(feats):
    a, b = feats
    res = kid_subsets(b, a, subset_size=len(a), n_subsets=1, keep=1, route="subsets")
    assert res.reweighted(np.ones(len(b))) == pytest.approx(res.mean, rel=1e-6)
    counts = np.random.default_rng(2).multinomial(len(b), np.full(len(b), 1 / len(b)))
    sub = res.kept[0]
    rows = np.repeat(sub.gen_idx, counts[sub.gen_idx])
    x = torch.as_tensor(b, dtype=torch.float64)[torch.as_tensor(rows)]
    y = torch.as_tensor(a, dtype=torch.float64)

    def k(p, q):
        return (p @ q.T / p.shape[1] + 1) ** 3

    m = len(y)
    kxx, kyy = k(x, x), k(y, y)
    distinct = torch.as_tensor(rows[:, None] != rows[None, :])  # copies of one row are not a pair
    direct = (kxx[distinct].mean() + (kyy.sum() - kyy.trace()) / (m * (m - 1))
              - 2 * k(x, y).mean())
    assert res.reweighted(counts) == pytest.approx(float(direct), rel=1e-5)


@pytest.mark.parametrize("subset_size", [50, 120])
def test_whole_kernel_route_equals_the_subset_route(feats, subset_size):
    """Reading every subset's sums off the N x N kernels gives the per-subset blocks' values, and reweights alike."""
    a, b = feats
    whole = kid_subsets(b[:100], a, subset_size=subset_size, n_subsets=7, seed=3, keep=7, route="whole", blocks="no")
    subsets = kid_subsets(b[:100], a, subset_size=subset_size, n_subsets=7, seed=3, keep=7, route="subsets")
    np.testing.assert_allclose(whole.values, subsets.values, rtol=1e-10, atol=1e-12)
    assert whole.reweighted(np.ones(100)) == pytest.approx(whole.mean, rel=1e-10)
    counts = np.random.default_rng(5).multinomial(100, np.full(100, 0.01))
    assert whole.reweighted(counts) == pytest.approx(subsets.reweighted(counts), rel=1e-5)  # float32 blocks there


def test_block_bootstrap_equals_whole_kernel_reweighting(feats):
    """The per-subset blocks (a replicate costs k m^2, not k N^2) give the whole kernels' replicates, for
    both sets resampled, up to the float32 blocks' round-off; and hold k m^2, not N^2, kernel entries."""
    a, b = feats
    kw = dict(subset_size=30, n_subsets=9, seed=4, keep=9, route="whole")
    old, new = kid_subsets(b[:100], a, blocks="no", **kw), kid_subsets(b[:100], a, blocks="yes", **kw)
    assert type(new.whole).__name__ == "_SubsetBlocks" and new.whole.b_gg.shape == (9, 30, 30)
    assert kid_subsets(b[:100], a, **kw).whole.b_gg.shape == (9, 30, 30)  # auto: sets above m rows
    rng = np.random.default_rng(6)
    for _ in range(5):
        cg = np.bincount(rng.integers(0, 100, 100), minlength=100)
        cr = np.bincount(rng.integers(0, len(a), len(a)), minlength=len(a))
        assert new.reweighted(cg, cr) == pytest.approx(old.reweighted(cg, cr), rel=1e-5, abs=1e-9)
        assert new.reweighted(cg) == pytest.approx(old.reweighted(cg), rel=1e-5, abs=1e-9)
    # replicates in batches (what the bootstrap uses): the same values as one at a time, in the same order
    from cxrbench.metrics.bootstrap import two_sample_bootstrap

    def one(ig, ir):
        return new.reweighted(np.bincount(ig, minlength=100), np.bincount(ir, minlength=len(a)))

    def batched(ig, ir):
        return one(ig, ir)

    batched.many = lambda igs, irs: new.reweighted_many([np.bincount(i, minlength=100) for i in igs],
                                                        [np.bincount(i, minlength=len(a)) for i in irs])
    ivs = [two_sample_bootstrap(f, 100, len(a), new.mean, n_boot=60, seed=2, method="percentile")
           for f in (one, batched)]
    assert ivs[1].ci == pytest.approx(ivs[0].ci, rel=1e-5) and ivs[1].bias == pytest.approx(ivs[0].bias, rel=1e-4)


def test_metric_value_std_ci_and_floor(feats):
    a, b = feats
    ctx = context(feature_set("samples", {"e": b}), feature_set("reference", {"e": a}), kid_subset_size=50,
                  kid_subsets=20)
    v = run_metric(KID(), ctx)["kid_e"]
    assert v.extra["std"] > 0 and v.extra["subset_size"] == 50
    assert v.ci[0] <= v.value <= v.ci[1]
    assert abs(v.real_vs_real) < v.value


def test_batched_replicates_on_kept_subsets_equal_one_at_a_time(feats):
    """The subset route (reference fixed) reweights its kept blocks for a batch of replicates at once: the
    values of one-at-a-time reweighting, including a replicate that leaves a subset under two rows (NaN)."""
    a, b = feats
    res = kid_subsets(b, a, subset_size=25, n_subsets=6, seed=8, keep=6, route="subsets")
    rng = np.random.default_rng(9)
    counts = [np.bincount(rng.integers(0, len(b), len(b)), minlength=len(b)) for _ in range(7)]
    sparse = np.zeros(len(b), dtype=np.int64)
    sparse[res.kept[0].gen_idx[0]] = 3  # one row of subset 0 drawn, nothing else of it
    sparse[res.kept[1].gen_idx] = 1
    counts.append(sparse)
    many = res.reweighted_many(counts)
    one = np.array([res.reweighted(c) for c in counts])
    np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-9)
    assert np.isfinite(many).all()  # the NaN subsets are left out of the mean, as one at a time
