"""What one session's analyses can reuse: the processor, encoded inputs and finished statistics.

`analyze_experts(..., cache=AnalysisCache())` keeps, per base, its processor; per (base,
dataset, K, seed, with_answer) the encoded model inputs; and per (expert folder, dataset,
K, seed, eps, source, scope, with_answer, device, dtype) the expert's activation statistics,
so analysing the same expert on the same data again costs no forward pass. Statistics are
a pure function of those keys (the samples are drawn by seed); an expert whose folder
changes on disk is a new expert to the app (the Experts tab re-adds it). Thread safe; the
stats are bounded (least recently used dropped first).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable


class AnalysisCache:
    def __init__(self, max_inputs: int = 8, max_stats: int = 256):
        self.max_inputs, self.max_stats = max_inputs, max_stats
        self._lock = threading.RLock()
        self._processors: dict[str, Any] = {}
        self._inputs: OrderedDict[Hashable, list] = OrderedDict()
        self._stats: OrderedDict[Hashable, Any] = OrderedDict()

    def processor(self, base: str, load: Callable[[str], Any]) -> Any:
        with self._lock:
            if base not in self._processors:
                self._processors[base] = load(base)
            return self._processors[base]

    def set_processor(self, base: str, processor: Any) -> None:
        with self._lock:
            self._processors.setdefault(base, processor)

    def inputs(self, key: Hashable, make: Callable[[], list]) -> list:
        return self._get(self._inputs, self.max_inputs, key, make)

    def stats(self, key: Hashable) -> Any | None:
        with self._lock:
            if key in self._stats:
                self._stats.move_to_end(key)
            return self._stats.get(key)

    def put_stats(self, key: Hashable, stats: Any) -> None:
        with self._lock:
            self._stats[key] = stats
            while len(self._stats) > self.max_stats:
                self._stats.popitem(last=False)

    def _get(self, store: OrderedDict, cap: int, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in store:
                store.move_to_end(key)
                return store[key]
            value = store[key] = make()
            while len(store) > cap:
                store.popitem(last=False)
            return value

    def clear(self) -> None:
        with self._lock:
            self._processors.clear()
            self._inputs.clear()
            self._stats.clear()
