"""A small batching queue: requests wait at most `max_wait_s` for others with the same batch key (same sampler
settings), up to `max_batch`, then one worker thread runs them together."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


@dataclass
class _Item:
    key: Hashable
    payload: Any
    future: Future


class BatchQueue:
    def __init__(self, process: Callable[[list[Any]], list[Any]], max_batch: int = 8, max_wait_s: float = 0.01):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._process = process
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._held: list[_Item] = []  # taken from the queue but of another key than the batch being formed
        self._thread = threading.Thread(target=self._run, name="batch-worker", daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, payload: Any) -> Future:
        future: Future = Future()
        self._queue.put(_Item(key, payload, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _next(self, timeout: float | None) -> _Item | None | bool:
        if self._held:
            return self._held.pop(0)
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return False

    def _run(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            batch, others, closing = [first], [], False
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                item = self._next(max(0.0, deadline - time.monotonic()))
                if item is False:
                    break
                if item is None:
                    closing = True
                    break
                (batch if item.key == first.key else others).append(item)
            self._held = others + self._held
            try:
                results = self._process([it.payload for it in batch])
                for it, res in zip(batch, results):
                    it.future.set_result(res)
            except Exception as e:  # one bad batch must not stop the server: fail its requests only
                for it in batch:
                    it.future.set_exception(e)
            if closing:
                for it in self._held:
                    it.future.set_exception(RuntimeError("server shutting down"))
                return
