"""Run independent candidate tasks in this process, on local worker processes, or on Ray.

`Executor.map(fn, tasks)` returns fn(task, shared) for every task, in task order. `shared` (the
dataset) is sent to each worker once. Every task runs with one torch thread wherever it runs, so
its floating-point results, and therefore the kept models, do not depend on the number of workers
or on the engine.
"""

import contextlib
import multiprocessing
from pathlib import Path

import torch

from ..core.errors import UserError

_shared = None  # the worker's copy of the shared data (local processes)


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(fn, task, shared):
    with one_thread():
        return fn(task, shared)


def _init_worker(shared):
    global _shared
    _shared = shared
    torch.set_num_threads(1)


def _run_in_worker(job):
    fn, task = job
    return _run(fn, task, _shared)


class Executor:
    """workers=1 and no Ray: in this process. workers>1: a spawn process pool. ray_address: Ray
    ("local" starts a private local instance with `workers` CPUs)."""

    def __init__(self, shared, workers=1, ray_address=None):
        self.shared, self.workers, self.ray_address = shared, workers, ray_address
        self.pool = self.ray = None
        if ray_address:
            self._start_ray()
        elif workers > 1:
            ctx = multiprocessing.get_context("spawn")
            self.pool = ctx.Pool(workers, initializer=_init_worker, initargs=(shared,))

    def _start_ray(self):
        try:
            import ray
        except ImportError:
            raise UserError("--ray-address needs Ray: pip install 's4op-micro[ray]'") from None
        package = str(Path(__file__).resolve().parents[1])  # workers run this very code
        kwargs = dict(runtime_env={"py_modules": [package]}, include_dashboard=False, log_to_driver=False,
                      configure_logging=False)
        try:
            if self.ray_address == "local":
                ray.init(num_cpus=self.workers, **kwargs)
            else:
                ray.init(address=self.ray_address, **kwargs)
        except Exception as e:  # ConnectionError, RuntimeError, ... depending on the address
            raise UserError(f"cannot connect to Ray at {self.ray_address!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self.ray = ray
        self.remote = ray.remote(num_cpus=1)(_run)
        self.shared_ref = ray.put(self.shared)

    @property
    def in_process(self):
        return self.pool is None and self.ray is None

    def map(self, fn, tasks, on_result=None):
        """[fn(task, shared) for task in tasks]; on_result(i, result) as each (in order) arrives."""
        if self.ray is not None:
            refs = [self.remote.remote(fn, task, self.shared_ref) for task in tasks]
            results = (self.ray.get(ref) for ref in refs)
        elif self.pool is not None:
            results = self.pool.imap(_run_in_worker, [(fn, task) for task in tasks])
        else:
            results = (_run(fn, task, self.shared) for task in tasks)
        out = []
        for i, result in enumerate(results):
            if on_result:
                on_result(i, result)
            out.append(result)
        return out

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None
        if self.ray is not None:
            self.ray.shutdown()
            self.ray = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None and self.pool is not None:
            self.pool.terminate()
        self.close()
