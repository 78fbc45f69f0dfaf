"""The ``lifelong`` command. It parses arguments and delegates; the work lives in the library.

    lifelong run                        the demo: the baselines on permuted MNIST (GEM protocol)
    lifelong run --benchmark B --method M [--tasks N] [--seed S] [--epochs E] [--batch-size K]
                 [--lr X] [--param name=value ...] [--out DIR]
    lifelong sweep CONFIG [--executor local|ray] [--workers N] [--address HOST:PORT] [--out DIR]
    lifelong runs STORE [--rebuild]     the runs of a sweep's store, from its SQLite index
    lifelong compare DIR... [--format text|markdown|csv|json]    mean ± 95% CI over seeds
    lifelong report DIR... -o report.html                        one self-contained HTML page
    lifelong reproduce NAME [--seeds 0,1,2] [--record]    a paper protocol beside the paper
    lifelong export RUN_DIR --task T -o task.pt           one task's (pruned) model of a run
    lifelong forget RUN_DIR --task T [-o state.pt]         drop one task of a run (APD)
    lifelong orders --benchmark B --method M [--orders 5] [--seeds 0,1]   order robustness (MOPD)
    lifelong list                       benchmarks, methods and models with their parameters
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lifelong.benchmarks import BENCHMARKS
from lifelong.data import DatasetUnavailableError
from lifelong.experiments import run_in_directory
from lifelong.experiments.run_config import RunConfig, build_stream
from lifelong.loggers import open_loggers, parse_target
from lifelong.methods import METHODS
from lifelong.models import MODELS
from lifelong.params import ParamError
from lifelong.progress import chain, run_progress

#: The main job: the baselines on the GEM permuted-MNIST protocol (about one minute on 2 cores).
DEMO = {"benchmark": "permuted-mnist", "tasks": None, "benchmark_params": {},
        "methods": ("finetune", "frozen", "independent", "joint", "restart")}
SECTIONS = {"method": METHODS, "benchmark": BENCHMARKS, "model": MODELS}


class UsageError(Exception):
    """A bad command line: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump, exit code 2
        raise UsageError(message)


