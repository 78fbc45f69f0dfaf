import pytest
import torch
from conftest import toy_parts

from lifelong.benchmarks import HeadLayout, build_stream, mask_logits


def test_disjoint_classes_keep_class_ids_as_units(toy_task_stream):
    stream = toy_task_stream
    assert stream.n_units == 6
    assert stream.layout.task_units == ((0, 1), (2, 3), (4, 5))
    assert stream[1].y_train.min() >= 2 and stream[1].y_train.max() <= 3
    assert stream.layout.disjoint


def test_repeating_classes_get_one_head_per_task():
    stream = build_stream("toy", "task", toy_parts(disjoint=False), (1, 4, 4))
    assert stream.layout.task_units == ((0, 1), (2, 3), (4, 5))
    # labels 0/1 of task 2 become units 4/5
    assert set(stream[2].y_test.tolist()) <= {4, 5}


def test_domain_scenario_shares_one_head(toy_domain_stream):
    layout = toy_domain_stream.layout
    assert layout.n_units == 2 and layout.task_units == ((0, 1),) * 3
    assert layout.train_mask(2) is None and layout.eval_mask(2) is None


def test_masks_per_scenario():
    layout = HeadLayout("class", 6, ((0, 1), (2, 3), (4, 5)))
    assert layout.train_mask(1).tolist() == [True, True, True, True, False, False]
    assert layout.train_mask(2) is None  # every unit seen: no masking needed
    assert layout.eval_mask(None) is None
    assert layout.eval_mask(1).tolist() == [False, False, True, True, False, False]
    task = HeadLayout("task", 6, ((0, 1), (2, 3), (4, 5)))
    assert task.train_mask(1).tolist() == [False, False, True, True, False, False]
    assert task.replay_mask(0, 2).tolist() == [True, True, False, False, False, False]
    assert layout.replay_mask(0, 1).tolist() == [True, True, True, True, False, False]


def test_replay_masks_stack_each_earlier_tasks_units():
    T, F = True, False
    task = HeadLayout("task", 6, ((0, 1), (2, 3), (4, 5)))
    assert task.replay_masks(1).tolist() == [[T, T, F, F, F, F], [F, F, T, T, F, F]]
    cls = HeadLayout("class", 6, ((0, 1), (2, 3), (4, 5)))
    assert cls.replay_masks(1).tolist() == [[T, T, T, T, F, F]] * 2  # every unit seen so far
    assert cls.replay_masks(2) is None  # all units seen: nothing to mask
    assert HeadLayout("domain", 2, ((0, 1),) * 3).replay_masks(2) is None


def test_mask_logits_pushes_other_units_down():
    logits = torch.tensor([[5.0, 1.0, 2.0]])
    masked = mask_logits(logits, torch.tensor([False, True, True]))
    assert masked.argmax(1).item() == 2
    assert mask_logits(logits, None) is logits


def test_reordered_renumbers_tasks(toy_task_stream):
    stream = toy_task_stream.reordered([2, 0, 1])
    assert [t.name for t in stream] == ["toy-2", "toy-0", "toy-1"]
    assert [t.id for t in stream] == [0, 1, 2]
    assert stream.layout.task_units == ((4, 5), (0, 1), (2, 3))
    assert stream[0].train_mask.tolist() == [False, False, False, False, True, True]
    with pytest.raises(ValueError, match="permutation"):
        toy_task_stream.reordered([0, 0, 1])


def test_first_keeps_units(toy_task_stream):
    stream = toy_task_stream.first(2)
    assert stream.n_tasks == 2 and stream.n_units == 6
    assert stream.layout.task_units == ((0, 1), (2, 3))


def test_bad_scenario():
    with pytest.raises(ValueError, match="scenario"):
        build_stream("toy", "nope", toy_parts(), (1, 4, 4))
