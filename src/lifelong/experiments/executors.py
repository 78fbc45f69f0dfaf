"""Executors: run many independent jobs (the runs of a sweep) on local processes or on Ray.

A job is a picklable top-level function ``fn(spec: dict) -> dict`` applied to each spec of a list
of specs (plain dicts of JSON-able values)::

    with make_executor("local", workers=2) as executor:
        for index, outcome in executor.map_unordered(fn, specs):
            if isinstance(outcome, JobFailed):
                print(outcome.spec_index, outcome.message, outcome.traceback)
            else:
                ...  # outcome is the dict fn returned for specs[index]

``map_unordered`` yields ``(index, outcome)`` pairs as jobs finish, exactly one per spec, and never
raises because of one job: when ``fn`` raises, returns something other than a dict, or its worker
process dies (SIGKILL, out of memory, segfault), the outcome is a :class:`JobFailed` and the other
jobs go on.

- ``local``: a :class:`~concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start method
  (torch and ``fork`` do not mix; ``forkserver`` started no faster here, even preloading torch).
  ``workers=1`` uses the same pool, so a crashing job never takes the caller down. At most
  ``workers`` jobs are handed to the pool at a time, so that when a worker dies the executor knows
  which jobs could have killed it. The pool is then broken; it is recreated, and

  * if one job was in flight, that job is reported failed;
  * if several were, each of them is run again *alone*; one that kills its worker alone is
    reported failed, the others complete normally. So a job may be called twice (make ``fn``
    idempotent: write results to a temp file and rename), and jobs that died only because
    they ran together (say, out of memory) succeed on the second try.

- ``ray``: tasks with ``num_cpus=1`` and ``max_retries=0`` (Ray knows which task's worker died, so
  exactly that spec is reported failed). By default an embedded single-machine cluster with
  ``num_cpus=workers`` and its session files under a fresh ``/tmp/lifelong-ray-XXXX`` (Ray's socket
  paths must stay under ~107 characters), removed on exit; with ``address="host:port"`` the
  executor joins a running cluster instead. If Ray is already initialised in this process the
  executor uses that session. It shuts Ray down on exit only if it started it. Both modes keep at
  most ``workers`` jobs in flight. Before initialising Ray, ``RAY_AUTH_MODE=disabled``,
  ``RAY_USAGE_STATS_ENABLED=0`` and ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (every socket on
  127.0.0.1) are set unless already set; an embedded cluster's workers inherit them.

Every job first calls ``torch.set_num_threads(threads_per_worker)``; the default is
``max(1, cpus // workers)`` with ``cpus`` the CPUs this process may run on (for a Ray cluster on
other machines, pass it explicitly). Several processes with too many torch threads each slow tiny
models down 10-30x on a small machine.

Pickling ``fn``: the local pool pickles it by reference (module and name), so it must be importable
in a fresh interpreter; spawned workers receive the caller's ``sys.path``. For Ray, ``fn`` is
pickled with cloudpickle (a function of ``__main__`` travels by value) and the caller's ``sys.path``
entries that exist on the worker's machine are appended to the worker's, so test modules and
scripts' directories resolve on an embedded or same-machine cluster; on other machines, install the
code there.

Measured on this project's 2-core machine (Python 3.11, torch 2.13 CPU, Ray 2.60; noisy; workers=2,
a trivial job; "first result" includes starting the workers and importing torch in them)::

    executor                          first result   per job (400 jobs)   close
    local (spawn)                     1.0-1.1 s      0.2-0.3 ms           0.5 s per worker
    ray, embedded cluster             3.6-4.7 s      1.5-2.4 ms           1.4 s
    ray, joining a cluster on this    1.7-2.0 s      1.5-2.4 ms           0.3 s
      machine (ray start: 3.4 s up, 3.5 s down)
    local, a worker died              +1-1.5 s to start a new pool (and to rerun suspects alone)

A second Ray worker needs another ~1 s to import torch before its first job.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import shutil
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Any

__all__ = ["EXECUTORS", "Executor", "JobFailed", "LocalExecutor", "RayExecutor", "make_executor"]

EXECUTORS = ("local", "ray")
MAX_RAY_TEMP_DIR = 40   # Ray appends ~65 characters (session_<date>_<pid>/sockets/...) to its temp dir
RAY_LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"   # "0": every Ray socket on 127.0.0.1
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", RAY_LOOPBACK: "0"}

Job = Callable[[dict], dict]


class JobFailed(Exception):
    """The job for ``specs[spec_index]`` raised, returned a non-dict, or its worker process died.

    ``message`` says what happened in one line; ``traceback`` is the formatted traceback text from
    the worker (empty when the worker died without one).
    """

    def __init__(self, spec_index: int, message: str, traceback: str = "") -> None:
        super().__init__(spec_index, message, traceback)
        self.spec_index = spec_index
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return f"job {self.spec_index} failed: {self.message}"


WORKER_DIED = ("the worker process running this job died (killed by a signal such as SIGKILL, out of "
               "memory, or crashed)")


def default_threads(workers: int) -> int:
    """Torch threads per worker that keep ``workers`` processes within this process's CPUs."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // workers)


