"""Macro-F1: the pure function against hand computations, and the engine's F1 matrix on a stream
whose predictions are written into its inputs (so every entry is known by hand)."""

import json

import numpy as np
import pytest
import torch

from lifelong import engine
from lifelong.benchmarks import build_stream
from lifelong.methods import Method
from lifelong.metrics import macro_f1

torch.set_num_threads(1)


# ------------------------------------------------------------------------------- macro_f1
def test_macro_f1_of_a_hand_computed_confusion():
    # class 0: TP 3, FP 2, FN 1 -> 6 / 9; class 1: TP 4, FP 1, FN 2 -> 8 / 11
    confusion = [[3, 1], [2, 4]]
    assert macro_f1(confusion) == pytest.approx((6 / 9 + 8 / 11) / 2)
    # F1 = 2PR / (P + R) gives the same: class 0 P = 3/5, R = 3/4
    p, r = 3 / 5, 3 / 4
    assert macro_f1(confusion) == pytest.approx((2 * p * r / (p + r) + 8 / 11) / 2)


def test_a_class_never_predicted_scores_zero():
    # everything predicted as class 0: class 0 TP 2, FP 3 -> 4 / 7; class 1 never predicted -> 0
    assert macro_f1([[2, 0], [3, 0]]) == pytest.approx((4 / 7 + 0.0) / 2)
    # a class with neither examples nor predictions scores 0 too (0 / 0)
    assert macro_f1([[5, 0], [0, 0]]) == pytest.approx(0.5)


def test_predictions_outside_the_classes_are_false_negatives():
    # classes 0, 1 plus an "other" bin: 2 examples of class 0 went to other
    confusion = [[1, 0, 2],
                 [0, 3, 0],
                 [0, 0, 0]]
    # class 0: TP 1, FP 0, FN 2 -> 2 / 4; class 1: TP 3 -> 1
    assert macro_f1(confusion, classes=[0, 1]) == pytest.approx((0.5 + 1.0) / 2)
    assert macro_f1(confusion, classes=range(2)) == pytest.approx(0.75)
    assert macro_f1(confusion, classes=[1]) == pytest.approx(1.0)


