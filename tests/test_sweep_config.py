import re

import pytest
import yaml

from lifelong.experiments.config import ConfigError, expand, load_config


def runs_of(text):
    return expand(yaml.safe_load(text))


def test_three_line_config():
    runs = runs_of("benchmark: split-digits\nmethods: [finetune, independent]\nseeds: [0, 1]\n")
    assert [(r.benchmark, r.method, r.seed) for r in runs] == [
        ("split-digits", "finetune", 0), ("split-digits", "independent", 0),
        ("split-digits", "finetune", 1), ("split-digits", "independent", 1)]
    assert len({r.key() for r in runs}) == 4


def test_every_list_is_a_grid_and_tuple_params_take_flat_lists():
    runs = runs_of("""
benchmark: split-digits
methods: [finetune, {name: independent, lr: [0.01, 0.1]}]
method_params: {lr: 0.5}
model_params: {hidden: [[100, 100], [64]]}
benchmark_params: {train_per_task: [50, 100]}
epochs: [1, 2]
orders: 2
""")
    # finetune: 1 lr; independent: 2 lrs -> 3 method variants; x 2 hidden x 2 sizes x 2 epochs x 2 orders
    assert len(runs) == 3 * 2 * 2 * 2 * 2
    finetune = [r for r in runs if r.method == "finetune"]
    assert {r.method_params["lr"] for r in finetune} == {0.5}
    assert {r.method_params["lr"] for r in runs if r.method == "independent"} == {0.01, 0.1}
    assert {tuple(r.model_params["hidden"]) for r in runs} == {(100, 100), (64,)}
    assert {r.order for r in runs} == {0, 1}
    flat = runs_of("benchmark: split-digits\nmethods: finetune\nmodel_params: {hidden: [32, 16]}")
    assert len(flat) == 1 and flat[0].resolved()["model_params"]["hidden"] == [32, 16]


def test_explicit_orders_and_singular_spellings():
    runs = runs_of("benchmark: split-digits\nmethod: finetune\nseed: 3\norders: [[4, 3, 2, 1, 0]]")
    assert len(runs) == 1 and runs[0].order == [4, 3, 2, 1, 0] and runs[0].seed == 3


@pytest.mark.parametrize("text, message", [
    ("methods: [finetune]", "field 'benchmark' is required"),
    ("benchmark: split-digits", "field 'methods' is required"),
    ("benchmark: nope\nmethods: [finetune]",
     "benchmark='nope' is unknown; allowed values: 20news, mixture, permuted-mnist"),
    ("benchmark: split-digits\nmethods: [nope]",
     "methods[0]='nope' is unknown; allowed values: adapter, adapter-hat"),
    ("benchmark: split-digits\nmethods: [finetune]\nsedes: [1]", "unknown field 'sedes'; allowed fields:"),
    ("benchmark: split-digits\nmethods: [finetune]\nseed: 1\nseeds: [2]", "'seed' and 'seeds' say the same"),
    ("benchmark: split-digits\nmethods: [{name: finetune, lr: abc}]", "lr='abc' is not a float"),
    ("benchmark: split-digits\nmethods: [{name: finetune, lrr: 1}]", "has no parameter 'lrr'; allowed: lr"),
    ("benchmark: split-digits\nmethods: [finetune]\nbenchmark_params: {scenario: domain}",
     "scenario='domain' is not allowed; allowed values: task, class"),
    ("benchmark: split-digits\nmethods: [finetune]\nmodel_params: {hidden: [[100, -1]]}",
     "hidden=(100, -1) is out of range; allowed: >= 1"),
    ("benchmark: split-digits\nmethods: [finetune]\nmethod_params: {momentum: 0.9}",
     "no method of this config has a parameter 'momentum'"),
    ("benchmark: split-digits\nmethods: [finetune]\nepochs: 0", "epochs=0 must be at least 1"),
    ("benchmark: split-digits\nmethods: [finetune]\ndevice: gpu0", "device='gpu0' is not a torch device"),
    ("benchmark: split-digits\nmethods: [finetune]\norders: 0", "orders=0 must be at least 1"),
])
def test_invalid_configs_name_the_field(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        runs_of(text)


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("benchmark: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(tmp_path / "bad.yaml")