def _call(fn: Job, spec: dict, threads: int) -> tuple[str, Any, str]:
    """Run one job in a worker: ``("ok", result, "")`` or ``("error", message, traceback)``."""
    import torch

    torch.set_num_threads(threads)
    try:
        result = fn(spec)
    except BaseException as error:  # noqa: BLE001 - everything a job raises becomes its outcome
        return "error", f"{type(error).__name__}: {error}", traceback.format_exc()
    if not isinstance(result, dict):
        return "error", f"{_name(fn)} returned {type(result).__name__}, expected a dict", ""
    return "ok", result, ""


def _init_local_worker(threads: int, parent: int) -> None:
    """Pool initializer: die with the parent, import torch once and set its threads."""
    _die_with_parent(parent)
    import torch

    torch.set_num_threads(threads)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this worker when the process that made it dies (PR_SET_PDEATHSIG).

    Without it, killing a sweep (say, with SIGKILL) leaves its workers running their jobs as
    orphans, writing into the run directories that the re-run sweep resumes.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def _outcome(index: int, reply: tuple[str, Any, str]) -> dict | JobFailed:
    status, value, trace = reply
    return value if status == "ok" else JobFailed(index, value, trace)


def _check_specs(specs: Iterable[dict]) -> list[dict]:
    specs = list(specs)
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise TypeError(f"specs[{index}] is a {type(spec).__name__}; every spec must be a dict")
    return specs


def _check_workers(workers: int, threads_per_worker: int | None) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} must be an integer of at least 1")
    if threads_per_worker is not None and (isinstance(threads_per_worker, bool)
                                           or not isinstance(threads_per_worker, int)
                                           or threads_per_worker < 1):
        raise ValueError(f"threads_per_worker={threads_per_worker!r} must be an integer of at least 1 "
                         "or None (cpus // workers)")


