"""Slow (not in CI): the GEM permuted-MNIST protocol shows the forgetting the literature reports.

20 tasks, 1000 training images per task, 1 epoch, batch 10, MLP 784-100-100-10, SGD lr 0.03,
every task's whole 10k test set. Run with ``make test-slow`` (a few minutes on 2 cores).
"""

import pytest

from lifelong.experiments.run_config import RunConfig, build_stream, run_experiment


@pytest.mark.slow
def test_finetune_forgets_while_independent_and_joint_do_not():
    configs = {m: RunConfig(benchmark="permuted-mnist", method=m, tasks=20, seed=0)
               for m in ("finetune", "independent", "joint")}
    stream = build_stream(configs["finetune"])
    results = {m: run_experiment(c, stream=stream).metrics for m, c in configs.items()}
    finetune, independent, joint = results["finetune"], results["independent"], results["joint"]
    assert finetune["acc"] < independent["acc"] - 0.10
    assert finetune["acc"] < joint["acc"] - 0.15
    assert finetune["bwt"] < -0.15
    assert independent["bwt"] == 0.0 and joint["bwt"] > -0.02
