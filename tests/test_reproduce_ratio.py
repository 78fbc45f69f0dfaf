import json

import numpy as np
import pytest

from lifelong.experiments.run_config import build_stream
from lifelong.experiments.store import Store
from lifelong.reproduce_ratio import (
    RatioBenchmark,
    RatioMethod,
    RatioProtocol,
    random_accuracy,
    ratio_curves,
    ratio_table,
)

PROTOCOL = RatioProtocol(
    name="toy-ratio", paper="p", protocol="t",
    benchmarks=(RatioBenchmark("split-digits", {}, paper={"hat": (-0.02, -0.06)}),),
    methods=(RatioMethod("finetune", {}, "sgd"), RatioMethod("hat")),
    goal_method="hat", goal_floor=-0.10, epochs=1, seeds=(0, 1),
)


def test_random_accuracy_is_the_stratified_classifiers_expected_hit_rate():
    config = PROTOCOL.config(PROTOCOL.benchmarks[0], PROTOCOL.reference, seed=1)
    assert config.order == 2  # each seed its own shuffled order
    stream = build_stream(config)
    chance = random_accuracy(config)
    for task, value in zip(stream, chance, strict=True):
        train = np.bincount(task.y_train.numpy()) / len(task.y_train)
        test = np.bincount(task.y_test.numpy(), minlength=len(train)) / len(task.y_test)
        assert value == pytest.approx(float((train * test).sum()))
        assert 0.45 < value < 0.55  # two balanced classes


def _write(store, config, matrix):
    run_dir = Store(store).run_dir(config)
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps({"accuracy_matrix": matrix.tolist()}))


def test_rho_is_zero_for_joint_level_and_minus_one_for_chance_level_accuracy(tmp_path):
    bench = PROTOCOL.benchmarks[0]
    for seed in (0, 1):
        chance = random_accuracy(PROTOCOL.config(bench, PROTOCOL.reference, seed))
        joint = np.tril(np.full((5, 5), 0.95)) + np.triu(np.full((5, 5), 0.5), 1)
        _write(tmp_path, PROTOCOL.config(bench, PROTOCOL.reference, seed), joint)
        _write(tmp_path, PROTOCOL.config(bench, PROTOCOL.methods[1], seed), joint)  # hat = joint
        _write(tmp_path, PROTOCOL.config(bench, PROTOCOL.methods[0], seed), np.tile(chance, (5, 1)))
    curves = ratio_curves(PROTOCOL, tmp_path, seeds=(0, 1))["split-digits"]
    assert len(curves["hat"]) == len(curves["sgd"]) == 2
    np.testing.assert_allclose(curves["hat"][0], np.zeros(5), atol=1e-12)
    np.testing.assert_allclose(curves["sgd"][1], -np.ones(5), atol=1e-12)
    table = ratio_table(PROTOCOL, {"split-digits": curves})
    assert "| hat | 2 | +0.00 ± 0.00 | +0.00 ± 0.00 |" in table
    assert "| sgd | 2 | -1.00 ± 0.00 |" in table
    assert "-0.02 / -0.06 |" in table
    assert "hat rho after the last task at or above -0.10 and the best of all methods: **PASS**" in table


def test_goal_fails_when_another_method_is_better_or_hat_is_below_the_floor():
    curve = lambda *values: [np.array(values)]  # noqa: E731
    better = {"split-digits": {"hat": curve(-0.01, -0.05), "sgd": curve(0.0, -0.01),
                               "joint": curve(0.0, 0.0)}}
    assert "**FAIL**" in ratio_table(PROTOCOL, better)
    low = {"split-digits": {"hat": curve(-0.05, -0.2), "sgd": curve(-0.3, -0.5)}}
    assert "**FAIL**" in ratio_table(PROTOCOL, low)
    assert "**NOT RUN**" in ratio_table(PROTOCOL, {})
