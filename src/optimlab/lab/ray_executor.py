"""Runs as Ray tasks: ``optimlab compare --executor ray [--ray-address ADDRESS]``.

Each run is one Ray task asking for ``cpus_per_run`` CPUs (and the problem's ``gpus``);
at most ``workers`` are in flight at a time. A task carries the run's spec and its
problem's *source* (a registry name or ``"pkg.module:factory"``); the worker builds the
problem once per worker process (``executor._problem``) and returns the record.

The store stays on the driver (this process), the single source of truth: each record
is committed as it arrives, exactly as with the local executor (:class:`executor.Executor`
decides what to run and stores). So a killed driver loses nothing that had finished,
and re-running the same command resumes; run ids make duplicates impossible.

Failures: a task whose worker process dies (killed, out of memory, node lost) is
retried by Ray up to ``max_retries`` times, then recorded as a failed run (status
"error", with the reason): the comparison stops naming it, and the next command retries
it. A problem a worker cannot build
(e.g. a custom module not importable on that node) stops the comparison with one line
naming the module and the node.

Without an address a local Ray instance is started (and shut down at the end), with the
driver's ``sys.path`` as the workers' ``PYTHONPATH``, so custom problems importable here
are importable there. With an address (``auto``, ``HOST:PORT`` of a head node, or
``ray://HOST:PORT``) the driver joins that cluster; the problem's module must then be
installed on every node. If this process is already connected to Ray, that connection
is used and left open.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
from dataclasses import dataclass

from . import runner
from .executor import Executor, _problem
from .wording import plural

INSTALL = 'pip install "optimlab[ray]"'

#: Ray's retries of a task whose worker died, before the run is recorded as failed.
DEFAULT_RETRIES = 3

#: Seconds to wait for a TCP connection to a cluster's address before giving up.
CONNECT_TIMEOUT_S = 5.0


class RayExecutorError(ValueError):
    """Ray cannot run this comparison (not installed, no cluster at the address, a
    problem its workers cannot build); the message is one line, the store is intact."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayExecutorError(f"--executor ray needs Ray, which is not installed; install "
                               f"it with: {INSTALL}") from None
    return ray


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -------------------------------------------------------------------- connecting

def check_address(address: str) -> None:
    """Raise :class:`RayExecutorError` unless ``address`` is ``auto`` or a reachable
    ``HOST:PORT`` / ``ray://HOST[:PORT]`` (a dead address would otherwise keep Ray
    retrying for minutes)."""
    if address == "auto":
        return
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep and address.startswith("ray://"):
        host, port = rest, "10001"   # Ray Client's default port
    if not host or not port.isdigit():
        raise RayExecutorError(f"bad --ray-address {address!r}: expected auto, HOST:PORT "
                               f"(a head node, e.g. 10.0.0.5:6379) or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RayExecutorError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); "
                               f"start one with 'ray start --head' or check --ray-address") \
            from None


def _driver_pythonpath() -> str:
    return os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))


def start_local(num_cpus: float) -> None:
    """Start a local Ray instance with ``num_cpus`` CPUs, no dashboard, workers on the
    driver's ``sys.path``."""
    ray = _import_ray()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
             log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": _driver_pythonpath()}})


# ---------------------------------------------------------------------- the task

@dataclass
class _Unbuildable:
    """A worker could not build a problem: the source, the node, why."""
    source: str
    node: str
    error: str


def _node() -> str:
    try:
        import ray
        ip = ray.util.get_node_ip_address()
        node = ray.get_runtime_context().get_node_id()[:8]
        return f"{socket.gethostname()} ({ip}, Ray node {node})"
    except Exception:   # the name is for the message only
        return socket.gethostname()


def _task(spec, source):
    try:
        problem = _problem(source)
    except Exception as exc:
        return _Unbuildable(source, _node(), f"{type(exc).__name__}: {exc}")
    return runner.run(spec, problem)


# ------------------------------------------------------------------ the executor

