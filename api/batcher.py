"""Micro-batching of generation requests.

Requests for the same (base model, method, requested generator) that arrive
within ``window`` seconds of the first go through ``generate_adapters``, the
same generation path as the CLI and the Python API, as one batch (one
embedding call, one registration transaction). The window is waited only while
another batch is running: a request to an idle generator starts at once with
whatever has already queued. Up to ``workers`` batches
(``LORAMINT_BATCH_WORKERS``, one per CPU by default) are generated at once,
each on a thread of its own with ``threads`` torch threads
(``LORAMINT_BATCH_THREADS``, one by default): a batch's small products use one
core better than two, so on a busy server two batches side by side beat one
batch on two threads, and a lone request is faster on one (docs/experiments.md).
The loaded generators (``LoadedGenerators``) are shared; the requests that
arrive while every worker is busy wait in the queue and form the next batch.
A batch with labelled examples runs the base model, with the process's torch
threads, one such batch at a time. The event loop only awaits futures, so it
never blocks on torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from generator.serve.generate import LoadedGenerators, generate_adapters
from generator.serve.generator import Generated, Request
from registry.errors import LoramintError
from registry.records import AdapterRecord
from registry.service import Registry

Key = tuple[str, str | None, int | None]  # (base model, method, requested generator id)
IDLE_SECONDS = 60.0  # a key's queue and collector go away after this long without requests
Result = tuple[AdapterRecord, Generated]
log = logging.getLogger("loramint.api")


@dataclass
class _Pending:
    request: Request
    future: asyncio.Future[Result]


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0


class GenerationBatcher:
    def __init__(
        self,
        registry: Registry,
        *,
        window: float = 0.01,
        max_batch: int = 32,
        batching: bool = True,
        idle: float = IDLE_SECONDS,
        on_batch: Callable[[int, float], None] | None = None,
        threads: int = 1,
        workers: int = 1,
        generate: Callable[..., list[Result]] = generate_adapters,
    ) -> None:
        """``threads``: torch threads of a zero-shot batch. A batch with labelled examples
        (minutes of scoring and training) uses the process's.
        ``workers``: batches generated at once, each on its own thread. ``generate``:
        what generates a batch (``generate_adapters``; a test injects another)."""
        if workers < 1 or threads < 1:
            raise ValueError(f"workers and threads must be at least 1, got {workers}, {threads}")
        self.registry = registry
        self.window, self.max_batch, self.batching = window, max_batch, batching
        self.threads, self.workers = threads, workers
        # a batch with examples runs on the process's torch threads, set on its worker:
        # a worker thread keeps the count the last batch on it (or on another) left
        self._process_threads = torch.get_num_threads()
        self._generate = generate
        self.idle = idle
        self.on_batch = on_batch
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="generator")
        self._slots: asyncio.Semaphore | None = None  # made on the event loop
        self._queues: dict[Key, asyncio.Queue[_Pending]] = {}
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._base_model_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._loaded = LoadedGenerators(registry)
        self.stats = BatchStats()

    @property
    def queue_depth(self) -> int:
        return sum(q.qsize() for q in self._queues.values())

    async def generate(
        self,
        request: Request,
        *,
        base_model: str,
        method: str | None,
        generator_id: int | None = None,
    ) -> Result:
        """``method`` None: SG-LoRA, or the method of ``generator_id`` when one is named."""
        loop = asyncio.get_running_loop()
        key = (base_model, method, generator_id)
        if not self.batching:
            [result] = await loop.run_in_executor(self.executor, self._run, key, [request])
            return result
        future: asyncio.Future[Result] = loop.create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            self._tasks[key] = asyncio.create_task(self._collect(key, queue))
        await queue.put(_Pending(request, future))
        return await future

    async def _collect(self, key: Key, queue: asyncio.Queue[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                first = await asyncio.wait_for(queue.get(), self.idle)
            except TimeoutError:
                # idle: give the key's queue and task up (no await between the timeout
                # and here, so no request can have joined the queue meanwhile)
                del self._queues[key], self._tasks[key]
                return
            if self._slots is None:
                self._slots = asyncio.Semaphore(self.workers)
            # wait for a free worker first: the requests that come meanwhile join this batch
            await self._slots.acquire()
            batch = [first]
            while len(batch) < self.max_batch and not queue.empty():  # they waited already
                batch.append(queue.get_nowait())
            # the window only while another batch runs: on an idle generator, waiting
            # would delay these requests and let nothing else run meanwhile; the
            # requests that arrive while they run form the next batch
            deadline = loop.time() + (self.window if self._running else 0.0)
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            live = [p for p in batch if not p.future.done()]  # a cancelled client left
            if not live:
                self._slots.release()
                continue
            task = asyncio.create_task(self._dispatch(key, live))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _dispatch(self, key: Key, live: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self.executor, self._run, key, [p.request for p in live]
            )
        except Exception as exc:  # the whole batch fails alike (e.g. no generator)
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        finally:
            assert self._slots is not None
            self._slots.release()
        for p, r in zip(live, results, strict=True):
            if not p.future.done():
                p.future.set_result(r)

    def _run(self, key: Key, requests: list[Request]) -> list[Result]:
        """On the generator thread: the one generation path (decode, then register)."""
        t0 = time.perf_counter()
        base_model, method, generator_id = key
        zero_shot = all(r.fewshot is None for r in requests)
        # a batch with examples runs the base model (one per process, adapters attached
        # to it in turn): one such batch at a time; zero-shot batches never touch it
        with (
            contextlib.nullcontext() if zero_shot else self._base_model_lock,
            torch_threads(self.threads if zero_shot else self._process_threads),
        ):
            results = self._generate(
                self.registry,
                requests,
                base_model=base_model,
                method=method,
                generator_id=generator_id,
                loaded=self._loaded,
            )
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.requests += len(requests)
        if self.on_batch:
            self.on_batch(len(requests), time.perf_counter() - t0)
        return results

    def warm(self) -> list[str]:
        """Load the generator that serves each base model's default (SG-LoRA) requests,
        with the description embedder, and decode one adapter with it (nothing is
        registered), so that a first request waits for none of it. What cannot be
        loaded is left to the request that asks for it, which names the problem.
        Returns what was warmed, as "base model: generator id"."""
        warmed = []
        base_models = sorted({g.base_model for g in self.registry.list_generators(limit=500)})
        for base_model in base_models:
            try:
                generator = self._loaded.serving(base_model, None, None)
                with torch_threads(self.threads):
                    generator.generate([Request("warm up")])
            except LoramintError as exc:  # no SG-LoRA generator, experts deleted...
                log.info("not warmed for %s: %s", base_model, exc)
                continue
            warmed.append(f"{base_model}: generator {generator.id}")
        return warmed

    async def close(self) -> None:
        for task in [*self._tasks.values(), *self._running]:
            task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        return {
            "window_s": self.window,
            "max_batch": self.max_batch,
            "batching": self.batching,
            "threads": self.threads,
            "workers": self.workers,
        }


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch threads (None: as is), then restore the count."""
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
