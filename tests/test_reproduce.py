import statistics

from lifelong.experiments.sweep import run_sweep
from lifelong.reproduce import (
    PROTOCOLS,
    MethodSetting,
    Protocol,
    above,
    collect,
    near,
    record_section,
    summary_table,
)

TINY = Protocol(
    name="tiny-digits", paper="A paper", protocol="split digits, 60 images per task",
    benchmark="split-digits", benchmark_params={"train_per_task": 60},
    methods=(MethodSetting("finetune", {"lr": 0.1}), MethodSetting("independent", {"lr": 0.1}),
             MethodSetting("not-a-method")),
    paper_numbers={"independent": {"acc": 0.9}},
    goals=(near("independent", "acc", 0.9, 0.5), above("independent", ["finetune"]),
           near("not-a-method", "acc", 0.5, 0.1)),
    seeds=(0, 1),
)


def test_protocol_runs_collect_and_table(tmp_path):
    runs = TINY.runs([0, 1])
    assert [(r.method, r.seed) for r in runs] == [("finetune", 0), ("finetune", 1),
                                                    ("independent", 0), ("independent", 1)]
    assert TINY.missing_methods() == ["not-a-method"]
    assert run_sweep(runs, tmp_path, workers=2, say=lambda _: None).ok
    results = collect(tmp_path, runs)
    assert sorted(results) == ["finetune", "independent"] and len(results["finetune"]["acc"]) == 2
    table = summary_table(TINY, results)
    mean = statistics.mean(results["independent"]["acc"])
    sd = statistics.stdev(results["independent"]["acc"])
    assert f"| independent | 2 | 0.900 | {mean:.3f} ± {sd:.3f} |" in table
    assert "| not-a-method | - | - | (not in the library yet)" in table
    assert "- Goal: independent ACC within 50 points of 0.900: **PASS**" in table
    assert "- Goal: not-a-method ACC within 10 points of 0.500: **NOT RUN**" in table
    verdict = mean > statistics.mean(results["finetune"]["acc"])
    assert f"independent ACC above finetune: **{'PASS' if verdict else 'FAIL'}**" in table


def test_record_section_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "REPRODUCTIONS.md"
    path.write_text("# Reproductions\n\nIntro.\n\n## other\n\nkeep me\n")
    record_section(path, TINY, [0, 1], "| a | b |", "lifelong reproduce tiny-digits")
    record_section(path, TINY, [0, 1], "| c | d |", "lifelong reproduce tiny-digits")
    text = path.read_text()
    assert text.count("## tiny-digits") == 1 and "| c | d |" in text and "| a | b |" not in text
    assert "## other\n\nkeep me" in text and text.startswith("# Reproductions\n\nIntro.")
    assert "Seeds: 0, 1. Command: `lifelong reproduce tiny-digits`" in text


def test_shipped_protocols_are_valid_configs():
    for protocol in PROTOCOLS.values():
        for config in protocol.runs([0]):
            config.resolved()
    gem = PROTOCOLS["gem-permuted-mnist"]
    assert gem.paper_numbers["gem"]["acc"] == 0.83
    assert {"finetune", "independent", "gem"} <= {m.method for m in gem.methods}
