"""Where torch runs: one long-lived thread for short work, a passing thread for long work.

Why: torch's CPU kernels use GNU OpenMP, which gives every OS thread that runs a parallel region its own team
of worker threads for as long as that thread lives. With more team threads than CPUs, libgomp stops letting
idle workers spin between regions, so each region waits for a wake-up: on 2 cores at 2 intra-op threads a
300-token prefill took 28 % longer once a second thread had run torch (``bench/omp_teams.py``), which cost
compressed answers their first-token target. So the work of a question (loading the model, embedding,
assembling memories, prefill and decoding) runs on the one ``tome-torch`` thread, and compression, which waits
for the model lock between segments and must not hold that thread meanwhile, runs in a thread of its own that
ends with the job, taking its team with it.

Tasks on ``tome-torch`` never wait for the model lock (``tome.models.Models.lock``), so a caller that holds the
lock may wait for them.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")

_local = threading.local()
_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _mark() -> None:
    _local.on_torch = True


def _torch_executor() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tome-torch", initializer=_mark)
        return _executor


def on_torch_thread() -> bool:
    """True inside a task on the ``tome-torch`` thread."""
    return getattr(_local, "on_torch", False)


def run_on_torch(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` on the ``tome-torch`` thread, waited for; its exception is raised here.
    Called from that thread, it runs inline (a queued task would wait for itself)."""
    if on_torch_thread():
        return fn(*args, **kwargs)
    return _torch_executor().submit(fn, *args, **kwargs).result()


def start_on_torch(fn: Callable[[], None], name: str) -> Callable[[], None]:
    """Start ``fn()`` on the ``tome-torch`` thread without waiting; returns a function that waits for it.
    ``fn`` must not raise (a streamed generation hands its failure to its consumer). From the ``tome-torch``
    thread itself it starts a thread called ``name`` instead, as the task would otherwise wait for itself."""
    if on_torch_thread():
        thread = threading.Thread(target=fn, name=name, daemon=True)
        thread.start()
        return thread.join
    future: Future = _torch_executor().submit(fn)
    return future.result


def run_in_own_thread(fn: Callable[..., T], *args, name: str = "tome-work", **kwargs) -> T:
    """``fn(*args, **kwargs)`` in a new thread that ends with it, waited for; its exception is raised here.
    For long work that waits for the model lock (compression): its OpenMP team goes when it ends."""
    out: list = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(e)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return out[0]
