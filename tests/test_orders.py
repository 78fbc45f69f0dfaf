"""Order robustness: OPD / MOPD / AOPD (APD paper) and the `lifelong orders` command."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from lifelong.cli import main
from lifelong.engine import Result
from lifelong.experiments.orders import final_by_task, order_configs
from lifelong.experiments.run_config import RunConfig
from lifelong.metrics import order_disparity


def test_order_disparity_by_hand():
    # 3 orders x 3 tasks: OPD = max - min per task column
    A = [[0.90, 0.80, 0.70],
         [0.80, 0.80, 0.60],
         [0.95, 0.75, 0.70]]
    out = order_disparity(A)
    np.testing.assert_allclose(out["opd"], [0.15, 0.05, 0.10])
    assert out["mopd"] == pytest.approx(0.15) and out["aopd"] == pytest.approx(0.10)


@pytest.mark.parametrize("bad, message", [([[0.9, 0.8]], "at least 2 orders"),
                                          ([[0.9, np.nan], [0.8, 0.7]], "no final accuracy")])
def test_order_disparity_refuses_what_it_cannot_score(bad, message):
    with pytest.raises(ValueError, match=message):
        order_disparity(bad)


def test_final_accuracies_are_keyed_by_task_not_position():
    R = np.array([[0.9, np.nan], [0.7, 0.8]])
    result = Result(accuracy_matrix=R, untrained_accuracy=np.zeros(2), task_names=["b", "a"],
                    scenario="task", train_seconds=[1.0, 1.0])
    assert final_by_task(result) == {"b": 0.7, "a": 0.8}


def test_order_configs_cover_every_seed_and_order():
    configs = order_configs(RunConfig(benchmark="split-digits", method="finetune"), 3, [0, 5])
    assert [(c.seed, c.order) for c in configs] == [(0, 0), (0, 1), (0, 2), (5, 0), (5, 1), (5, 2)]
    with pytest.raises(ValueError, match="at least 2"):
        order_configs(RunConfig(), 1, [0])


def test_orders_command_table_matches_the_stored_runs(tmp_path, capsys):
    out = tmp_path / "store"
    code = main(["orders", "--benchmark", "split-digits", "--method", "finetune", "--orders", "3",
                 "--param", "train_per_task=60", "--epochs", "1", "--workers", "1", "--out", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    # recompute MOPD from the run directories, aligning tasks by name
    finals = []
    for result_file in sorted(Path(out, "runs").glob("*/result.json")):
        record = json.loads(result_file.read_text())
        finals.append(dict(zip(record["task_names"], record["accuracy_matrix"][-1], strict=True)))
    assert len(finals) == 3 and len({tuple(f) for f in finals}) > 1  # three different orders
    names = sorted(finals[0])
    A = np.array([[f[n] for n in names] for f in finals])
    mopd = 100 * (A.max(0) - A.min(0)).max()
    row = next(line for line in table.splitlines() if line.startswith("| finetune"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["3", "1 x 3"] and cells[4] == "1.00x"
    assert float(cells[5]) == pytest.approx(mopd, abs=0.006)


def test_orders_command_refuses_a_single_order(capsys):
    assert main(["orders", "--benchmark", "split-digits", "--method", "finetune", "--orders", "1"]) == 2
    assert "--orders=1 must be at least 2" in capsys.readouterr().err


def _row(method, acc, capacity, mopd):
    from lifelong.experiments.orders import OrderRow
    return OrderRow(method=method, runs=5, seeds=1, orders=5, acc=acc, acc_std=0.0, mopd=mopd,
                    mopd_std=0.0, aopd=mopd / 2, aopd_std=0.0, capacity=capacity, opd=[])


def test_apd_protocol_goals_pass_and_fail_on_the_right_numbers():
    from lifelong.reproduce import get_protocol
    protocol = dataclasses.replace(get_protocol("apd-order-robustness"), goal_methods=("apd",))
    good = [_row("apd", 0.975, 1.4, 0.010), _row("independent", 0.99, 5.0, 0.02),
            _row("finetune", 0.80, 1.0, 0.15)]
    assert all(line.endswith("**PASS**") for line in protocol.verdicts("b", good))
    bad = [_row("apd", 0.965, 1.6, 0.03), _row("independent", 0.99, 5.0, 0.02)]
    assert [line.rsplit(" ", 1)[-1] for line in protocol.verdicts("b", bad)] == ["**FAIL**"] * 3
    assert all(line.endswith("**NOT RUN**") for line in protocol.verdicts("b", good[1:]))


def test_apd_protocol_runs_every_method_order_and_seed():
    from lifelong.reproduce import get_protocol
    protocol = get_protocol("apd-order-robustness")
    runs = protocol.runs([0, 1])
    assert len(runs) == 3 * len(protocol.available()) * 5 * 2
    assert len({config.key() for config in runs}) == len(runs)
    assert {c.order for c in runs} == {0, 1, 2, 3, 4}


def test_two_settings_of_one_method_get_their_own_rows_and_verdicts():
    from lifelong.reproduce import get_protocol
    protocol = dataclasses.replace(get_protocol("apd-order-robustness"),
                                   goal_methods=("apd", "apd-l1-2e-3"))
    rows = [_row("apd", 0.99, 1.8, 0.02), _row("apd-l1-2e-3", 0.985, 1.3, 0.005),
            _row("independent", 0.99, 5.0, 0.01)]
    verdicts = protocol.verdicts("b", rows)
    assert [line.rsplit(" ", 1)[-1] for line in verdicts] == [
        "**PASS**", "**FAIL**", "**FAIL**",   # apd: accuracy, capacity 1.8x, MOPD above independent's
        "**PASS**", "**PASS**", "**PASS**"]   # the other setting does not compete with apd
