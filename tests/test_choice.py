"""The one home of the stages' choice of test images (vitlens.data.choice): the seeded sample
visualize, faithfulness and report draw, and the right-and-wrong mix visualize and report
show."""
import numpy as np
import pytest

from vitlens.data.choice import quotas, right_and_wrong, seeded_sample


def predictions(n: int, classes: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pred, truth) of `n` images, right with probability `accuracy`, else one class off."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)
    return np.where(rng.random(n) < accuracy, truth, (truth + 1) % classes), truth


def test_the_same_seed_draws_the_same_sample_and_a_smaller_one_is_its_prefix():
    a = seeded_sample(10_000, 200, 7)
    assert np.array_equal(a, seeded_sample(10_000, 200, 7))
    assert np.array_equal(seeded_sample(10_000, 50, 7), a[:50])
    # The stages' choice before it had one home: the same seed still picks the same images.
    assert np.array_equal(a, np.random.default_rng(7).permutation(10_000)[:200])


def test_another_seed_or_draw_is_another_sample():
    a = seeded_sample(10_000, 200, 7)
    assert not np.array_equal(a, seeded_sample(10_000, 200, 8))
    one = seeded_sample(10_000, 200, 7, draw=1)
    assert not np.array_equal(a, one) and np.array_equal(one, seeded_sample(10_000, 200, 7, draw=1))
    rng = np.random.default_rng(7)  # draw 1: the generator's second permutation (the report's class means)
    rng.permutation(10_000)
    assert np.array_equal(one, rng.permutation(10_000)[:200])


@pytest.mark.parametrize("n,k", [(1, 1), (10, 10), (100, 37), (10_000, 1000), (5, 0)])
def test_a_sample_is_k_distinct_indices_in_range(n, k):
    for seed in range(5):
        a = seeded_sample(n, k, seed)
        assert len(a) == k == len(set(a.tolist())) and a.dtype == np.int64
        assert all(0 <= i < n for i in a.tolist())
    if k == n and n > 1:
        assert sorted(a.tolist()) == list(range(n))


def test_a_sample_larger_than_the_set_or_a_negative_draw_is_refused():
    with pytest.raises(ValueError, match="cannot draw 11 of 10"):
        seeded_sample(10, 11, 0)
    with pytest.raises(ValueError, match="cannot draw -1 of 10"):
        seeded_sample(10, -1, 0)
    with pytest.raises(ValueError, match="draw=-1"):
        seeded_sample(10, 1, 0, draw=-1)


def test_quotas_spread_the_slots_evenly_over_the_classes():
    assert quotas(64, 10) == [7] * 4 + [6] * 6
    assert quotas(5, 10) == [1] * 5 + [0] * 5
    assert quotas(8, None) == [8]


def test_half_the_choice_is_mistakes_when_there_are_enough():
    pred = np.array([0, 1, 0, 1, 0, 0, 0, 0, 0, 0])
    truth = np.zeros(10, int)
    assert right_and_wrong(pred, truth, 4).tolist() == [0, 1, 2, 3]  # 2 right, 2 wrong, in order
    assert right_and_wrong(pred, truth, 5).tolist() == [0, 1, 2, 3, 4]  # odd: the extra one right
    for seed in range(20):
        pred, truth = predictions(400, 10, 0.7, seed)
        pos = right_and_wrong(pred, truth, 15)
        assert len(pos) == 15 and (pred[pos] != truth[pos]).sum() == 7


def test_one_kind_fills_the_slots_the_other_lacks():
    truth = np.zeros(10, int)
    assert right_and_wrong(np.zeros(10, int), truth, 4).tolist() == [0, 1, 2, 3]  # no mistakes
    assert right_and_wrong(np.ones(10, int), truth, 4).tolist() == [0, 1, 2, 3]  # all mistakes
    pred = np.array([1, 0, 0, 0, 0, 0])  # one mistake: it and five right ones
    assert right_and_wrong(pred, np.zeros(6, int), 6).tolist() == list(range(6))
    assert right_and_wrong(pred, np.zeros(6, int), 9).tolist() == list(range(6))  # short of both


def test_the_class_balanced_choice_keeps_each_quota_and_half_of_it_mistakes():
    for seed in range(20):
        pred, truth = predictions(1280, 10, 0.7, seed)
        pos = right_and_wrong(pred, truth, 64, classes=10)
        t, p = truth[pos], pred[pos]
        assert len(pos) == 64
        assert np.bincount(t, minlength=10).tolist() == quotas(64, 10)
        for c in range(10):  # half of each class's slots are mistakes (there are enough of them)
            assert ((t == c) & (p != c)).sum() == (t == c).sum() // 2


def test_a_class_short_of_images_leaves_its_slots_empty():
    truth = np.array([0] * 10 + [1])
    pos = right_and_wrong(truth.copy(), truth, 6, classes=2)
    assert pos.tolist() == [0, 1, 2, 10]  # class 0: its 3 slots; class 1: its one image of 3


@pytest.mark.parametrize("classes", [None, 1, 3, 10])
@pytest.mark.parametrize("accuracy", [0.0, 0.3, 0.9, 1.0])
def test_the_choice_is_distinct_ascending_positions_in_range(classes, accuracy):
    for seed in range(10):
        pred, truth = predictions(200, classes or 10, accuracy, seed)
        for n in (0, 1, 7, 64, 300):
            pos = right_and_wrong(pred, truth, n, classes=classes)
            assert pos.dtype == np.int64 and len(pos) <= n
            assert pos.tolist() == sorted(set(pos.tolist())) and all(0 <= i < 200 for i in pos.tolist())
            if n <= 200 and classes is None:
                assert len(pos) == n


def test_mismatched_predictions_are_refused():
    with pytest.raises(ValueError, match="must be one equal length"):
        right_and_wrong(np.zeros(3, int), np.zeros(4, int), 2)
    with pytest.raises(ValueError, match="classes=0"):
        right_and_wrong(np.zeros(3, int), np.zeros(3, int), 2, classes=0)
