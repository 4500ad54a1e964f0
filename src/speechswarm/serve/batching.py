"""Concurrent requests into padded batches: a small queue that one worker thread drains.

    queue = BatchQueue(asr.recognize_batch, max_batch=8, max_wait_ms=5)
    await queue.start()
    transcript = await queue.submit(wave)            # from any number of request handlers

A request's waveform waits in an asyncio queue. The worker takes the first one, adds every
other one waiting, and, while requests are still on their way (`arriving`: their bodies are
being read or decoded), waits up to `max_wait_ms` for them; then it runs the batch (at most
`max_batch`) through `run_batch` in a single worker thread, so the event loop keeps accepting
requests meanwhile. A lone request therefore never waits, and clients that send together are
answered together. Requests that arrive while a batch runs form the next batch at once. Why: on a CPU, a batch of 4 utterances costs far less than 4 batches of
one (the recurrent layers turn matrix-vector products into matrix products), and the model
runs one batch at a time, so requests never fight over the cores.

Batching does not change answers: the model masks padding, so an utterance decodes the same
alone or in a batch (tests/serve/test_server.py compares them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


class BatchQueue:
    """Collects waveforms from concurrent callers and answers each from one batched call.

    `run_batch(waves) -> answers`: list in, list of the same length out (blocking; it runs in
    the queue's own thread). `max_batch`: most waveforms per call; `max_wait_ms`: how long a
    batch waits for requests still `arriving` (callers count themselves in `arriving` while
    they read and decode, and out just before `submit`); `max_batch_samples`: a cap on the padded batch
    (longest wave x batch size) that keeps long files from being padded together with many.
    `executor`: where `run_batch` runs (default: a thread of its own; `speechswarm serve` passes
    a `MainThreadExecutor`, see there why).
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[np.ndarray]], list[Any]],
        *,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        max_batch_samples: int | None = None,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"BatchQueue: max_batch {max_batch} >= 1, max_wait_ms >= 0")
        self.run_batch = run_batch
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.max_batch_samples = max_batch_samples
        self.batches = 0  # calls of run_batch so far
        self.requests = 0  # waveforms answered so far
        self.arriving = 0  # requests being read or decoded: they will submit soon
        self.busy_seconds = 0.0  # wall time inside run_batch so far
        self._queue: asyncio.Queue | None = None
        self._held: tuple[np.ndarray, asyncio.Future] | None = None  # opens the next batch
        self._worker: asyncio.Task | None = None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="batch"
        )

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._serve())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def submit(self, wave: np.ndarray) -> Any:
        """The answer for `wave`, computed in a batch with whatever else is waiting."""
        if self._queue is None:
            raise RuntimeError("BatchQueue.submit before start()")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((wave, future))
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(loop)
            waves = [w for w, _ in batch]
            start = loop.time()
            try:
                answers = await loop.run_in_executor(self.executor, self.run_batch, waves)
            except Exception as e:  # every caller of this batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches += 1
            self.requests += len(batch)
            self.busy_seconds += loop.time() - start
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():  # a caller that went away cancelled its future
                    future.set_result(answer)

    async def _collect(self, loop) -> list[tuple[np.ndarray, asyncio.Future]]:
        """The next batch: the first waiting item, every other waiting one, and those that
        arrive within max_wait while `arriving` says more are on their way."""
        assert self._queue is not None
        first, self._held = self._held, None
        batch = [first if first is not None else await self._queue.get()]
        longest = len(batch[0][0])
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0 or self.arriving == 0:  # nobody else on the way: run now
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if self._too_big(max(longest, len(item[0])), len(batch) + 1):
                self._held = item
                break
            batch.append(item)
            longest = max(longest, len(item[0]))
        return batch

    def _too_big(self, longest: int, size: int) -> bool:
        return self.max_batch_samples is not None and longest * size > self.max_batch_samples


class MainThreadExecutor(concurrent.futures.Executor):
    """Runs submitted calls in the thread that calls `run` (the main thread), one at a time.

    Why: PyTorch's CPU kernels run fastest from the process's main thread. From any other
    thread with more than one intra-op thread, oneDNN's recurrent layers ran 5x slower here
    (torch 2.13, OpenMP backend, 2 threads: the `tiny` model took 88 ms for one 3.5-s file
    from a worker thread and 16 ms from the main thread; bench/RESULTS.md). So `speechswarm
    serve` runs the HTTP server in a background thread and the model in the main thread:

        executor = MainThreadExecutor()
        ... the server thread's BatchQueue(run_batch, executor=executor) submits ...
        executor.run(until=lambda: not server_thread.is_alive())
    """

    def __init__(self) -> None:
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = threading.Event()

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        if self._closed.is_set():
            raise RuntimeError("MainThreadExecutor: submit after shutdown")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._work.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuses new work; calls already queued still run (`run` drains them)."""
        self._closed.set()
        self._work.put(None)  # wakes `run`

    def run(self, until: Callable[[], bool], poll_seconds: float = 0.2) -> None:
        """Runs queued calls here until `until()` is true (checked at least every
        `poll_seconds`) or the executor is shut down and drained."""
        while not until():
            try:
                item = self._work.get(timeout=poll_seconds)
            except queue.Empty:
                continue
            if item is None:
                if self._closed.is_set():
                    break
                continue
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except Exception as e:  # the caller sees it
                future.set_exception(e)
            except BaseException:  # Ctrl-C: the caller sees a stop, the interrupt goes on up
                future.set_exception(RuntimeError("the server is stopping"))
                raise
            else:
                future.set_result(result)