class RayExecutor(Executor):
    """An :class:`executor.Executor` whose runs are Ray tasks (see the module docstring).

    address: None (start a local instance), ``auto``, ``HOST:PORT`` or ``ray://...``;
    workers: tasks in flight at most; cpus_per_run: CPUs each task asks for;
    max_retries: Ray's retries of a task whose worker died; log: where the one-line
    connection note goes.
    """

    name = "ray"

    def __init__(self, store, sources, workers=1, progress=False, problems=None, *,
                 address=None, cpus_per_run=1.0, max_retries=DEFAULT_RETRIES, log=None):
        super().__init__(store, sources, workers, progress, problems)
        self.address, self.cpus_per_run = address, float(cpus_per_run)
        self.max_retries, self.log = int(max_retries), log or (lambda msg: None)
        self._ray = self._remote = None
        self._owned = False      # whether close() shuts Ray down (we connected)
        self._inflight: dict = {}
        self._checked: set = set()   # problems whose GPUs a node was checked to hold

    def __enter__(self):
        self.connect()
        return self

    def connect(self) -> None:
        """Connect to Ray (start a local instance without an address); one-line
        :class:`RayExecutorError` when that fails."""
        if self._ray is not None:
            return
        ray = _import_ray()
        if self.address is not None:
            check_address(self.address)
        if ray.is_initialized():
            where = "the Ray instance this process is connected to"
        else:
            cpus_here = os.cpu_count() or 1
            if self.address is None and self.cpus_per_run > cpus_here:
                raise RayExecutorError(
                    f"--ray-cpus-per-run {self.cpus_per_run:g} asks for more CPUs for each run "
                    f"than this machine has ({cpus_here}); lower it, or join a cluster with "
                    f"--ray-address")
            try:
                if self.address is None:
                    start_local(max(1, math.ceil(self.workers * self.cpus_per_run)))
                    where = "a local Ray instance"
                else:
                    ray.init(address=self.address, include_dashboard=False,
                             log_to_driver=False, logging_level=logging.WARNING)
                    where = f"the Ray cluster at {self.address}"
            except (Exception, SystemExit) as exc:   # Ray exits when it gives up on a GCS
                where = self.address or "a new local instance"
                raise RayExecutorError(f"cannot connect to Ray at {where}: "
                                       f"{_one_line(exc) or type(exc).__name__}") from None
            self._owned = True
        self._ray = ray
        self._remote = ray.remote(_task)
        cpus = ray.cluster_resources().get("CPU", 0)
        self.log(f"executor: {where} ({plural(len(ray.nodes()), 'node')}, {cpus:g} CPUs), "
                 f"{plural(self.workers, 'task')} at a time, "
                 f"{self.cpus_per_run:g} CPU each, up to {self.max_retries} retries")
        self._check_fits("CPU", self.cpus_per_run, "--ray-cpus-per-run", where)

    def _check_fits(self, resource: str, amount: float, asked_by: str, where: str) -> None:
        """A task no node can hold would wait forever: say so instead. A cluster may still
        grow (Ray's autoscaler starts nodes for such tasks): there, a warning line."""
        largest = max((n["Resources"].get(resource, 0) for n in self._ray.nodes()
                       if n.get("Alive")), default=0)
        if amount <= largest:
            return
        what = (f"{asked_by} {amount:g} asks for more {resource}s for each run than any node "
                f"of {where} has (the largest: {largest:g})")
        if self.address is None and self._owned:
            self.close()
            raise RayExecutorError(f"{what}; lower it")
        self.log(f"warning: {what}; the runs wait until such a node joins (Ray's autoscaler)")

    def describe(self) -> str:
        return f"{plural(self.workers, 'Ray task')} at a time"

    def close(self, cancel: bool = False) -> None:
        ray, self._ray = self._ray, None
        if ray is None:
            return
        if cancel:   # runs in flight are lost; the store keeps the finished ones
            for ref in self._inflight:
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
        self._inflight = {}
        if self._owned:
            ray.shutdown()
            self._owned = False

    def _submit(self, spec):
        problem = self.problems.get(spec.problem)
        gpus = float(getattr(problem, "gpus", 0) or 0)
        if gpus and spec.problem not in self._checked:
            self._checked.add(spec.problem)
            self._check_fits("GPU", gpus, f"problem {spec.problem!r}", "the Ray cluster")
        return self._remote.options(num_cpus=self.cpus_per_run, num_gpus=gpus,
                                    max_retries=self.max_retries, retry_exceptions=False,
                                    name=f"optimlab {spec.problem}/{spec.optimizer}"
                                    ).remote(spec, self.sources[spec.problem])

    def _execute(self, todo, advance) -> None:
        self.connect()
        ray, queue = self._ray, list(todo)
        queue.reverse()   # pop() from the end keeps run()'s order (longest first)
        while queue or self._inflight:
            while queue and len(self._inflight) < self.workers:
                spec = queue.pop()
                self._inflight[self._submit(spec)] = spec
            done, _ = ray.wait(list(self._inflight), num_returns=1)
            for ref in done:
                spec = self._inflight.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    retries = plural(self.max_retries, "retry", "retries")
                    out = runner.failed(spec, f"the Ray task failed after {retries} "
                                              f"({type(exc).__name__}: {_one_line(exc, 200)})")
                if isinstance(out, _Unbuildable):
                    module = out.source.partition(":")[0]
                    raise RayExecutorError(
                        f"problem {out.source!r} cannot be built on {out.node}: "
                        f"{_one_line(out.error, 200)}; module {module!r} must be importable "
                        f"on every Ray worker (install it on the nodes)")
                self._keep(out)
                advance()
