"""Continual-learning metrics: pure functions of the accuracy matrix.

``R[i, j]`` is the accuracy on task ``j`` after training task ``i`` (``T x T``); ``b[j]`` the accuracy
of the untrained model on task ``j``. A partial run (``t x T``, ``t < T``) is scored as the stream of
its first ``t`` tasks. Definitions:

- ACC (GEM, Lopez-Paz & Ranzato 2017, Eq. 2): ``1/T sum_j R[T-1, j]``.
- BWT (GEM Eq. 3): ``1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])``.
- FWT (GEM Eq. 4): ``1/(T-1) sum_{j>0} (R[j-1, j] - b[j])``.
  ``convention="gem-code"`` divides both sums by ``T`` instead, as the GEM code's ``metrics.py`` does
  (its per-task vectors hold a 0 for the missing term and are averaged over all ``T``).
- Forgetting (Chaudhry et al. 2018, RWalk): ``1/(T-1) sum_{j<T-1} max_{l<T-1} R[l, j] - R[T-1, j]``.
- Learning accuracy (Riemer et al. 2019): ``1/T sum_j R[j, j]``.
- Forgetting ratio (Serrà et al. 2018, HAT, Sec. 4.1):
  ``rho^{tau<=t} = (A^{tau<=t} - A_R^tau) / (A_J^{tau<=t} - A_R^tau) - 1``, averaged over
  ``tau <= t``: 0 means as good as joint training, -1 as bad as a random classifier.
- Order-normalised performance disparity (Yoon et al. 2020, APD, Sec. 4): for task ``t`` trained
  under ``R`` task orders, ``OPD_t = max_r A^r_t - min_r A^r_t`` with ``A^r_t`` its final accuracy
  under order ``r``; MOPD is the largest ``OPD_t``, AOPD their mean.

Beside the accuracy, the engine scores every task after every task by its macro-F1
(`macro_f1`, CTR's second measure, Ke et al. 2021): the mean over the task's classes of
``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``, from the same predictions the accuracy counts.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Convention = Literal["paper", "gem-code"]


def _matrix(R) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] < 1 or R.shape[1] < R.shape[0]:
        raise ValueError(f"accuracy matrix must be (t, T) with 1 <= t <= T, got shape {R.shape}")
    return R


def _divisor(T: int, convention: Convention) -> int:
    if convention not in ("paper", "gem-code"):
        raise ValueError(f"convention={convention!r} is not one of 'paper', 'gem-code'")
    return T if convention == "gem-code" else T - 1


def acc(R) -> float:
    """Average accuracy over the tasks learnt so far, after the last of them (GEM's ACC)."""
    R = _matrix(R)
    return float(R[-1, : R.shape[0]].mean())


def bwt(R, convention: Convention = "paper") -> float:
    """Backward transfer: how much learning later tasks changed earlier ones (negative = forgetting)."""
    R = _matrix(R)
    T = R.shape[0]
    if T < 2:
        return 0.0
    diag = np.diag(R[:T, :T])
    return float((R[T - 1, : T - 1] - diag[: T - 1]).sum() / _divisor(T, convention))


def fwt(R, b, convention: Convention = "paper") -> float:
    """Forward transfer: accuracy on a task before training it, above the untrained model's."""
    R = _matrix(R)
    b = np.asarray(b, dtype=float)
    T = R.shape[0]
    if T < 2:
        return 0.0
    gains = [R[j - 1, j] - b[j] for j in range(1, T)]
    return float(np.sum(gains) / _divisor(T, convention))


def forgetting(R) -> float:
    """Average forgetting: best earlier accuracy on each old task minus its final accuracy."""
    R = _matrix(R)
    T = R.shape[0]
    if T < 2:
        return 0.0
    drops = R[: T - 1, : T - 1].max(axis=0) - R[T - 1, : T - 1]
    return float(drops.mean())


def learning_accuracy(R) -> float:
    """Average accuracy on each task right after learning it."""
    R = _matrix(R)
    T = R.shape[0]
    return float(np.diag(R[:T, :T]).mean())


def forgetting_ratio(R, R_joint, random_accuracy) -> np.ndarray:
    """HAT's forgetting ratio after each task: ``rho[t]`` averaged over tasks ``tau <= t``.

    ``R_joint`` is the accuracy matrix of joint (multitask) training on the same stream and
    ``random_accuracy[tau]`` the accuracy of a random stratified classifier on task ``tau``.
    """
    R, R_joint = _matrix(R), _matrix(R_joint)
    random_accuracy = np.asarray(random_accuracy, dtype=float)
    T = R.shape[0]
    if R_joint.shape[0] < T:
        raise ValueError(f"R_joint has {R_joint.shape[0]} rows, fewer than R's {T}")
    rho = np.empty(T)
    for t in range(T):
        tau = np.arange(t + 1)
        gain = R_joint[t, tau] - random_accuracy[tau]
        if np.any(gain <= 0):
            raise ValueError(f"joint accuracy is not above random for some task <= {t}")
        rho[t] = np.mean((R[t, tau] - random_accuracy[tau]) / gain - 1.0)
    return rho


def order_disparity(final_accuracies) -> dict[str, float | list[float]]:
    """OPD per task, MOPD and AOPD from ``final_accuracies[r, t]``: task ``t``'s accuracy after the
    whole stream under order ``r`` (columns are tasks, not positions: align them by task first)."""
    A = np.asarray(final_accuracies, dtype=float)
    if A.ndim != 2 or A.shape[0] < 2 or A.shape[1] < 1:
        raise ValueError(f"need accuracies of every task under at least 2 orders as (orders, tasks), "
                         f"got shape {A.shape}")
    if np.isnan(A).any():
        raise ValueError("some task has no final accuracy under some order (unfinished run?)")
    opd = A.max(axis=0) - A.min(axis=0)
    return {"opd": opd.tolist(), "mopd": float(opd.max()), "aopd": float(opd.mean())}


def macro_f1(confusion, classes=None) -> float:
    """Macro-F1 from a confusion matrix: the mean over ``classes`` of each class's F1.

    ``confusion[i, j]`` counts the examples of true class ``i`` predicted as ``j`` (square, ``C x
    C``); ``classes`` are the row indices to average over (default: all ``C``). Rows and columns
    outside ``classes`` still count: a prediction of such a class is a false negative of the true
    class. ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``, which is ``2 P R / (P + R)``; a class with
    no true example and no prediction (0 / 0), like a class never predicted, scores 0
    (scikit-learn's ``f1_score(average="macro", labels=classes, zero_division=0)``).
    """
    C = np.asarray(confusion, dtype=float)
    if C.ndim != 2 or C.shape[0] != C.shape[1] or C.shape[0] < 1:
        raise ValueError(f"confusion must be a square (C, C) matrix, got shape {C.shape}")
    if (C < 0).any():
        raise ValueError("confusion holds negative counts")
    index = np.arange(len(C)) if classes is None else np.asarray(list(classes), dtype=int)
    if index.size == 0 or index.min() < 0 or index.max() >= len(C):
        raise ValueError(f"classes={list(index)} must be a non-empty list of indices below {len(C)}")
    tp = np.diag(C)[index]
    fp = C.sum(axis=0)[index] - tp
    fn = C.sum(axis=1)[index] - tp
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1.mean())


def summary(R, b=None, convention: Convention = "paper") -> dict[str, float]:
    """ACC, BWT, FWT (when ``b`` is given), forgetting and learning accuracy of a (partial) run."""
    R = _matrix(R)
    out = {"acc": acc(R), "bwt": bwt(R, convention), "forgetting": forgetting(R),
           "learning_accuracy": learning_accuracy(R)}
    if b is not None:
        out["fwt"] = fwt(R, b, convention)
    return out
