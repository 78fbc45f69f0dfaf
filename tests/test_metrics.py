import numpy as np
import pytest

from lifelong import metrics

# R[i, j]: accuracy on task j after training task i (3 tasks), b: untrained accuracies.
R = np.array([[0.9, 0.2, 0.1],
              [0.6, 0.8, 0.3],
              [0.5, 0.7, 0.95]])
b = np.array([0.1, 0.15, 0.05])


def test_acc_is_mean_of_last_row():
    assert metrics.acc(R) == pytest.approx((0.5 + 0.7 + 0.95) / 3)


def test_bwt_paper_and_gem_code_conventions():
    # (R[2,0]-R[0,0]) + (R[2,1]-R[1,1]) = -0.4 - 0.1 = -0.5
    assert metrics.bwt(R) == pytest.approx(-0.5 / 2)
    assert metrics.bwt(R, convention="gem-code") == pytest.approx(-0.5 / 3)


def test_fwt_paper_and_gem_code_conventions():
    # (R[0,1]-b[1]) + (R[1,2]-b[2]) = 0.05 + 0.25 = 0.3
    assert metrics.fwt(R, b) == pytest.approx(0.3 / 2)
    assert metrics.fwt(R, b, convention="gem-code") == pytest.approx(0.3 / 3)


def test_forgetting_uses_best_earlier_accuracy():
    # task 0: max(0.9, 0.6) - 0.5 = 0.4 ; task 1: max(0.2, 0.8) - 0.7 = 0.1
    assert metrics.forgetting(R) == pytest.approx(0.25)


def test_learning_accuracy_is_mean_diagonal():
    assert metrics.learning_accuracy(R) == pytest.approx((0.9 + 0.8 + 0.95) / 3)


def test_partial_matrix_scores_tasks_learnt_so_far():
    assert metrics.acc(R[:2]) == pytest.approx((0.6 + 0.8) / 2)
    assert metrics.bwt(R[:2]) == pytest.approx(0.6 - 0.9)
    assert metrics.fwt(R[:2], b) == pytest.approx(0.2 - 0.15)


def test_single_task_has_no_transfer():
    assert metrics.bwt(R[:1]) == 0.0 and metrics.fwt(R[:1], b) == 0.0


def test_forgetting_ratio_against_hand_computation():
    R_joint = np.array([[0.9, 0.1, 0.1],
                        [0.9, 0.9, 0.1],
                        [0.9, 0.9, 1.0]])
    random = np.array([0.5, 0.5, 0.5])
    rho = metrics.forgetting_ratio(R, R_joint, random)
    assert rho[0] == pytest.approx((0.9 - 0.5) / (0.9 - 0.5) - 1)  # 0: as good as joint
    assert rho[1] == pytest.approx(np.mean([(0.6 - .5) / .4 - 1, (0.8 - .5) / .4 - 1]))
    assert rho[2] == pytest.approx(np.mean([(0.5 - .5) / .4 - 1, (0.7 - .5) / .4 - 1,
                                            (0.95 - .5) / .5 - 1]))
    assert rho[2] == pytest.approx(np.mean([-1.0, -0.5, -0.1]))


def test_forgetting_ratio_rejects_joint_not_above_random():
    with pytest.raises(ValueError, match="not above random"):
        metrics.forgetting_ratio(R, np.full((3, 3), 0.5), np.full(3, 0.5))


def test_summary_and_bad_input():
    s = metrics.summary(R, b)
    assert set(s) == {"acc", "bwt", "fwt", "forgetting", "learning_accuracy"}
    with pytest.raises(ValueError, match="convention"):
        metrics.bwt(R, convention="other")
    with pytest.raises(ValueError, match="shape"):
        metrics.acc(np.zeros((3, 2)))
