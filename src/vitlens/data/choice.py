"""Which test images a stage shows, decided in one place: a seeded sample of the test set
(`seeded_sample`), and, among a pool of predictions, a mix of right and wrong ones, balanced
over the true classes when asked (`right_and_wrong`). Pure numpy: the stages predict, these
choose.

Who calls what:
- visualize: a pool of `seeded_sample`, then `right_and_wrong` with no class balance (a few
  figure slots over ten classes would leave no room for a mistake).
- faithfulness: `seeded_sample` (every image counts; no predictions needed to choose).
- report: a pool of `seeded_sample`, then `right_and_wrong` balanced over the classes for
  the gallery; the class means over a second draw of the same seed (`draw=1`).
"""
from __future__ import annotations

import numpy as np

POOL_PER_IMAGE = 20  # test images scanned per shown image: enough to find mistakes, per class too


def seeded_sample(n: int, k: int, seed: int, *, draw: int = 0) -> np.ndarray:
    """`k` distinct indices of range(`n`), in random order: the first `k` of the permutation
    of range(n) that numpy's `default_rng(seed)` draws after `draw` earlier ones.

    The same (n, seed, draw) gives the same order, and a smaller `k` a prefix of it (not the
    first k images: the test set's order is not guaranteed to be shuffled). Draws 1, 2, ...
    of one seed are further samples, independent of draw 0. Raises ValueError unless
    0 <= k <= n and draw >= 0."""
    if not 0 <= k <= n:
        raise ValueError(f"cannot draw {k} of {n} indices")
    if draw < 0:
        raise ValueError(f"draw={draw} must be >= 0")
    rng = np.random.default_rng(seed)
    for _ in range(draw):
        rng.permutation(n)
    return rng.permutation(n)[:k]


def quotas(n: int, classes: int | None) -> list[int]:
    """Slots per group: one group of `n` (classes=None), else `n` spread over the classes as
    evenly as it goes, the first classes taking one more."""
    if classes is None:
        return [n]
    if classes < 1:
        raise ValueError(f"classes={classes} must be >= 1")
    return [n // classes + (c < n % classes) for c in range(classes)]


def right_and_wrong(pred: np.ndarray, truth: np.ndarray, n: int, *,
                    classes: int | None = None) -> np.ndarray:
    """Positions in `pred`/`truth` (ascending) of `n` predictions to show, so a figure shows
    where the model fails as well as where it succeeds.

    With `classes`, each true class c in range(classes) gets its quota of the `n` slots
    (`quotas`); without, all predictions are one group of `n`. Within a group of quota q,
    floor(q/2) slots go to mistakes (pred != truth) and the rest to right predictions; when
    one kind runs short the other fills its slots, and a group short of both is left short
    (fewer than `n` positions in all). Each kind is taken in the given order: pass a seeded
    pool (`seeded_sample`) for a random choice."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.ndim != 1 or pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must be one equal length")
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    wrong = pred != truth
    chosen: list[np.ndarray] = []
    for c, q in enumerate(quotas(n, classes)):
        mine = np.ones_like(wrong) if classes is None else truth == c
        bad, good = np.flatnonzero(mine & wrong), np.flatnonzero(mine & ~wrong)
        n_wrong = min(len(bad), q // 2)
        n_right = min(len(good), q - n_wrong)
        n_wrong = min(len(bad), q - n_right)
        chosen += [bad[:n_wrong], good[:n_right]]
    return np.sort(np.concatenate(chosen)).astype(np.int64)
