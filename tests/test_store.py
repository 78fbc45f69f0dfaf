import json

from lifelong.experiments.run_config import RunConfig
from lifelong.experiments.store import Store, config_from_dict


def test_config_round_trips_to_the_same_key():
    config = RunConfig(benchmark="split-digits", method="independent", seed=2, order=1,
                       method_params={"lr": "0.1"}, model_params={"hidden": "32,16"})
    again = config_from_dict(config.resolved())
    assert again.key() == config.key()
    assert again.resolved() == config.resolved()


def test_record_query_and_update(tmp_path):
    store = Store(tmp_path)
    a = RunConfig(benchmark="split-digits", method="finetune", seed=0)
    b = RunConfig(benchmark="split-digits", method="joint", seed=1)
    store.record(a, "pending")
    store.record(b, "failed", error="boom", attempt=True)
    store.record(b, "failed", error="boom again", attempt=True)
    store.record(a, "done", {"acc": 0.9, "bwt": -0.1}, attempt=True)
    rows = {r.method: r for r in store.runs()}
    assert rows["finetune"].status == "done" and rows["finetune"].metrics["acc"] == 0.9
    assert rows["joint"].attempts == 2 and rows["joint"].error == "boom again"
    assert rows["finetune"].run_dir.startswith("runs/split-digits-finetune-s0-")
    assert [r.method for r in store.runs(status="failed")] == ["joint"]
    assert rows["joint"].config["seed"] == 1


def test_rebuild_from_run_directories(tmp_path):
    store = Store(tmp_path)
    done = RunConfig(benchmark="split-digits", method="finetune", seed=0)
    partial = RunConfig(benchmark="split-digits", method="joint", seed=0)
    for config, complete in ((done, True), (partial, False)):
        run_dir = store.run_dir(config)
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps({"key": config.key(),
                                                         "config": config.resolved()}))
        if complete:
            (run_dir / "result.json").write_text(json.dumps({"complete": True,
                                                             "metrics": {"acc": 0.75}}))
    (tmp_path / "runs" / "garbage").mkdir()
    (tmp_path / "runs" / "garbage" / "config.json").write_text("{not json")
    assert store.rebuild() == 2
    rows = {r.method: r for r in store.runs()}
    assert rows["finetune"].status == "done" and rows["finetune"].metrics == {"acc": 0.75}
    assert rows["joint"].status == "incomplete"
    assert rows["finetune"].key == done.key()
    (tmp_path / "index.sqlite").unlink()
    assert Store(tmp_path).rebuild() == 2
