"""CTR's text protocol: its run configs, its table from stored results, its goals' verdicts; and
(slow) the whole protocol end to end on the tiny random BERT."""

import json
import re

import numpy as np
import pytest

from lifelong.engine import Result
from lifelong.experiments.run_config import result_record
from lifelong.experiments.store import Store
from lifelong.reproduce_text import (
    CPU_SCALE,
    CTR_PROTOCOLS,
    PAPER_SCALE,
    SCALE,
    TextMethod,
    TextRow,
    benchmark_scale,
    ctr_protocol,
)

PROTOCOL = CTR_PROTOCOLS["ctr-20news"]
BENCH = PROTOCOL.benchmarks[0]
LABELS = ["ctr", "adapter-hat", "adapter", "adapter-one", "finetune", "independent", "joint",
          "ewc", "agem", "replay", "hat"]


def test_protocols_cover_both_benchmarks_at_the_cpu_scale():
    assert SCALE is CPU_SCALE
    assert set(CTR_PROTOCOLS) == {"ctr-20news", "ctr-tweet-domains"}
    assert CTR_PROTOCOLS["ctr-tweet-domains"].benchmarks[0].benchmark == "tweet-domains"
    assert [m.name for m in PROTOCOL.methods] == LABELS
    assert PROTOCOL.missing_methods() == []
    with pytest.raises(ValueError, match="20news or tweet-domains"):
        ctr_protocol("permuted-mnist")


def test_run_configs_are_every_method_seed_and_order_with_its_own_model_params():
    assert PROTOCOL.seeds == (0,) and len(PROTOCOL.runs(PROTOCOL.seeds)) == len(LABELS) * 2
    runs = PROTOCOL.runs((0, 1))
    assert len(runs) == len(LABELS) * 2 * 2  # methods x seeds x orders
    assert len({config.key() for config in runs}) == len(runs)  # no two runs compute the same
    by_method = {}
    for config in runs:
        by_method.setdefault(config.method, []).append(config)
        assert config.benchmark == "20news" and config.model == "transformer"
        assert config.epochs == CPU_SCALE["epochs"] and config.batch_size == CPU_SCALE["batch_size"]
        assert config.benchmark_params == {"max_length": 64, "train_per_task": 160, "test_per_task": 100}
        assert config.model_params["encoder"] is None and config.model_params["pooling"] == "mean"
    for name, configs in by_method.items():
        assert sorted((c.seed, c.order) for c in configs) == [(0, 0), (0, 1), (1, 0), (1, 1)], name
    model = {name: configs[0].resolved()["model_params"] for name, configs in by_method.items()}
    method = {name: configs[0].resolved()["method_params"] for name, configs in by_method.items()}
    for name in ("finetune", "independent", "joint"):  # the whole encoder trains
        assert model[name]["freeze"] is False and model[name]["hidden"] == []
        assert method[name]["lr"] == CPU_SCALE["encoder_lr"] and method[name]["optimizer"] == "adam"
    for name in ("ewc", "agem", "replay", "hat"):  # a (gated) hidden layer on the frozen encoder
        assert model[name]["freeze"] is True and model[name]["hidden"] == [400]
        assert method[name]["lr"] == CPU_SCALE["frozen_lr"]
    for name in ("ctr", "adapter", "adapter-one", "adapter-hat"):  # plugins in the frozen encoder
        assert model[name]["freeze"] is True and model[name]["hidden"] == []
        assert method[name]["lr"] == CPU_SCALE["plugin_lr"]
    assert method["ctr"]["adapter_size"] == 2000  # the CTR code's default, kept


def test_the_paper_scale_is_one_dict_away():
    paper = ctr_protocol("20news", PAPER_SCALE)
    config = paper.runs(paper.seeds)[0]
    assert config.benchmark_params == {"max_length": 128, "train_per_task": None, "test_per_task": None}
    assert config.model_params["encoder"] == "bert-base-uncased" and config.epochs == 20
    assert config.method_params["lr"] == 5e-5
    assert len(paper.runs(paper.seeds)) == len(LABELS) * 5  # 1 seed x 5 orders
    assert "128 tokens, 20 epochs" in paper.protocol and "bert-base-uncased" in paper.protocol