class Executor:
    """Runs ``fn`` on every spec; use as a context manager so its processes are released."""

    workers: int
    threads_per_worker: int | None

    @property
    def threads(self) -> int:
        """The torch threads each job runs with."""
        return self.threads_per_worker or default_threads(self.workers)

    def map_unordered(self, fn: Job, specs: Iterable[dict]) -> Iterator[tuple[int, dict | JobFailed]]:
        """Yield ``(index, outcome)`` for every spec as jobs finish; outcome is a dict or JobFailed."""
        raise NotImplementedError

    def close(self) -> None:
        """Release processes (and the Ray session this executor started)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


class LocalExecutor(Executor):
    """A pool of ``workers`` spawned processes on this machine; see the module docstring."""

    def __init__(self, workers: int = 1, threads_per_worker: int | None = None) -> None:
        _check_workers(workers, threads_per_worker)
        self.workers = workers
        self.threads_per_worker = threads_per_worker
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        if self._pool is not None:              # broken: its workers are dead or being terminated
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_local_worker, initargs=(self.threads, os.getpid()))
        return self._pool

    def _submit(self, fn: Job, spec: dict) -> Future:
        pool = self._pool or self._new_pool()
        try:
            return pool.submit(_call, fn, spec, self.threads)
        except BrokenProcessPool:               # an idle worker died (say, out of memory): start afresh
            return self._new_pool().submit(_call, fn, spec, self.threads)

    def map_unordered(self, fn: Job, specs: Iterable[dict]) -> Iterator[tuple[int, dict | JobFailed]]:
        specs = _check_specs(specs)
        queue = list(range(len(specs)))[::-1]   # pop() takes the next index
        suspects: list[int] = []                # in flight when a worker died: to rerun one at a time
        alone: set[int] = set()                 # suspects that were (or are being) rerun alone
        running: dict[Future, int] = {}
        try:
            while queue or suspects or running:
                if suspects and not running:    # a suspect runs alone, so a crash is its own
                    index = suspects.pop()
                    alone.add(index)
                    running[self._submit(fn, specs[index])] = index
                while queue and not suspects and not alone.intersection(running.values()) \
                        and len(running) < self.workers:
                    index = queue.pop()
                    running[self._submit(fn, specs[index])] = index
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                if any(isinstance(future.exception(), BrokenProcessPool) for future in done):
                    done, _ = wait(running)     # a broken pool settles every future it holds at once
                broken = []
                for future in done:
                    index = running.pop(future)
                    error = future.exception()
                    if isinstance(error, BrokenProcessPool):
                        broken.append(index)
                    elif error is not None:     # e.g. the spec or the result could not be pickled
                        yield index, JobFailed(index, f"{type(error).__name__}: {error}",
                                               "".join(traceback.format_exception(error)))
                    else:
                        yield index, _outcome(index, future.result())
                if broken:                      # a worker died, taking these jobs' results with it
                    self._new_pool()
                    if len(broken) == 1:
                        yield broken[0], JobFailed(broken[0], WORKER_DIED)
                    else:
                        suspects.extend(sorted(broken, reverse=True))
        finally:
            for future in running:              # the caller stopped early: drop what has not started
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _call_in_ray(payload: bytes, spec: dict, threads: int, driver_path: list[str]) -> tuple[str, Any, str]:
    """Ray task: make the caller's modules importable, unpickle ``fn`` and run one job."""
    for entry in driver_path:
        if entry not in sys.path and os.path.isdir(entry):
            sys.path.append(entry)
    try:
        fn = pickle.loads(payload)
    except Exception as error:  # noqa: BLE001 - e.g. fn's module is not importable on this worker
        return "error", f"cannot unpickle the job function: {type(error).__name__}: {error}", \
            traceback.format_exc()
    return _call(fn, spec, threads)


