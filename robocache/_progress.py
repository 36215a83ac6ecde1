"""Progress bars for long loads (decode, read, upload).

`progress`, as every loader takes it:
- None (default): a tqdm bar that appears only once the work has run for about a second and
  only when stderr is a terminal;
- True: always shown (even when not a terminal), from the start;
- False: never shown;
- an object with .update(n) (e.g. a tqdm bar the caller opened for a bigger job): advanced,
  neither opened nor closed here, so one bar can span several loads or uploads.
Without tqdm installed nothing is shown. Bars are safe to update from several threads.
"""

from __future__ import annotations

import threading

DELAY_S = 1.0


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Shared(_Silent):
    """A bar advanced under a lock: loaders advance theirs from reader and fill threads, and
    neither a caller's bar nor tqdm's counter is safe for that. Closed on exit only when this
    module opened it (`owned`)."""

    def __init__(self, bar, owned: bool):
        self._bar, self._owned = bar, owned
        self._lock = threading.Lock()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self._bar.update(n)

    def close(self) -> None:
        if self._owned:
            self._bar.close()


def check(progress) -> None:
    """Refuse a `progress` that bar() would refuse, before any work ("yes", 1: not a choice this
    takes)."""
    if progress is not None and not isinstance(progress, bool) and \
            not hasattr(progress, "update"):
        raise TypeError(f"progress: expected None, True, False or a bar with update(n), got "
                        f"{progress!r:.60}")


def bar(total: int | float, desc: str, *, unit: str = "B", progress=None):
    """A context manager with .update(n); silent per the rules above."""
    check(progress)
    if progress is False:
        return _Silent()
    if progress is not None and progress is not True:
        return _Shared(progress, owned=False)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the formats extra
        return _Silent()
    auto = progress is None
    return _Shared(tqdm(total=total, desc=desc, unit=unit, unit_scale=True,
                        unit_divisor=1024 if unit == "B" else 1000,
                        delay=DELAY_S if auto else 0.0, disable=None if auto else False,
                        leave=False, dynamic_ncols=True), owned=True)