def build_parser() -> Parser:
    parser = Parser(prog="lifelong", description="Continual learning: train on a sequence of "
                    "tasks and measure forgetting, transfer and cost.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    run = commands.add_parser(
        "run", help="run one experiment (with no arguments: the demo comparison of all methods)",
        description="Train method(s) on a benchmark task after task; print ACC/BWT/FWT and write "
        "result.json and accuracy_matrix.csv. With no --benchmark, runs the demo: the baselines "
        f"({', '.join(DEMO['methods'])}) on {DEMO['benchmark']} (GEM protocol: 20 tasks, 1000 "
        "training images each).",
    )
    run.add_argument("--benchmark", choices=BENCHMARKS.names, help="task stream (default: the demo)")
    run.add_argument("--method", default=None, metavar="M[,M...]",
                     help=f"method(s), comma-separated, or 'all' (default: the baselines); one of "
                     f"{', '.join(METHODS.names)}")
    add_training_arguments(run)
    run.add_argument("--seed", type=int, default=0, help="seed of data, init and batches (default 0)")
    run.add_argument("--device", default="cpu", help="torch device (default cpu)")
    run.add_argument("--out", type=Path, help="output directory (default runs/<time>-<benchmark>)")
    run.add_argument("--log", action="append", default=[], metavar="KIND:WHERE",
                     help="also log each task to tensorboard:DIR or mlflow:URI "
                     "(e.g. mlflow:sqlite:///mlflow.db); needs the extra lifelong[tensorboard|mlflow]")
    run.add_argument("--resume", action="store_true",
                     help="continue the run(s) in --out from their last good checkpoint "
                     "(a finished run is not run again)")
    run.add_argument("--quiet", action="store_true", help="no progress output")

    sweep = commands.add_parser(
        "sweep", help="run the grid of runs a YAML config describes",
        description="Run every combination of a YAML config's list-valued fields (benchmarks, "
        "methods and their parameters, seeds, task orders). Finished runs are skipped, "
        "interrupted ones resume; a failing run is retried once and reported.",
    )
    sweep.add_argument("config", type=Path, help="YAML file (see docs/sweeps.md)")
    sweep.add_argument("--executor", choices=["local", "ray"], default="local",
                       help="local: a process pool here (default); ray: a Ray cluster")
    sweep.add_argument("--workers", type=int, help="parallel runs (default: the number of cores)")
    sweep.add_argument("--address", metavar="HOST:PORT",
                       help="join this Ray cluster instead of starting an embedded one")
    sweep.add_argument("--out", type=Path, help="store directory (default sweeps/<config name>)")
    sweep.add_argument("--dry-run", action="store_true", help="validate and list the runs only")

    runs = commands.add_parser("runs", help="list the runs of a store (a sweep's --out)")
    runs.add_argument("store", type=Path)
    runs.add_argument("--rebuild", action="store_true",
                      help="recreate the SQLite index from the run directories first")
    runs.add_argument("--method", help="only this method")
    runs.add_argument("--status", choices=["pending", "done", "failed", "incomplete"])

    compare = commands.add_parser(
        "compare", help="compare finished runs: mean ± 95%% CI per benchmark and method",
        description="A table per benchmark of method x metric (ACC, BWT, FWT, forgetting, time, "
        "memory) as mean ± 95%% confidence interval over seeds and task orders.",
    )
    compare.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                         help="run directories, sweep stores, or any folder above them")
    compare.add_argument("--format", default="text", choices=["text", "markdown", "csv", "json"])

    report = commands.add_parser("report", help="write one self-contained HTML report of finished runs")
    report.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                        help="run directories, sweep stores, or any folder above them")
    report.add_argument("-o", "--output", type=Path, default=Path("report.html"),
                        help="the HTML file to write (default report.html)")
    report.add_argument("--title", help="the page title")

    reproduce = commands.add_parser(
        "reproduce", help="run a paper's protocol over several seeds, beside the paper's numbers",
        description="Run a named paper protocol (a sweep: parallel, resumable) and print ours "
        "(mean ± std over seeds) next to the paper's numbers, with each goal's verdict.",
    )
    reproduce.add_argument("protocol", nargs="?", help="protocol name (see --list)")
    reproduce.add_argument("--list", action="store_true", help="list the protocols")
    reproduce.add_argument("--seeds", help="comma-separated seeds (default: the protocol's)")
    reproduce.add_argument("--workers", type=int, help="parallel runs (default: the number of cores)")
    reproduce.add_argument("--out", type=Path, help="store directory (default reproductions/<name>)")
    reproduce.add_argument("--only", help="comma-separated method names: run only these (the table "
                           "still shows every finished run of the protocol)")
    reproduce.add_argument("--record", action="store_true",
                           help="write the result into REPRODUCTIONS.md")

    export = commands.add_parser(
        "export", help="write one task's model of a run (HAT: its pruned sub-network) to a file",
        description="Rebuild a run's method from its directory and newest checkpoint and save task "
        "T's model (a torch module; load it with torch.load(path, weights_only=False)).",
    )
    export.add_argument("run_dir", type=Path, help="the directory of one run (holds config.json)")
    export.add_argument("--task", type=int, required=True, help="task position in the run's stream")
    export.add_argument("-o", "--output", type=Path, required=True, help="the file to write")

    forget = commands.add_parser(
        "forget", help="drop one task from a saved run (APD), keeping every other task exactly",
        description="Rebuild a run's method from its directory and newest checkpoint, drop task T's "
        "parameters (method.forget), check that every other task scores exactly as before, and "
        "save the method's new state.",
    )
    forget.add_argument("run_dir", type=Path, help="the directory of one run (holds config.json)")
    forget.add_argument("--task", type=int, required=True, help="task position in the run's stream")
    forget.add_argument("-o", "--output", type=Path,
                        help="where to write the new state (default RUN_DIR/forgot-task-T.pt)")

    orders = commands.add_parser(
        "orders", help="run methods under several task orders: accuracy, capacity, MOPD/AOPD",
        description="Train each method on the same stream under --orders task orders (0 is the "
        "stream's own, k > 0 the k-th seeded shuffle) for every seed, as a resumable sweep, and "
        "print the APD paper's order-robustness table: accuracy, capacity (x one network), and "
        "MOPD / AOPD (largest / mean over tasks of max minus min final accuracy over orders).",
    )
    orders.add_argument("--benchmark", required=True, choices=BENCHMARKS.names, help="task stream")
    orders.add_argument("--method", required=True, metavar="M[,M...]",
                        help=f"method(s), comma-separated; one of {', '.join(METHODS.names)}")
    add_training_arguments(orders)
    orders.add_argument("--orders", type=int, default=5, help="number of task orders (default 5)")
    orders.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    orders.add_argument("--device", default="cpu", help="torch device (default cpu)")
    orders.add_argument("--workers", type=int, help="parallel runs (default: the number of cores)")
    orders.add_argument("--out", type=Path, help="store directory (default orders/<benchmark>)")

    commands.add_parser("list", help="show benchmarks, methods and models with their parameters")
    return parser


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``run`` and ``orders`` share: model, tasks, training budget and parameters."""
    parser.add_argument("--model", default="mlp", choices=MODELS.names, help="network (default: mlp)")
    parser.add_argument("--tasks", type=int, help="number of tasks (first N of the stream)")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs per task (default 1); with --valid-fraction, the most a task may take")
    parser.add_argument("--batch-size", type=int, default=10, help="minibatch size (default 10)")
    parser.add_argument("--valid-fraction", type=float, metavar="F",
                        help="hold out F of each task's training set and train with the HAT code's "
                        "schedule: lr divided by --lr-factor after --lr-patience epochs without a "
                        "better validation loss, stop below --lr-min, keep the best epoch's weights "
                        "(the HAT code: 0.15 with --epochs 200)")
    parser.add_argument("--lr-patience", type=int, default=5, help="schedule patience in epochs (default 5)")
    parser.add_argument("--lr-factor", type=float, default=3.0, help="schedule lr divisor (default 3)")
    parser.add_argument("--lr-min", type=float, default=1e-4,
                        help="schedule stops below this lr (default 1e-4)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the method's)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="any method, benchmark or model parameter (see `lifelong list`); "
                        "prefix with method./benchmark./model. when a name is ambiguous")


def schedule_of(args: argparse.Namespace) -> dict[str, float] | None:
    """The validation schedule the options ask for (None without --valid-fraction)."""
    if args.valid_fraction is None:
        return None
    return {"valid_fraction": args.valid_fraction, "lr_patience": args.lr_patience,
            "lr_factor": args.lr_factor, "lr_min": args.lr_min}


def method_names(spec: str, model: str = "mlp") -> list[str]:
    """``M[,M...]`` or ``all`` as registered method names (a ParamError names the allowed ones);
    ``all`` leaves out the methods built for another model than ``model``."""
    if spec == "all":
        return [name for name in METHODS.names
                if METHODS.get(name).requires_model in (None, model)]
    names = [m.strip() for m in spec.split(",") if m.strip()]
    for name in names:
        METHODS.get(name)
    return names


def training_configs(args: argparse.Namespace, benchmark: str, methods: Sequence[str],
                     bench_defaults: dict[str, Any] | None = None,
                     tasks: int | None = None) -> list[RunConfig]:
    """One validated `RunConfig` per method from the shared training options."""
    routed = split_params(args.param, methods, benchmark, args.model)
    bench_params = {**(bench_defaults or {}), **routed["benchmark"]}
    configs = []
    for name in methods:
        own = {p.name for p in METHODS.params(name)}
        method_params = {k: v for k, v in routed["method"].items() if k in own}
        if args.lr is not None:
            method_params["lr"] = args.lr
        config = RunConfig(benchmark=benchmark, method=name, model=args.model,
                           benchmark_params=bench_params, method_params=method_params,
                           model_params=routed["model"], tasks=tasks, epochs=args.epochs,
                           batch_size=args.batch_size, seed=getattr(args, "seed", 0),
                           device=args.device, schedule=schedule_of(args))
        config.resolved()  # validate every config before any work starts
        configs.append(config)
    return configs


def split_params(pairs: Sequence[str], methods: Sequence[str], benchmark: str, model: str):
    """Route ``name=value`` pairs to the method, benchmark or model that has that parameter."""
    routed: dict[str, dict[str, Any]] = {"method": {}, "benchmark": {}, "model": {}}
    owners = {
        "method": {p.name for m in methods for p in METHODS.params(m)},
        "benchmark": {p.name for p in BENCHMARKS.params(benchmark)},
        "model": {p.name for p in MODELS.params(model)},
    }
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ParamError(f"--param {pair!r} must look like name=value")
        section, dot, short = name.partition(".")
        if dot and section in owners:
            candidates = [section] if short in owners[section] else []
            name = short
        else:
            candidates = [s for s, names in owners.items() if name in names]
        if not candidates:
            allowed = sorted(set().union(*owners.values()))
            raise ParamError(f"--param {name!r} is not a parameter of {', '.join(methods)}, "
                             f"{benchmark} or {model}; allowed: {', '.join(allowed)}")
        if len(candidates) > 1:
            raise ParamError(f"--param {name!r} is ambiguous; write "
                             + " or ".join(f"{c}.{name}" for c in candidates))
        routed[candidates[0]][name] = value
    return routed


def command_run(args: argparse.Namespace) -> int:
    demo = args.benchmark is None
    benchmark = DEMO["benchmark"] if demo else args.benchmark
    methods = list(DEMO["methods"]) if args.method is None else method_names(args.method, args.model)
    tasks = args.tasks if args.tasks is not None else (DEMO["tasks"] if demo else None)
    configs = training_configs(args, benchmark, methods,
                               DEMO["benchmark_params"] if demo else None, tasks)
    for spec in args.log:
        parse_target(spec)  # a bad --log fails before any work
    if args.resume and args.out is None:
        raise UsageError("--resume needs --out DIR: the directory of the run to continue")
    out = args.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{benchmark}"
    stream = build_stream(configs[0])
    print(f"{benchmark}: {stream.n_tasks} tasks, scenario {stream.scenario}, "
          f"{len(stream[0].y_train)} training / {len(stream[0].y_test)} test examples per task")
    rows = []
    for config in configs:
        run_dir = out / config.method if len(configs) > 1 else out
        name = f"{benchmark}-{config.method}-s{config.seed}"
        with run_progress(config.method, enabled=not args.quiet) as progress, \
                open_loggers(args.log, name, config.resolved()) as log:
            result = run_in_directory(config, run_dir, resume=args.resume, stream=stream,
                                      progress=chain(progress, log))
        rows.append((config.method, result))
    print_table(rows)
    print(f"results written to {out}")
    return 0


def print_table(rows: list[tuple[str, Any]]) -> None:
    header = f"{'method':<12} {'ACC':>7} {'BWT':>7} {'FWT':>7} {'forget':>7} {'time s':>7} {'peak MB':>8}"
    extra = next((r.other_kind for _, r in rows if r.other_kind), None)
    if extra:
        header += f" {'ACC ' + extra.replace('_', '-'):>20}"
    print(header)
    for name, result in rows:
        m = result.to_dict()["metrics"]
        seconds = result.total_seconds
        line = (f"{name:<12} {m['acc']:>7.3f} {m['bwt']:>+7.3f} {m['fwt']:>+7.3f} "
                f"{m['forgetting']:>7.3f} {seconds:>7.1f} {result.peak_memory_mb:>8.0f}")
        if extra:
            value = m.get(f"acc_{extra}")
            line += f" {value:>20.3f}" if value is not None else f" {'n/a':>20}"
        print(line)


def command_sweep(args: argparse.Namespace) -> int:
    from lifelong.experiments.config import expand, load_config
    from lifelong.experiments.sweep import describe, run_sweep

    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers={args.workers} must be at least 1")
    if args.address and args.executor != "ray":
        raise UsageError("--address is for --executor ray")
    runs = expand(load_config(args.config))
    out = args.out or Path("sweeps") / args.config.stem
    if args.dry_run:
        for config in runs:
            print(describe(config))
        print(f"{len(runs)} runs; nothing was run (--dry-run)")
        return 0
    workers = args.workers or (os.cpu_count() or 1)
    summary = run_sweep(runs, out, executor=args.executor, workers=workers, address=args.address,
                        config_file=args.config)
    for config, error in summary.failed:
        print(f"FAILED {describe(config)}: {error}", file=sys.stderr)
    print(f"{len(summary.done)} runs done, {len(summary.cached)} already done, "
          f"{len(summary.failed)} failed; store: {out}")
    return 0 if summary.ok else 1


def command_runs(args: argparse.Namespace) -> int:
    from lifelong.experiments.store import INDEX, Store

    if not (args.store / INDEX).exists() and not (args.store / "runs").is_dir():
        raise UsageError(f"{args.store} is not a store (no {INDEX} or runs/ directory)")
    store = Store(args.store)
    if args.rebuild:
        print(f"index rebuilt: {store.rebuild()} runs", file=sys.stderr)
    where = {k: v for k, v in (("method", args.method), ("status", args.status)) if v}
    records = store.runs(**where)
    print(f"{'status':<10} {'benchmark':<20} {'method':<12} {'seed':>4} {'ACC':>7} {'BWT':>7}  run")
    for r in records:
        acc = f"{r.metrics['acc']:.3f}" if r.metrics else "-"
        bwt = f"{r.metrics['bwt']:+.3f}" if r.metrics else "-"
        print(f"{r.status:<10} {r.benchmark:<20} {r.method:<12} {r.seed:>4} {acc:>7} {bwt:>7}  "
              f"{r.run_dir}")
    print(f"{len(records)} runs")
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from lifelong.report import compare

    print(compare(args.dirs, args.format), end="")
    return 0


def command_report(args: argparse.Namespace) -> int:
    from lifelong.report import write_report

    print(f"report written to {write_report(args.dirs, args.output, title=args.title)}")
    return 0


def command_reproduce(args: argparse.Namespace) -> int:
    from lifelong.experiments.sweep import run_sweep
    from lifelong.reproduce import PROTOCOLS, get_protocol, record_section

    if args.list or not args.protocol:
        for name, protocol in PROTOCOLS.items():
            print(f"{name:<24} {protocol.paper}")
        return 0
    protocol = get_protocol(args.protocol)
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(protocol.seeds)
    except ValueError:
        raise UsageError(f"--seeds={args.seeds!r} must be comma-separated integers") from None
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers={args.workers} must be at least 1")
    missing = protocol.missing_methods()
    if missing:
        print(f"not in the library yet, skipped: {', '.join(missing)}", file=sys.stderr)
    runs = protocol.runs(seeds)
    if args.only:
        only = set(args.only.split(","))
        unknown = only - {config.method for config in runs}
        if unknown:
            raise UsageError(f"--only {','.join(sorted(unknown))}: not a method of {protocol.name}; "
                             f"its methods: {', '.join(sorted({c.method for c in runs}))}")
        runs = [config for config in runs if config.method in only]
    for config in runs:
        config.resolved()
    out = args.out or Path("reproductions") / protocol.name
    summary = run_sweep(runs, out, workers=args.workers or (os.cpu_count() or 1))
    table = protocol.table(out, seeds)
    print(f"{protocol.name}: {protocol.paper}\n{protocol.protocol}\n\n{table}")
    if args.record:
        command = f"lifelong reproduce {protocol.name} --seeds {','.join(map(str, seeds))}"
        record_section(Path("REPRODUCTIONS.md"), protocol, seeds, table, command)
        print("recorded in REPRODUCTIONS.md")
    return 0 if summary.ok else 1


def command_orders(args: argparse.Namespace) -> int:
    from lifelong.experiments.orders import order_configs, order_rows, render_order_table
    from lifelong.experiments.sweep import run_sweep

    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise UsageError(f"--seeds={args.seeds!r} must be comma-separated integers") from None
    if args.orders < 2:
        raise UsageError(f"--orders={args.orders} must be at least 2 (disparity needs two orders)")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers={args.workers} must be at least 1")
    methods = method_names(args.method, args.model)
    bases = training_configs(args, args.benchmark, methods, tasks=args.tasks)
    runs = [config for base in bases for config in order_configs(base, args.orders, seeds)]
    out = args.out or Path("orders") / args.benchmark
    summary = run_sweep(runs, out, workers=args.workers or (os.cpu_count() or 1))
    print(f"{args.benchmark}: {args.orders} task orders x seeds {','.join(map(str, seeds))}; "
          f"ACC and capacity: mean over runs; MOPD / AOPD in accuracy points, per seed, mean ± std")
    print(render_order_table(order_rows(out, runs)))
    return 0 if summary.ok else 1


def command_forget(args: argparse.Namespace) -> int:
    from lifelong.experiments.forget import forget_task

    facts = forget_task(args.run_dir, args.task, args.output)
    print(f"{facts['method']}: forgot task {facts['task']} ({facts['name']}); parameters "
          f"{facts['parameters'][0]} -> {facts['parameters'][1]}")
    for name, (before, after) in facts["tasks"].items():
        print(f"  {name:<24} accuracy {before:.4f} -> {after:.4f}")
    print(f"every other task {'unchanged' if facts['unchanged'] else 'CHANGED'}; "
          f"state written to {facts['path']}")
    return 0 if facts["unchanged"] else 1


def command_export(args: argparse.Namespace) -> int:
    from lifelong.experiments.export import export_task_model

    facts = export_task_model(args.run_dir, args.task, args.output)
    print(f"task {facts['task']} ({facts['name']}) of {facts['method']}: {facts['parameters']} "
          f"parameters, {facts['outputs']} outputs, written to {facts['path']}")
    return 0


def command_list(args: argparse.Namespace) -> int:
    for title, registry in (("benchmarks", BENCHMARKS), ("methods", METHODS), ("models", MODELS)):
        print(f"{title}:")
        print(registry.describe())
        print()
    return 0


#: Ray reads these when it is imported: loopback only, no auth token, no usage stats (INFRA.md)
RAY_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                   "RAY_USAGE_STATS_ENABLED": "0"}


def main(argv: Sequence[str] | None = None) -> int:
    for name, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        commands = {"run": command_run, "sweep": command_sweep, "runs": command_runs,
                    "compare": command_compare, "report": command_report,
                    "reproduce": command_reproduce, "export": command_export, "orders": command_orders,
                    "forget": command_forget,
                    "list": command_list}
        return commands[args.command](args)
    except (UsageError, ParamError, ValueError) as error:  # bad input: one line, exit code 2
        print(f"lifelong: error: {error}", file=sys.stderr)
        return 2
    except DatasetUnavailableError as error:  # says where it looked and how to get the data
        print(f"lifelong: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lifelong: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