def test_macro_f1_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        macro_f1([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="negative"):
        macro_f1([[1, -1], [0, 1]])
    with pytest.raises(ValueError, match="classes"):
        macro_f1([[1, 0], [0, 1]], classes=[2])
    with pytest.raises(ValueError, match="classes"):
        macro_f1([[1, 0], [0, 1]], classes=[])


# ------------------------------------------------------------------------------- the engine
N_UNITS = 4
#: per task: (true units, the unit the input points at); the method's logits are the one-hot
#: of that unit once it has trained the task, zeros before (every unit tied)
TASK0 = ([0, 0, 0, 1, 1], [0, 0, 0, 0, 0])
TASK1 = ([2, 2, 3, 3], [0, 3, 3, 3])  # one input points outside task 1's units


def _parts():
    parts = []
    for t, (y, points) in enumerate((TASK0, TASK1)):
        x = torch.zeros(len(y), N_UNITS + 1)
        x[torch.arange(len(y)), torch.tensor(points)] = 1.0
        x[:, N_UNITS] = t  # task marker
        y = torch.tensor(y)
        parts.append((f"t{t}", x, y, x.clone(), y.clone()))
    return parts


class PointingMethod(Method):
    """Predicts the unit each input points at for the tasks it has trained; zeros otherwise."""

    task_conditioned = False
    task_agnostic = True

    def __init__(self):
        self.model = torch.nn.Identity()
        self.learnt: set[int] = set()

    def begin_task(self, task):
        pass

    def observe(self, x, y, task_id):
        return torch.zeros(())

    def end_task(self, task):
        self.learnt.add(task.id)

    def predict(self, x, task_id=None):
        known = torch.tensor([int(t) in self.learnt for t in x[:, N_UNITS].tolist()])
        return x[:, :N_UNITS] * known[:, None]

    def memory(self):
        return {}


def test_engine_f1_matrix_task_scenario_by_hand():
    stream = build_stream("pointing", "task", _parts(), (N_UNITS + 1,))
    result = engine.run(PointingMethod(), stream, batch_size=2, eval_batch_size=3)
    # task 0 trained: all predicted unit 0: class 0 TP 3 FP 2 -> 6/8, class 1 never -> 0
    f_task0 = (6 / 8 + 0.0) / 2
    # task 1 untrained: ties over units 2, 3 -> argmax picks 2: class 2 TP 2 FP 2 -> 4/6, class 3 0
    f_untrained1 = (4 / 6 + 0.0) / 2
    # task 1 trained: the input pointing at unit 0 is masked to task 1's units -> tie -> unit 2:
    # predictions 2, 3, 3, 3: class 2 TP 1 FN 1 -> 2/3, class 3 TP 2 FP 1 -> 4/5
    f_task1 = (2 / 3 + 4 / 5) / 2
    np.testing.assert_allclose(result.f1_matrix, [[f_task0, f_untrained1], [f_task0, f_task1]])
    np.testing.assert_allclose(result.accuracy_matrix, [[0.6, 0.5], [0.6, 0.75]])
    assert result.metrics["macro_f1"] == pytest.approx((f_task0 + f_task1) / 2)


def test_engine_f1_matrix_class_scenario_counts_other_tasks_units_as_misses():
    stream = build_stream("pointing", "class", _parts(), (N_UNITS + 1,))
    result = engine.run(PointingMethod(), stream, batch_size=2)
    f_task0 = (6 / 8 + 0.0) / 2
    # task 1 untrained: zeros over all units -> unit 0, outside task 1: no class of it is hit
    # task 1 trained: predictions 0, 3, 3, 3: class 2 TP 0 -> 0, class 3 TP 2 FP 1 -> 4/5
    np.testing.assert_allclose(result.f1_matrix, [[f_task0, 0.0], [f_task0, (0.0 + 4 / 5) / 2]])
    np.testing.assert_allclose(result.accuracy_matrix, [[0.6, 0.0], [0.6, 0.5]])


def test_f1_matrix_round_trips_and_old_results_still_load(tmp_path):
    stream = build_stream("pointing", "task", _parts(), (N_UNITS + 1,))
    result = engine.run(PointingMethod(), stream, batch_size=2)
    record = json.loads(json.dumps(result.to_dict()))
    back = engine.Result.from_dict(record)
    np.testing.assert_array_equal(back.f1_matrix, result.f1_matrix)
    assert back.to_dict() == result.to_dict()
    # a result recorded before macro-F1 existed: no f1_matrix, no macro_f1 metric
    del record["f1_matrix"]
    old = engine.Result.from_dict(record)
    assert old.f1_matrix is None and "macro_f1" not in old.metrics
    assert "f1_matrix" not in old.to_dict()
    np.testing.assert_array_equal(old.accuracy_matrix, result.accuracy_matrix)


def test_resuming_an_old_checkpoint_scores_f1_from_there_on():
    stream = build_stream("pointing", "task", _parts(), (N_UNITS + 1,))
    method = PointingMethod()
    saved = {}

    def stop_after_first(t, partial):
        saved["record"] = partial.to_dict()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.run(method, stream, batch_size=2, on_task_end=stop_after_first)
    del saved["record"]["f1_matrix"]
    resumed = engine.run(method, stream, batch_size=2,
                         resume=engine.Result.from_dict(saved["record"]))
    assert np.isnan(resumed.f1_matrix[0]).all()
    np.testing.assert_allclose(resumed.f1_matrix[1], [(6 / 8) / 2, (2 / 3 + 4 / 5) / 2])
    assert resumed.metrics["macro_f1"] == pytest.approx(((6 / 8) / 2 + (2 / 3 + 4 / 5) / 2) / 2)


def test_score_and_evaluate_agree():
    stream = build_stream("pointing", "class", _parts(), (N_UNITS + 1,))
    method = PointingMethod()
    method.learnt = {0, 1}
    scores = engine.score(method, stream, other="task_aware")
    accuracy, other = engine.evaluate(method, stream, other="task_aware")
    np.testing.assert_array_equal(scores.accuracy, accuracy)
    np.testing.assert_array_equal(scores.other, other)
    np.testing.assert_allclose(other, [0.6, 0.75])  # with the task id: task 1's masked tie -> 2
    only = engine.score(method, stream, only=[1])
    assert np.isnan(only.accuracy[0]) and np.isnan(only.macro_f1[0])
    assert only.macro_f1[1] == pytest.approx(0.4)



class LogitsAreInputs(PointingMethod):
    """Returns its input as logits: three outputs on a stream of two units."""

    def predict(self, x, task_id=None):
        return x


def test_a_predicted_unit_beyond_the_layout_is_a_miss():
    # one class-incremental task of 2 units (so no mask is applied); predictions 0, 2, 1, 2
    x = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1]])
    y = torch.tensor([0, 0, 1, 1])
    stream = build_stream("wide", "class", [("t0", x, y, x.clone(), y.clone())], (3,))
    result = engine.run(LogitsAreInputs(), stream, batch_size=2)
    # class 0: TP 1, FN 1 -> 2/3; class 1: TP 1, FN 1 -> 2/3; unit 2 is no class: only misses
    np.testing.assert_allclose(result.f1_matrix, [[2 / 3]])
    np.testing.assert_allclose(result.accuracy_matrix, [[0.5]])
