"""A reentrant lock granted in arrival order.

The model lock is taken per chunk by the compression worker and per answer by questions. A plain
``threading.Lock`` is not fair: the worker releases it between chunks and, still running, takes it again
before the waiting question's thread has woken, so a question could wait several chunks. Here a waiter
keeps its place in a queue, and a thread that releases and re-acquires goes behind those already waiting.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable


class FairLock:
    """Reentrant like ``threading.RLock``; waiters are served first come, first served."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._queue: deque[object] = deque()

    def acquire(self, blocking: bool = True, timeout: float = -1, waiting: Callable[[], None] | None = None,
                every_s: float = 10.0) -> bool:
        """Take the lock; with ``waiting``, call it every ``every_s`` seconds while waiting, keeping the place
        in the queue (a worker's heartbeat). False when ``timeout`` passed or, non-blocking, it is taken."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None and not self._queue:
                self._owner, self._depth = me, 1
                return True
            if not blocking:
                return False
            deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
            ticket = object()
            self._queue.append(ticket)
            beat = time.monotonic() + every_s
            try:
                while self._owner is not None or self._queue[0] is not ticket:
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        return False
                    if waiting is not None and now >= beat:
                        self._cond.release()  # the heartbeat may write to the database: others go on
                        try:
                            waiting()
                        finally:
                            self._cond.acquire()
                        beat = time.monotonic() + every_s
                        continue
                    wake = [t for t in (deadline, beat if waiting else None) if t is not None]
                    self._cond.wait(min(wake) - now if wake else None)
                self._owner, self._depth = me, 1
                return True
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the head may have changed (a waiter that gave up)

    def owned(self) -> bool:
        """True when the calling thread holds the lock."""
        with self._cond:
            return self._owner == threading.get_ident()

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release a lock held by another thread")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    @property
    def waiters(self) -> int:
        """How many threads wait for the lock now."""
        with self._cond:
            return len(self._queue)

    def locked(self) -> bool:
        with self._cond:
            return self._owner is not None

    def __enter__(self) -> "FairLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