class RayExecutor(Executor):
    """Ray tasks on an embedded cluster (``address=None``) or a running one; see the module docstring."""

    def __init__(self, workers: int = 1, threads_per_worker: int | None = None, address: str | None = None,
                 temp_dir: str | None = None) -> None:
        _check_workers(workers, threads_per_worker)
        if address is not None and temp_dir is not None:
            raise ValueError("temp_dir is only for an embedded cluster (address=None); a running cluster "
                             "keeps the temp dir it was started with (ray start --temp-dir)")
        if temp_dir is not None and len(os.path.abspath(temp_dir)) > MAX_RAY_TEMP_DIR:
            raise ValueError(f"temp_dir={temp_dir!r} is longer than {MAX_RAY_TEMP_DIR} characters: Ray's "
                             "socket paths under it would pass the 107-character limit; use a short path "
                             "such as /tmp/lifelong-ray")
        self.workers = workers
        self.threads_per_worker = threads_per_worker
        self.address = address
        self.temp_dir = temp_dir
        self._ray: Any = None            # the ray module once this executor has connected
        self._owns_session = False
        self._made_temp_dir: str | None = None

    def _connect(self) -> Any:
        if self._ray is not None:
            return self._ray
        if "ray" in sys.modules and self.address is None and RAY_LOOPBACK not in os.environ:
            warnings.warn(f"ray was imported before {RAY_LOOPBACK} was set: the embedded Ray cluster will "
                          f"listen on every network interface; set {RAY_LOOPBACK}=0 before importing ray "
                          "to keep it on 127.0.0.1", stacklevel=3)
        for name, value in RAY_ENV.items():   # before importing ray: it reads some at import time
            os.environ.setdefault(name, value)
        try:
            import ray
        except ImportError as error:
            raise ImportError("the 'ray' executor needs Ray: install with pip install 'lifelong[ray]'") \
                from error
        if ray.is_initialized():
            current = ray.get_runtime_context().gcs_address
            if self.address is not None and self.address != current:
                raise RuntimeError(f"Ray is already connected to {current} in this process, not to "
                                   f"address={self.address!r}: call ray.shutdown() first, or pass "
                                   "address=None to use the session already open")
        else:
            if self.address is not None:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                temp_dir = self.temp_dir
                if temp_dir is None:
                    temp_dir = self._made_temp_dir = tempfile.mkdtemp(prefix="lifelong-ray-", dir="/tmp")
                ray.init(address="local", num_cpus=self.workers, include_dashboard=False,
                         _temp_dir=os.path.abspath(temp_dir), log_to_driver=False,
                         logging_level=logging.WARNING)
            self._owns_session = True
        self._ray = ray
        return ray

    def map_unordered(self, fn: Job, specs: Iterable[dict]) -> Iterator[tuple[int, dict | JobFailed]]:
        specs = _check_specs(specs)
        ray = self._connect()
        from ray import cloudpickle

        task = ray.remote(num_cpus=1, max_retries=0)(_call_in_ray)
        payload = ray.put(cloudpickle.dumps(fn))
        driver_path = [entry for entry in sys.path if entry]
        queue = list(range(len(specs)))[::-1]
        running: dict[Any, int] = {}
        try:
            while queue or running:
                while queue and len(running) < self.workers:
                    index = queue.pop()
                    running[task.remote(payload, specs[index], self.threads, driver_path)] = index
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    index = running.pop(ref)
                    try:
                        reply = ray.get(ref)
                    except ray.exceptions.RayError as error:   # the worker died, or Ray failed the task
                        text = str(error).strip() or type(error).__name__
                        message = f"{type(error).__name__}: {text.splitlines()[0]}"
                        yield index, JobFailed(index, message, text)
                    else:
                        yield index, _outcome(index, reply)
        finally:
            for ref in running:                  # the caller stopped early
                ray.cancel(ref)

    def close(self) -> None:
        if self._ray is not None and self._owns_session:
            self._ray.shutdown()
        if self._made_temp_dir is not None:
            shutil.rmtree(self._made_temp_dir, ignore_errors=True)
        self._ray, self._owns_session, self._made_temp_dir = None, False, None


def make_executor(name: str, *, workers: int = 1, threads_per_worker: int | None = None,
                  address: str | None = None, temp_dir: str | None = None) -> Executor:
    """The executor called ``name`` (one of :data:`EXECUTORS`), running ``workers`` jobs at a time.

    ``threads_per_worker`` torch threads per job (default ``max(1, cpus // workers)``); for
    ``"ray"``, ``address`` ("host:port") joins a running cluster instead of starting an embedded one,
    and ``temp_dir`` (short!) holds an embedded cluster's session files.
    """
    if name not in EXECUTORS:
        raise ValueError(f"executor={name!r} is unknown; allowed values: {', '.join(EXECUTORS)}")
    _check_workers(workers, threads_per_worker)
    if name == "local":
        if address is not None:
            raise ValueError(f"address={address!r} is only for the 'ray' executor; the 'local' executor "
                             "runs on this machine")
        if temp_dir is not None:
            raise ValueError("temp_dir is only for the 'ray' executor")
        return LocalExecutor(workers, threads_per_worker)
    return RayExecutor(workers, threads_per_worker, address, temp_dir)
