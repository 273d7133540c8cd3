"""WriteBuffer: ledger writes that wait, in order, until the database takes them."""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

log = logging.getLogger(__name__)


def is_transient(error: BaseException) -> bool:
    """True for failures that retrying can cure: unreachable, locked, connection lost.

    Everything else is a write the database refuses for good: a value a column
    cannot hold (``DataError``), a broken constraint (``IntegrityError``), a
    value the statement cannot bind (``StatementError``), a ledger check
    (``ValueError``). A database that is down is never such a refusal.
    """
    if isinstance(error, (OperationalError, PoolTimeoutError)):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


class WriteBuffer:
    """A queue of pending writes (calls of idempotent ledger methods), applied in order.

    ``buffer.add(ledger.open_session, container_id=..., ...)`` then, off the
    event loop, ``buffer.flush()``. A flush stops at the first transient
    failure (database unreachable or locked) and keeps that write and all after
    it for the next flush, so nothing is lost or reordered. A write that fails
    otherwise (a bug, a value the database refuses) would fail forever and
    block all later writes: it is moved to :attr:`rejected` with its error and
    logged, and the flush goes on.

    Thread-safe: add from the event loop while a flush runs in an executor.
    """

    def __init__(self, *, transient: Callable[[BaseException], bool] = is_transient):
        self._pending: deque[Callable[[], object]] = deque()
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._transient = transient
        #: the error that stopped the last flush; None once a flush empties the buffer
        self.last_error: BaseException | None = None
        #: (write, error) of writes that failed in a way retrying cannot cure
        self.rejected: list[tuple[Callable[[], object], BaseException]] = []
        self._rejected_taken = 0

    def add(self, write: Callable, /, *args, **kwargs) -> None:
        """Queue ``write(*args, **kwargs)``."""
        with self._lock:
            self._pending.append(functools.partial(write, *args, **kwargs))

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def pending(self) -> list[Callable[[], object]]:
        """The queued writes, oldest first (functools.partial objects)."""
        with self._lock:
            return list(self._pending)

    def take_rejected(self) -> list[tuple[Callable[[], object], BaseException]]:
        """The (write, error) pairs rejected since the last call, oldest first.

        For the caller to act on a write that will never happen (the meter
        stops a server whose session could not be opened).
        """
        with self._lock:
            taken = self.rejected[self._rejected_taken :]
            self._rejected_taken = len(self.rejected)
            return taken

    def flush(self) -> int:
        """Apply queued writes in order until one fails transiently; how many were applied.

        Blocking: run it off the event loop.
        """
        applied = 0
        with self._flushing:
            while True:
                with self._lock:
                    if not self._pending:
                        self.last_error = None
                        return applied
                    write = self._pending[0]
                try:
                    write()
                except Exception as error:
                    if self._transient(error):
                        self.last_error = error
                        log.warning(
                            "Ledger write failed, %d pending, retrying later: %s", len(self), error
                        )
                        return applied
                    with self._lock:
                        self._pending.popleft()
                        self.rejected.append((write, error))
                    self.last_error = error
                    log.error("Ledger write %r rejected, not retried: %s", write, error)
                    continue
                with self._lock:
                    self._pending.popleft()
                applied += 1
