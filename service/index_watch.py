"""Follow the CURRENT pointer of the index root: when another process (``seisbind build-index``, another replica's
admin rebuild, a rollback) moves it, load and verify that version off the request path and swap it in.

Replicas serving one shared, read-only index volume (docs/architecture.md#scale) thus converge on the same version
without
restarts. A version that does not verify is logged (ERROR) and refused, the served one keeps serving, and it is
retried only after a back-off (doubling up to an hour), never in a tight loop; a different CURRENT is tried at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from index.store import IndexStore, IndexStoreError
from service.core.cpus import unpin_thread
from service.engine import Engine

log = logging.getLogger("service.index_watch")

RETRY_FIRST_S = 60.0
"""A refused version is retried this long after its first refusal, then after twice as long each time..."""
RETRY_MAX_S = 3600.0
"""...up to this long."""


class CurrentWatcher:
    """Checks CURRENT every ``interval_s`` seconds in a daemon thread (:meth:`start`, :meth:`stop`).

    Args:
        engine: the engine whose index is swapped; a version CURRENT named and it refused at start is not
            retried before the back-off.
        interval_s: seconds between checks (> 0).
        busy: True while a rebuild of this process runs (it swaps its version in itself; checks wait for it).
    """

    def __init__(self, engine: Engine, interval_s: float, busy: Callable[[], bool] = lambda: False) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s={interval_s}: must be > 0")
        self.engine = engine
        self.interval_s = interval_s
        self._busy = busy
        self._store = IndexStore(engine.settings.index_root)
        self._refused: dict[str, tuple[float, float]] = {}  # version -> (retry at (monotonic), back-off s)
        self._pointer_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if engine.current_refused and engine.current_version:
            self._refuse(engine.current_version)

    def start(self) -> None:
        """Start checking in a daemon thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="index-watch", daemon=True)
        self._thread.start()
        log.info("following CURRENT of %s every %.3g s", self._store.root, self.interval_s)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (waits for a check in progress, up to ``timeout``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        unpin_thread()  # started from the event loop's thread, which may be pinned to one core
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive any surprise; the index keeps serving
                log.exception("checking CURRENT of %s failed", self._store.root)

    def check(self) -> str | None:
        """One check: when CURRENT names a version other than the one served (and not refused recently), load it,
        verify it and swap it in. Returns the version swapped in, or None."""
        try:
            current = self._store.current()
        except (IndexStoreError, OSError) as e:
            if str(e) != self._pointer_error:  # log a garbled/unreadable pointer once, not at every check
                log.error("index CURRENT unreadable, keep serving %s: %s", self._served(), e)
                self._pointer_error = str(e)
            return None
        self._pointer_error = None
        if current is None or current == self._served() or self._busy():
            return None
        retry = self._refused.get(current)
        if retry is not None and time.monotonic() < retry[0]:
            return None
        try:
            searcher = self.engine.load_version(current)
        except Exception as e:  # noqa: BLE001 - any failure refuses the version; the served one keeps serving
            self._refuse(current)
            self.engine.current_version, self.engine.current_refused = current, str(e)
            log.error("index version %s (CURRENT) refused, keep serving %s: %s", current, self._served(), e,
                      extra={"version": current, "retry_in_s": self._refused[current][1]})
            return None
        try:
            moved = self._store.current() != current
        except (IndexStoreError, OSError):
            moved = True
        if moved or self._busy():  # CURRENT moved on (or a rebuild started) while loading: next check decides
            return None
        self._refused.pop(current, None)
        self.engine.swap(searcher)
        log.info("index version %s picked up from CURRENT", current, extra={"version": current})
        return current

    def _served(self) -> str | None:
        s = self.engine.searcher
        return s.version if s is not None else None

    def _refuse(self, version: str) -> None:
        backoff = min(RETRY_MAX_S, 2 * self._refused[version][1]) if version in self._refused else RETRY_FIRST_S
        backoff = max(backoff, self.interval_s)
        self._refused[version] = (time.monotonic() + backoff, backoff)
