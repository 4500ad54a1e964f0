"""The request queue: concurrent waveforms into batches, answers back to their callers.

.venv/bin/python -m pytest tests/serve/test_serve_batching.py -q
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from speechswarm.serve.batching import BatchQueue, MainThreadExecutor


class Recorder:
    """run_batch that answers each wave's length and records the batch sizes."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, waves):
        self.sizes.append(len(waves))
        return [len(w) for w in waves]


async def submit_all(queue: BatchQueue, lengths: list[int]) -> list[int]:
    await queue.start()
    try:
        return await asyncio.gather(*(queue.submit(np.zeros(n)) for n in lengths))
    finally:
        await queue.stop()


def test_requests_that_arrive_together_run_as_one_batch():
    run = Recorder()
    answers = asyncio.run(submit_all(BatchQueue(run, max_batch=8, max_wait_ms=50), [3, 1, 2]))
    assert answers == [3, 1, 2] and run.sizes == [3]


def test_batches_hold_at_most_max_batch_in_arrival_order():
    run = Recorder()
    answers = asyncio.run(submit_all(BatchQueue(run, max_batch=2, max_wait_ms=50), [1, 2, 3, 4, 5]))
    assert answers == [1, 2, 3, 4, 5] and run.sizes == [2, 2, 1]


def test_a_long_wave_is_not_padded_together_with_many():
    run = Recorder()
    queue = BatchQueue(run, max_batch=8, max_wait_ms=50, max_batch_samples=100)
    assert asyncio.run(submit_all(queue, [10, 10, 90, 10])) == [10, 10, 90, 10]
    assert run.sizes == [2, 1, 1]  # 3 x 90 > 100; the held-over wave opens the next batch


def test_an_error_reaches_every_caller_of_its_batch_and_the_queue_goes_on():
    calls = []

    def run(waves):
        calls.append(len(waves))
        if len(calls) == 1:
            raise ValueError("bad batch")
        return [len(w) for w in waves]

    async def scenario():
        queue = BatchQueue(run, max_batch=8, max_wait_ms=50)
        await queue.start()
        try:
            first = await asyncio.gather(
                queue.submit(np.zeros(1)), queue.submit(np.zeros(2)), return_exceptions=True
            )
            return first, await queue.submit(np.zeros(3))
        finally:
            await queue.stop()

    first, later = asyncio.run(scenario())
    assert [type(e) for e in first] == [ValueError, ValueError] and later == 3


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        BatchQueue(Recorder(), max_batch=0)


def test_a_lone_request_never_waits_and_a_batch_waits_for_requests_on_their_way():
    run = Recorder()

    async def scenario():
        queue = BatchQueue(run, max_batch=8, max_wait_ms=2000)
        await queue.start()
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            await queue.submit(np.zeros(1))  # nobody arriving: runs at once
            alone = loop.time() - start
            queue.arriving += 1  # a request being read: the next batch waits for it

            async def late():
                await asyncio.sleep(0.05)
                queue.arriving -= 1
                return await queue.submit(np.zeros(2))

            both = await asyncio.gather(queue.submit(np.zeros(3)), late())
            return alone, both
        finally:
            await queue.stop()

    alone, both = asyncio.run(scenario())
    assert alone < 0.5 and both == [3, 2] and run.sizes == [1, 2]


def test_the_main_thread_executor_runs_calls_in_the_thread_that_runs_it():
    executor = MainThreadExecutor()
    ran_in, done = [], threading.Event()

    def caller() -> None:
        assert (
            executor.submit(lambda x: ran_in.append(threading.get_ident()) or x + 1, 1).result()
            == 2
        )
        with pytest.raises(ZeroDivisionError):  # the caller sees the call's error
            executor.submit(lambda: 1 / 0).result()
        done.set()

    threading.Thread(target=caller).start()
    executor.run(until=done.is_set, poll_seconds=0.01)
    assert ran_in == [threading.get_ident()]
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(print)
    executor.run(until=lambda: False)  # returns: shut down and drained


def test_a_batch_queue_runs_its_model_in_the_main_thread_when_told():
    executor = MainThreadExecutor()
    threads = []

    def run_batch(waves):
        threads.append(threading.get_ident())
        return [len(w) for w in waves]

    answers = []

    async def client() -> None:
        queue = BatchQueue(run_batch, executor=executor)
        await queue.start()
        answers.extend(await asyncio.gather(*(queue.submit(np.zeros(n)) for n in (3, 5))))
        await queue.stop()  # shuts the executor down: run() below returns

    worker = threading.Thread(target=asyncio.run, args=(client(),))
    worker.start()
    executor.run(until=lambda: False)
    worker.join()
    assert answers == [3, 5] and set(threads) == {threading.get_ident()}
