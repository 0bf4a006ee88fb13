"""The model lock serves waiters in arrival order, is reentrant, and a waiter's heartbeat keeps its place."""
import threading
import time

import pytest

from tome.fairlock import FairLock


def _wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)


def _waiter(lock, order, name, **kw):
    def run():
        assert lock.acquire(**kw)
        order.append(name)
        lock.release()
    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_thread_that_releases_and_takes_again_goes_behind_the_waiting_one():
    lock, order = FairLock(), []
    lock.acquire()
    q = _waiter(lock, order, "question")
    _wait_for(lambda: lock.waiters == 1)
    for _ in range(3):  # the worker's next chunks: each waits for the question that came first
        lock.release()
        lock.acquire()
        order.append("worker")
    lock.release()
    q.join()
    assert order[0] == "question"
    assert order.count("worker") == 3


def test_waiters_are_served_first_come_first_served():
    lock, order = FairLock(), []
    lock.acquire()
    threads = []
    for i in range(5):
        threads.append(_waiter(lock, order, i))
        _wait_for(lambda i=i: lock.waiters == i + 1)
    lock.release()
    for t in threads:
        t.join()
    assert order == [0, 1, 2, 3, 4]


def test_reentrant_and_only_the_owner_releases():
    lock = FairLock()
    with lock:
        with lock:
            assert lock.locked()
        assert lock.locked()  # still held once
        other = []
        t = threading.Thread(target=lambda: other.append(lock.acquire(blocking=False)))
        t.start()
        t.join()
        assert other == [False]
        err = []

        def release():
            try:
                lock.release()
            except RuntimeError as e:
                err.append(e)
        t = threading.Thread(target=release)
        t.start()
        t.join()
        assert err and lock.locked()
    assert not lock.locked()


def test_a_waiter_that_times_out_leaves_the_queue():
    lock, order = FairLock(), []
    lock.acquire()
    got = []
    t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=0.05)))
    t.start()
    t.join()
    assert got == [False] and lock.waiters == 0
    late = _waiter(lock, order, "late")  # would wait forever behind a stale ticket
    _wait_for(lambda: lock.waiters == 1)
    lock.release()
    late.join(5)
    assert order == ["late"]


def test_the_heartbeat_runs_while_waiting_and_the_place_is_kept():
    lock, order, beats = FairLock(), [], []
    lock.acquire()
    worker = _waiter(lock, order, "worker", waiting=lambda: beats.append(time.monotonic()), every_s=0.02)
    _wait_for(lambda: lock.waiters == 1)
    _wait_for(lambda: len(beats) >= 3)
    question = _waiter(lock, order, "question")
    _wait_for(lambda: lock.waiters == 2)
    lock.release()
    worker.join(5)
    question.join(5)
    assert order == ["worker", "question"]  # the heartbeat did not send the worker to the back


@pytest.mark.parametrize("n", [4])
def test_many_threads_count_correctly(n):
    lock, total = FairLock(), [0]

    def add():
        for _ in range(200):
            with lock:
                v = total[0]
                time.sleep(0)
                total[0] = v + 1
    threads = [threading.Thread(target=add) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert total[0] == 200 * n and not lock.locked() and lock.waiters == 0
