"""``pool_many``'s parts that do no I/O: cutting a stream of items into requests that fit the
server's limits, and the progress bar."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from adapool_client._results import Limits
from adapool_client._wire import PoolOptions

# Room for the .npy header and for the server's own framing, below max_body_bytes.
BODY_MARGIN = 4096


@dataclass(frozen=True)
class Many:
    """A pool_many call's settings (see ``Client.pool_many``)."""

    options: PoolOptions
    batch_size: int = 32
    concurrency: int = 4
    progress: bool = False
    max_batch_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "concurrency", "max_batch_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: must be >= 1, got {value}")


class Planner:
    """Groups items ([N_i, D] arrays, in input order) into batches of at most ``batch_size``
    items whose padded size (items x longest item) stays within the server's token and body
    limits. An item over the limits alone goes alone, and the server's 413 says which limit."""

    def __init__(
        self, batch_size: int, limits: Limits | None, max_batch_tokens: int | None, itemsize: int
    ) -> None:
        self.batch_size = batch_size
        self.max_tokens = max_batch_tokens
        self.max_body = None
        if limits is not None:
            self.batch_size = min(batch_size, limits.max_items_per_request)
            if max_batch_tokens is None:
                self.max_tokens = limits.max_tokens_per_request
            self.max_body = limits.max_body_bytes - BODY_MARGIN
        self.itemsize = itemsize
        self.pending: list[NDArray[Any]] = []
        self.longest = 0
        self.offset = 0  # index in the input of pending[0]
        self.dim: int | None = None

    def _budget(self, dim: int) -> int | None:
        """The most padded tokens per request for tokens of ``dim`` numbers."""
        budgets = [] if self.max_tokens is None else [self.max_tokens]
        if self.max_body is not None:
            budgets.append(self.max_body // max(1, dim * self.itemsize))
        return min(budgets) if budgets else None

    def add(self, item: ArrayLike) -> tuple[int, list[NDArray[Any]]] | None:
        """Take the next item; returns (offset, batch) when a batch is complete without it.
        Raises ValueError or TypeError naming the item's index in the input."""
        index = self.offset + len(self.pending)
        array = np.asarray(item)
        if array.dtype.kind not in "fiub":
            raise TypeError(f"items[{index}]: needs numbers, got an array of dtype {array.dtype}")
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"items[{index}]: must be [N, D] with N >= 1, got {array.shape}")
        if self.dim is None:
            self.dim = int(array.shape[1])
        elif array.shape[1] != self.dim:
            raise ValueError(
                f"items[{index}]: token dim {array.shape[1]} differs from item 0's {self.dim}"
            )
        n = int(array.shape[0])
        out = None
        if self.pending:
            longest = max(self.longest, n)
            budget = self._budget(self.dim)
            full = len(self.pending) >= self.batch_size
            if full or (budget is not None and (len(self.pending) + 1) * longest > budget):
                out = self.flush()
        self.pending.append(array)
        self.longest = max(self.longest, n)
        return out

    def flush(self) -> tuple[int, list[NDArray[Any]]] | None:
        if not self.pending:
            return None
        out = (self.offset, self.pending)
        self.offset += len(self.pending)
        self.pending, self.longest = [], 0
        return out


class Progress(Protocol):
    def update(self, n: int) -> Any: ...

    def close(self) -> Any: ...


class _Counter:
    """The progress bar without tqdm: one line on stderr, rewritten."""

    def __init__(self, total: int | None) -> None:
        self.done, self.total = 0, total

    def update(self, n: int) -> None:
        self.done += n
        of = f"/{self.total:,}" if self.total is not None else ""
        print(f"\rpooled {self.done:,}{of} items", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.done:
            print(file=sys.stderr)


class _Silent:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, items: object) -> Progress:
    """tqdm when it is installed, else a line on stderr; nothing when not ``enabled``."""
    if not enabled:
        return _Silent()
    total = len(items) if hasattr(items, "__len__") else None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Counter(total)
    bar: Progress = tqdm(total=total, unit="item", desc="pool")
    return bar