def _row(label, acc, f1=None):
    return TextRow(label=label, seeds=1, orders=1, acc=[acc], macro_f1=[acc if f1 is None else f1],
                   seconds_per_step=1.0, seconds_per_task=10.0, seconds_per_run=60.0)


def _verdicts(accs):
    rows = {label: _row(label, acc) for label, acc in accs.items() if acc is not None}
    return [line.rsplit("**", 2)[1] for line in PROTOCOL.verdicts("20news", rows)]


def test_verdicts_on_hand_made_rows():
    good = {"ctr": 0.95, "joint": 0.965, "finetune": 0.70, "adapter": 0.70, "adapter-hat": 0.94,
            "ewc": 0.90, "independent": 0.99, "adapter-one": 0.99}  # ONE above CTR: not continual
    assert _verdicts(good) == ["PASS", "PASS", "PASS", "PASS"]
    assert _verdicts({**good, "joint": 0.975}) == ["FAIL", "PASS", "PASS", "PASS"]  # 2.5 below MTL
    assert _verdicts({**good, "joint": 0.97}) == ["PASS", "PASS", "PASS", "PASS"]  # exactly 2 points
    assert _verdicts({**good, "hat": 0.951}) == ["PASS", "FAIL", "PASS", "PASS"]  # continual above
    # one verdict per naive baseline: finetune, then adapter
    assert _verdicts({**good, "finetune": 0.86}) == ["PASS", "PASS", "FAIL", "PASS"]  # only 9 below
    assert _verdicts({**good, "finetune": 0.85}) == ["PASS", "PASS", "PASS", "PASS"]  # exactly 10
    assert _verdicts({**good, "adapter": 0.86}) == ["PASS", "PASS", "PASS", "FAIL"]
    assert _verdicts({**good, "adapter": None}) == ["PASS", "PASS", "PASS", "NOT RUN"]
    assert _verdicts({"joint": 0.9}) == ["NOT RUN"] * 4
    assert _verdicts({"ctr": 0.9, "joint": 0.9}) == ["PASS", "NOT RUN", "NOT RUN", "NOT RUN"]


def _store_result(store, config, final_row, f1_row, seconds=(20.0, 30.0), steps=(10, 10)):
    """A finished 2-task result of ``config`` in the store, its last row ``final_row``."""
    R = np.array([[final_row[0], 0.5], list(final_row)])
    result = Result(accuracy_matrix=R, untrained_accuracy=np.array([0.5, 0.5]),
                    task_names=["a", "b"], scenario="task", train_seconds=list(seconds),
                    eval_seconds=[1.0, 1.0], train_loss=[0.5, 0.4], epochs_run=[3, 3],
                    train_steps=list(steps), method_memory=[{}, {}],
                    f1_matrix=np.array([[f1_row[0], 0.4], list(f1_row)]))
    run_dir = Store(store).run_dir(config)
    run_dir.mkdir(parents=True)
    record = result_record(config, result)
    (run_dir / "result.json").write_text(json.dumps(record))


