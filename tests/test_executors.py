"""Executors run real torch jobs on local processes and on Ray, survive crashing jobs and never hang."""

from __future__ import annotations

import os

for _name, _value in {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                      "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}.items():
    os.environ.setdefault(_name, _value)   # before anything imports ray: sockets on 127.0.0.1 only

import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from lifelong.experiments.executors import (  # noqa: E402
    WORKER_DIED,
    JobFailed,
    LocalExecutor,
    RayExecutor,
    default_threads,
    make_executor,
)

SPECS = [{"seed": seed} for seed in range(4)]
TIMEOUT_S = 120


# Jobs: top-level functions, so that spawned processes and Ray workers can import them.

def train(spec: dict) -> dict:
    """A few SGD steps of a seeded linear model: a deterministic answer that needs real torch work."""
    torch.manual_seed(spec["seed"])
    model = torch.nn.Linear(8, 1)
    x = torch.randn(64, 8)
    y = x @ torch.arange(8.0).unsqueeze(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return {"seed": spec["seed"], "weight_sum": float(sum(p.detach().sum() for p in model.parameters())),
            "threads": torch.get_num_threads()}


def train_or_raise(spec: dict) -> dict:
    if spec["seed"] == 2:
        raise ValueError(f"seed {spec['seed']} is cursed")
    return train(spec)


def train_or_die(spec: dict) -> dict:
    if spec["seed"] == 1:
        time.sleep(0.3)                       # let the other worker pick up its job first
        os.kill(os.getpid(), signal.SIGKILL)
    return train(spec)


def die_once(spec: dict) -> dict:
    """Seed 1 kills its worker on its first call, while seed 0 runs beside it (as if memory ran out)."""
    folder = Path(spec["dir"])
    with open(folder / f"calls-{spec['seed']}", "a") as calls:
        calls.write("call\n")
    died, started = folder / "died", folder / "seed-0-started"
    if spec["seed"] == 0 and not died.exists():
        started.touch()
        time.sleep(60)                        # killed with the pool long before this ends
    if spec["seed"] == 1 and not died.exists():
        while not started.exists():
            time.sleep(0.01)
        died.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return train(spec)


def unpicklable_result(spec: dict) -> dict:
    return {"seed": spec["seed"], "fn": lambda: None}


def not_a_dict(spec: dict) -> list:
    return [spec["seed"]]


def expected(spec: dict, threads: int) -> dict:
    return {**train(spec), "threads": threads}


@contextmanager
def deadline(seconds: int = TIMEOUT_S):
    """Fail the test instead of hanging if the block takes longer than ``seconds``."""
    def expire(signum, frame):
        raise TimeoutError(f"no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def collect(executor, fn, specs) -> dict:
    """All outcomes by spec index, checking that each spec gets exactly one."""
    outcomes = {}
    with deadline():
        for index, outcome in executor.map_unordered(fn, specs):
            assert index not in outcomes
            outcomes[index] = outcome
    assert sorted(outcomes) == list(range(len(specs)))
    return outcomes


@pytest.fixture(scope="module")
def local():
    with make_executor("local", workers=2, threads_per_worker=1) as executor:
        yield executor


@pytest.fixture(scope="module")
def embedded_ray():
    pytest.importorskip("ray")
    with make_executor("ray", workers=2, threads_per_worker=1) as executor:
        yield executor


def test_local_and_ray_give_the_same_real_results(local, embedded_ray):
    from_local = collect(local, train, SPECS)
    from_ray = collect(embedded_ray, train, SPECS)
    assert from_local == from_ray == {i: expected(spec, threads=1) for i, spec in enumerate(SPECS)}
    assert len({outcome["weight_sum"] for outcome in from_local.values()}) == 4   # seeds matter


def test_default_threads_split_the_cpus_between_workers():
    cpus = len(os.sched_getaffinity(0))
    assert default_threads(1) == cpus
    assert default_threads(cpus) == 1
    assert default_threads(4 * cpus) == 1
    assert LocalExecutor(workers=1).threads == cpus
    assert LocalExecutor(workers=2, threads_per_worker=3).threads == 3


def test_one_local_worker_runs_jobs_with_the_default_threads():
    with make_executor("local", workers=1) as executor:
        outcomes = collect(executor, train, SPECS[:2])
    assert outcomes == {0: expected(SPECS[0], default_threads(1)), 1: expected(SPECS[1], default_threads(1))}


@pytest.mark.parametrize("executor_name", ["local", "embedded_ray"])
def test_a_job_that_raises_fails_alone(executor_name, request):
    outcomes = collect(request.getfixturevalue(executor_name), train_or_raise, SPECS)
    failure = outcomes.pop(2)
    assert isinstance(failure, JobFailed)
    assert failure.spec_index == 2
    assert failure.message == "ValueError: seed 2 is cursed"
    assert str(failure) == "job 2 failed: ValueError: seed 2 is cursed"
    assert 'raise ValueError(f"seed {spec[\'seed\']} is cursed")' in failure.traceback
    assert "in train_or_raise" in failure.traceback
    assert outcomes == {i: expected(SPECS[i], threads=1) for i in (0, 1, 3)}


@pytest.mark.parametrize("executor_name", ["local", "embedded_ray"])
def test_a_job_that_returns_no_dict_fails(executor_name, request):
    outcomes = collect(request.getfixturevalue(executor_name), not_a_dict, SPECS[:1])
    assert isinstance(outcomes[0], JobFailed)
    assert outcomes[0].message == "not_a_dict returned list, expected a dict"


def test_a_local_result_that_cannot_be_pickled_fails(local):
    outcomes = collect(local, unpicklable_result, SPECS[:2])
    assert all(isinstance(outcome, JobFailed) for outcome in outcomes.values())
    assert "pickle" in outcomes[0].message and "lambda" in outcomes[0].message


@pytest.mark.parametrize("executor_name", ["local", "embedded_ray"])
def test_a_job_that_kills_its_worker_fails_alone_and_the_rest_complete(executor_name, request):
    executor = request.getfixturevalue(executor_name)
    outcomes = collect(executor, train_or_die, SPECS)
    failure = outcomes.pop(1)
    assert isinstance(failure, JobFailed) and failure.spec_index == 1
    if executor_name == "local":
        assert failure.message == WORKER_DIED
    else:
        assert failure.message.startswith("WorkerCrashedError: ")
    assert outcomes == {i: expected(SPECS[i], threads=1) for i in (0, 2, 3)}
    assert collect(executor, train, SPECS[:2]) == {i: expected(SPECS[i], threads=1) for i in (0, 1)}


def test_local_reruns_jobs_alone_after_a_worker_died_beside_them(local, tmp_path):
    specs = [{"seed": seed, "dir": str(tmp_path)} for seed in range(3)]
    outcomes = collect(local, die_once, specs)
    assert outcomes == {i: expected(spec, threads=1) for i, spec in enumerate(specs)}
    calls = [len((tmp_path / f"calls-{seed}").read_text().splitlines()) for seed in range(3)]
    assert calls == [2, 2, 1]                 # seeds 0 and 1 died together and were rerun alone


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


DRIVER = """
import json, sys
from lifelong.experiments.executors import make_executor
from test_executors import SPECS, train
with make_executor("ray", workers=2, threads_per_worker=1, address=sys.argv[1]) as executor:
    print(json.dumps(sorted(executor.map_unordered(train, SPECS), key=lambda pair: pair[0])))
"""


@pytest.mark.slow   # ~12 s: starting and stopping a head node, and a second driver process
def test_ray_joins_a_running_cluster_on_loopback():
    pytest.importorskip("ray")
    temp_dir = tempfile.mkdtemp(prefix="lifelong-test-ray-", dir="/tmp")   # short: Ray's socket paths
    port = free_port()
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(port),
         "--node-ip-address", "127.0.0.1", "--include-dashboard=false", "--num-cpus", "2",
         "--temp-dir", temp_dir, "--disable-usage-stats"],
        env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},   # every socket on 127.0.0.1
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address_file = Path(temp_dir) / "ray_current_cluster"
        started = time.monotonic()
        while not address_file.exists():
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() - started < 60, "the head node did not start within 60 s"
            time.sleep(0.2)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
        driver = subprocess.run([sys.executable, "-c", DRIVER, f"127.0.0.1:{port}"], env=env,
                                capture_output=True, text=True, timeout=TIMEOUT_S)
        assert driver.returncode == 0, driver.stderr
        outcomes = json.loads(driver.stdout.strip().splitlines()[-1])
        assert outcomes == [[i, expected(spec, threads=1)] for i, spec in enumerate(SPECS)]
    finally:
        head.terminate()                      # ray start --block stops the processes it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        try:
            os.killpg(head.pid, signal.SIGKILL)   # anything of its session still alive; never `ray stop`
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(name="dask"), ValueError, "executor='dask' is unknown; allowed values: local, ray"),
    (dict(name="local", workers=0), ValueError, "workers=0 must be an integer of at least 1"),
    (dict(name="ray", workers=1.5), ValueError, "workers=1.5 must be an integer of at least 1"),
    (dict(name="local", threads_per_worker=0), ValueError, "threads_per_worker=0 must be an integer"),
    (dict(name="local", address="127.0.0.1:6379"), ValueError,
     "address='127.0.0.1:6379' is only for the 'ray' executor"),
    (dict(name="local", temp_dir="/tmp/x"), ValueError, "temp_dir is only for the 'ray' executor"),
    (dict(name="ray", address="127.0.0.1:6379", temp_dir="/tmp/x"), ValueError,
     "temp_dir is only for an embedded cluster"),
    (dict(name="ray", temp_dir="/tmp/" + "x" * 40), ValueError, "is longer than 40 characters"),
])
def test_bad_arguments_are_named(kwargs, error, message):
    name = kwargs.pop("name")
    with pytest.raises(error, match=None) as caught:
        make_executor(name, **kwargs)
    assert message in str(caught.value)


def test_specs_must_be_dicts(local):
    with pytest.raises(TypeError, match=r"specs\[1\] is a list; every spec must be a dict"):
        list(local.map_unordered(train, [{"seed": 0}, [1]]))


def test_missing_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"install with pip install 'lifelong\[ray\]'"):
        list(RayExecutor().map_unordered(train, SPECS))


def test_job_failed_pickles_with_its_fields():
    import pickle

    failure = pickle.loads(pickle.dumps(JobFailed(3, "boom", "Traceback ...")))
    assert (failure.spec_index, failure.message, failure.traceback, str(failure)) == \
        (3, "boom", "Traceback ...", "job 3 failed: boom")
