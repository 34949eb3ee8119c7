"""Linear probe, k-NN and low-shot sampling against known answers (seer.evaluation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import seer.evaluation.probe as probe_module
from seer.evaluation.knn import knn_predict
from seer.evaluation.lowshot import LabelFractionError, per_class_counts, sample_per_class
from seer.evaluation.probe import (
    RowSpace,
    Standardizer,
    accuracy,
    cross_validate,
    fit_softmax_regression,
    stratified_folds,
    train_linear_probe,
)
from seer.evaluation.protocol import LabelSubsets, Protocol, evaluate_features

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def clusters(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int):
    """Gaussian blobs around random unit centres scaled by 10: separable when spread << 10."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=g), dim=1) * 10
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return features, labels


# ----------------------------------------------------------------------------- probe


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
@pytest.mark.parametrize(("n", "d"), [(60, 8), (20, 50), (7, 3), (120, 80)])
def test_probe_is_scikit_learns_logistic_regression(
    n: int, d: int, solver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same objective as LogisticRegression(C = 1 / (wd n)), so the same probabilities, with either
    solver; (20, 50) has fewer rows than columns (row-space reduction through the n x n Gram
    matrix). The minimizer is unique, so our objective may not end above scikit-learn's; on the
    largest problem it ends below (scikit-learn stops first), hence the looser agreement there."""
    from sklearn.linear_model import LogisticRegression

    monkeypatch.setattr(probe_module, "NEWTON_MAX_PARAMS", 10**9 if solver == "newton" else 0)
    g = torch.Generator().manual_seed(n * d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 3.0  # off-centre: the bias matters
    y = torch.arange(n) % 3
    wd = 0.1
    probe = fit_softmax_regression(x, y, 3, wd, max_iter=1000, tolerance=1e-10)
    sk = LogisticRegression(C=1.0 / (wd * n), tol=1e-12, max_iter=10_000).fit(x.numpy(), y.numpy())

    def objective(weight: torch.Tensor, bias: torch.Tensor) -> float:
        return float(torch.nn.functional.cross_entropy(x @ weight + bias, y) + 0.5 * wd * weight.pow(2).sum())

    assert (
        objective(probe.weight, probe.bias)
        <= objective(torch.tensor(sk.coef_.T), torch.tensor(sk.intercept_)) + 1e-12
    )
    ours = probe.logits(x).softmax(dim=1).numpy()
    np.testing.assert_allclose(ours, sk.predict_proba(x.numpy()), atol=1e-4 if n == 120 else 1e-6)


def test_probe_with_a_single_label_predicts_its_class() -> None:
    probe = fit_softmax_regression(torch.randn(1, 5, dtype=torch.float64), torch.tensor([2]), 4, 0.1)
    assert probe.predict(torch.randn(6, 5, dtype=torch.float64)).tolist() == [2] * 6


def test_row_space_basis_and_singular_values() -> None:
    g = torch.Generator().manual_seed(0)
    low_rank = torch.randn(30, 4, generator=g, dtype=torch.float64) @ torch.randn(
        4, 50, generator=g, dtype=torch.float64
    )
    for x in (low_rank, low_rank.T.contiguous()):  # n < d and n > d, both of rank 4
        space = RowSpace.of(x, chunk_rows=7)  # the Gram matrix accumulated over uneven row chunks
        assert space.rank == 4
        np.testing.assert_allclose(space.basis.T @ space.basis, torch.eye(4, dtype=torch.float64), atol=1e-9)
        centred = x - x.mean(dim=0)
        np.testing.assert_allclose(centred @ space.basis @ space.basis.T, centred, atol=1e-9)  # every row
        np.testing.assert_allclose(
            space.singular.sort().values, torch.linalg.svdvals(centred)[:4].sort().values, rtol=1e-9
        )
        torch.testing.assert_close(space.coords(x), centred @ space.basis)


def test_probe_separates_clusters_even_with_one_label_per_class() -> None:
    x, y = clusters(40, 5, 32, spread=1.0, seed=1)
    test_x, test_y = clusters(40, 5, 32, spread=1.0, seed=1)  # same centres (same seed), new noise
    test_x = test_x + 0.5 * torch.randn(test_x.shape, generator=torch.Generator().manual_seed(9))
    standardize = Standardizer.fit(x)
    for fraction in (1 / 40, 1.0):
        idx = sample_per_class(y, per_class_counts(y, fraction), seed=3)
        result = train_linear_probe(standardize(x[idx]), y[idx], 5, weight_decays=(1e-2, 1.0), folds=5)
        assert accuracy(result.probe.predict(standardize(test_x)), test_y) == 100.0


def test_probe_is_at_chance_when_labels_carry_no_signal() -> None:
    """No leak from the selection or standardization: random labels stay random on the test split."""
    g = torch.Generator().manual_seed(2)
    x, test_x = torch.randn(400, 20, generator=g), torch.randn(2000, 20, generator=g)
    y, test_y = torch.randint(0, 4, (400,), generator=g), torch.randint(0, 4, (2000,), generator=g)
    result = train_linear_probe(x, y, 4)
    assert 20.0 < accuracy(result.probe.predict(test_x), test_y) < 30.0


def test_weight_decay_is_chosen_on_held_out_labels() -> None:
    """Few noisy samples in many dimensions: held-out accuracy must prefer strong regularization,
    and the accuracies reported are held-out ones (multiples of 1/n: each label scored once)."""
    x, y = clusters(6, 3, 200, spread=8.0, seed=4)
    scores = cross_validate(Standardizer.fit(x)(x), y, 3, (1e-4, 1.0), folds=3, seed=0)
    for acc, _ in scores.values():
        assert math.isclose(acc * 18, round(acc * 18))
    result = train_linear_probe(Standardizer.fit(x)(x), y, 3, weight_decays=(1e-4, 1.0), folds=3)
    assert result.cv_accuracy == {wd: s[0] for wd, s in scores.items()}
    assert result.weight_decay == max(scores, key=lambda wd: (scores[wd][0], -scores[wd][1]))


def test_stratified_folds_spread_every_class() -> None:
    y = torch.tensor([0] * 7 + [1] * 5 + [2] * 1 + [3] * 1)
    folds = stratified_folds(y, 5, seed=0)
    assert sorted(np.bincount(folds, minlength=5)) == [2, 3, 3, 3, 3]
    for cls in range(2):
        members = folds[y.numpy() == cls]
        assert np.bincount(members, minlength=5).min() >= 1  # 7 and 5 examples reach all 5 folds
    assert folds[12] != folds[13]  # singleton classes land in different folds
    np.testing.assert_array_equal(folds, stratified_folds(y, 5, seed=0))


def test_held_out_part_grows_to_min_held_out_then_stops() -> None:
    x, y = clusters(100, 2, 4, spread=1.0, seed=5)
    few = cross_validate(x, y, 2, (0.1,), folds=5, seed=0, min_held_out=30)  # one fold of 40
    all_ = cross_validate(x, y, 2, (0.1,), folds=5, seed=0, min_held_out=10**6)  # every fold
    assert math.isclose(few[0.1][0] * 40, round(few[0.1][0] * 40))
    assert math.isclose(all_[0.1][0] * 200, round(all_[0.1][0] * 200))


def test_standardizer_leaves_constant_features_finite() -> None:
    x = torch.cat([torch.randn(10, 3), torch.full((10, 1), 5.0)], dim=1)
    s = Standardizer.fit(x)
    out = s(x + 1e-3)
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(s(x)[:, :3].std(dim=0, unbiased=False), torch.ones(3), rtol=1e-5)


# ----------------------------------------------------------------------------- k-NN


def knn_reference(train, train_y, test, num_classes, k, t):
    """One test row at a time in float64, straight from the DINO rule."""
    out = []
    tr = torch.nn.functional.normalize(train.double(), dim=1)
    for row in torch.nn.functional.normalize(test.double(), dim=1):
        sim = tr @ row
        top = sim.topk(k)
        votes = torch.zeros(num_classes, dtype=torch.float64)
        for s, i in zip(top.values, top.indices, strict=True):
            votes[train_y[i]] += torch.exp(s / t)
        out.append(int(votes.argmax()))
    return torch.tensor(out)


@pytest.mark.parametrize(("k", "t"), [(1, 0.07), (5, 0.07), (20, 1.0), (20, 0.07)])
def test_knn_matches_the_rule_row_by_row(k: int, t: float) -> None:
    g = torch.Generator().manual_seed(k)
    train, test = torch.randn(120, 16, generator=g), torch.randn(50, 16, generator=g)
    train_y = torch.randint(0, 6, (120,), generator=g)
    ours = knn_predict(train, train_y, test, 6, k=k, temperature=t, chunk_size=7)
    torch.testing.assert_close(ours, knn_reference(train, train_y, test, 6, k, t))


def test_knn_temperature_weighting_beats_majority() -> None:
    """One very close neighbour of class 0 against two farther ones of class 1 (k=3): the
    weighted vote at T=0.07 picks class 0, a near-uniform vote (T=100) picks class 1."""
    query = torch.tensor([[1.0, 0.0]])
    angle_close, angle_far = 0.1, 1.0
    train = torch.tensor(
        [
            [math.cos(angle_close), math.sin(angle_close)],
            [math.cos(angle_far), math.sin(angle_far)],
            [math.cos(angle_far), -math.sin(angle_far)],
        ]
    )
    labels = torch.tensor([0, 1, 1])
    assert int(knn_predict(train, labels, query, 2, k=3, temperature=0.07)[0]) == 0
    assert int(knn_predict(train, labels, query, 2, k=3, temperature=100.0)[0]) == 1


def test_knn_on_clusters_and_k_beyond_training_set() -> None:
    x, y = clusters(30, 4, 16, spread=1.0, seed=6)
    test_x, test_y = clusters(30, 4, 16, spread=1.5, seed=6)
    assert accuracy(knn_predict(x, y, test_x, 4), test_y) == 100.0
    assert knn_predict(x[:5], y[:5], test_x, 4, k=20).shape == (120,)  # k clipped to 5


# ----------------------------------------------------------------------------- low-shot


def test_per_class_counts_share_the_exact_total() -> None:
    sizes = [126, 125, 127, 128, 127, 127, 127, 126, 122, 126]  # like the digits' training split
    labels = torch.tensor(np.repeat(np.arange(10), sizes))
    for fraction in (0.01, 0.1, 0.37, 1.0):
        counts = per_class_counts(labels, fraction)
        assert counts.sum() == round(fraction * sum(sizes))
        quotas = fraction * np.asarray(sizes)
        assert ((counts == np.floor(quotas)) | (counts == np.ceil(quotas))).all()
    np.testing.assert_array_equal(per_class_counts(labels, 1.0), sizes)


def test_sampling_takes_exactly_the_requested_count_and_is_reproducible() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (500,), generator=g)
    counts = np.array([1, 2, 3, 4, 5, 6, 7])
    a = sample_per_class(labels, counts, seed=11)
    np.testing.assert_array_equal(np.bincount(labels[a].numpy(), minlength=7), counts)
    assert len(set(a.tolist())) == len(a)  # without replacement
    torch.testing.assert_close(a, sample_per_class(labels, counts, seed=11))
    assert not torch.equal(a, sample_per_class(labels, counts, seed=12))


def test_fraction_that_starves_a_class_is_a_clear_error() -> None:
    labels = torch.tensor([0] * 100 + [1] * 100 + [2] * 3)
    with pytest.raises(
        LabelFractionError, match=r"leaves 1 class\(es\) with no labelled example: rare"
    ) as info:
        per_class_counts(labels, 0.1, class_names=("common", "usual", "rare"))
    assert "0.3333" in str(info.value)  # the fraction that would work
    with pytest.raises(LabelFractionError, match="must be in"):
        per_class_counts(labels, 0.0)


def test_label_subsets_are_shared_and_full_fraction_is_one_draw() -> None:
    labels = torch.arange(10).repeat(20)
    protocol = Protocol(fractions=(0.1, 1.0), draws=3, seed=4)
    a = LabelSubsets.draw(labels, [str(i) for i in range(10)], protocol)
    b = LabelSubsets.draw(labels, [str(i) for i in range(10)], protocol)
    assert [len(v) for v in a.by_fraction.values()] == [3, 1]
    for fraction in a.by_fraction:
        for x, y in zip(a.by_fraction[fraction], b.by_fraction[fraction], strict=True):
            torch.testing.assert_close(x, y)
    assert a.num_labels(0.1) == 20 and a.num_labels(1.0) == 200
    assert len({tuple(t.tolist()) for t in a.by_fraction[0.1]}) == 3  # the draws differ


def test_evaluate_features_reports_every_fraction_and_knn() -> None:
    x, y = clusters(30, 3, 8, spread=1.0, seed=7)
    test_x, test_y = clusters(10, 3, 8, spread=1.0, seed=7)
    protocol = Protocol(fractions=(0.1, 1.0), draws=2, weight_decays=(1e-2, 1.0))
    subsets = LabelSubsets.draw(y, ["a", "b", "c"], protocol)
    result = evaluate_features("clusters", x, y, test_x, test_y, 3, subsets, protocol, progress=False)
    assert [s.fraction for s in result.probe] == [0.1, 1.0]
    assert [len(s.accuracies) for s in result.probe] == [2, 1]
    assert [s.labels for s in result.probe] == [9, 90]
    assert result.score(1.0).mean == 100.0 and result.knn == 100.0
    assert result.dim == 8 and set(result.seconds) == {"probe", "knn"}