def test_table_from_stored_results(tmp_path):
    labelled = PROTOCOL.labelled_runs(BENCH, seeds=(0, 1))
    values = {"ctr": [(0.9, 1.0), (0.8, 1.0), (0.9, 0.9), (1.0, 1.0)],  # ACC .95, .9, .9, 1
              "joint": [(1.0, 1.0)] * 4, "finetune": [(0.5, 0.7)] * 3}  # finetune: 3 runs finished
    done = {}
    for label, config in labelled:
        if values.get(label) and len(done.setdefault(label, [])) < len(values[label]):
            final = values[label][len(done[label])]
            _store_result(tmp_path, config, final, f1_row=(final[0] - 0.1, final[1] - 0.1))
            done[label].append(config)
    rows = PROTOCOL.rows(tmp_path, BENCH, seeds=(0, 1))
    assert set(rows) == {"ctr", "joint", "finetune"}
    assert rows["ctr"].acc == pytest.approx([0.95, 0.9, 0.9, 1.0])
    assert rows["ctr"].macro_f1 == pytest.approx([0.85, 0.8, 0.8, 0.9])
    assert (rows["ctr"].seeds, rows["ctr"].orders) == (2, 2)
    assert rows["ctr"].seconds_per_step == pytest.approx(50 / 20)
    assert rows["ctr"].seconds_per_task == pytest.approx(25.0)
    assert rows["ctr"].seconds_per_run == pytest.approx(52 / 1.0)  # train + eval seconds
    table = PROTOCOL.table(tmp_path, seeds=(0, 1))
    std = np.std([95, 90, 90, 100], ddof=1)
    assert (f"| ctr | CL-plugins in the frozen encoder (KSM + HAT-masked TSM) | 4 (2 x 2) | "
            f"93.75 ± {std:.2f} | 83.75 ± {std:.2f} | 95.25 | 2.50 | 25 | 0.9 |") in table
    assert ("| finetune | NCL: whole encoder fine-tuned | 3 (2 x 2) | 60.00 ± 0.00 | 50.00 ± 0.00 | - |"
            in table)
    assert "| hat | frozen encoder + gated hidden layer + head | - | (no finished run) | | - | | | |" in table
    assert "| joint | MTL: whole encoder on all tasks so far | 4 (2 x 2) | 100.00 ± 0.00 |" in table
    # ctr 93.75 vs joint 100: 6.25 points below MTL; of the continual methods only finetune ran
    assert "ctr ACC at most 2 points below joint (MTL): **FAIL**" in table
    assert re.search(r"ctr ACC above every other continual method \(.*\): \*\*PASS\*\*", table)
    assert "finetune (NCL) ACC at least 10 points below ctr: **PASS**" in table
    assert "adapter (NCL) ACC at least 10 points below ctr: **NOT RUN**" in table


def test_a_text_method_carries_its_model_params_and_label():
    method = TextMethod("finetune", {"lr": 0.01}, model_params={"freeze": False}, continual=True)
    assert method.name == "finetune" and method.model_params == {"freeze": False}
    config = PROTOCOL.base(BENCH, method)
    assert config.model_params == {"encoder": None, "pooling": "mean", "freeze": False}


# ------------------------------------------------------------------------------- slow: end to end
TINY_SCALE = {**CPU_SCALE, "encoder": "tiny", "tasks": 2, "seeds": (0,), "n_orders": 2,
              "train_per_task": 16, "test_per_task": 8, "epochs": 1, "batch_size": 8,
              "hidden": (16,), "per_benchmark": {}}


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", ["20news", "tweet-domains"])
def test_the_protocol_runs_end_to_end_on_the_tiny_bert(benchmark, tmp_path):
    from lifelong.experiments.sweep import run_sweep

    protocol = ctr_protocol(benchmark, TINY_SCALE)
    runs = protocol.runs(protocol.seeds)
    assert len(runs) == len(LABELS) * 2
    summary = run_sweep(runs, tmp_path, workers=1, say=lambda line: None)
    assert summary.ok
    table = protocol.table(tmp_path, protocol.seeds)
    for label in LABELS:
        line = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        assert cells[2] == "2 (1 x 2)", line
        for cell in cells[3:5]:  # ACC and macro-F1: mean ± std in percent
            mean, std = (float(v) for v in cell.split(" ± "))
            assert 0.0 <= mean <= 100.0 and 0.0 <= std <= 100.0, line
    assert table.count("- Goal:") == 4 and "NOT RUN" not in table


def test_tweet_domains_takes_its_own_settings_over_the_common_scale():
    tweets = CTR_PROTOCOLS["ctr-tweet-domains"]
    config = tweets.runs(tweets.seeds)[0]
    assert config.benchmark_params == {"max_length": 48, "train_per_task": 640, "test_per_task": 100}
    assert config.epochs == 1 and tweets.epochs == 1
    assert "640 training and 100 test" in tweets.protocol and "48 tokens, 1 epoch of batch 32" in tweets.protocol
    news = CTR_PROTOCOLS["ctr-20news"].runs((0,))[0]  # 20news keeps the common settings
    assert news.benchmark_params["train_per_task"] == 160 and news.epochs == 3
    # a scale without per-benchmark changes applies to every benchmark as it is
    assert ctr_protocol("tweet-domains", PAPER_SCALE).runs((0,))[0].benchmark_params["max_length"] == 128
    assert benchmark_scale({"epochs": 3}, "tweet-domains") == {"epochs": 3}
