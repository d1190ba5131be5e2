"""Progress output of the ``mdla`` commands: a tqdm bar of named steps on stderr whose elapsed time
keeps ticking while a long step runs (a compile, a run, a tutorial block), so a command is never
silent for long. The bar appears only after ``$MDLA_PROGRESS_DELAY`` seconds (default 1: quick
commands print none) and not at all with ``MDLA_PROGRESS=0``; it is removed when the command ends,
leaving the command's own report. Text printed meanwhile goes through :meth:`Steps.write`, above
the bar."""
from __future__ import annotations

import os
import sys
import threading

__all__ = ["Steps"]


def _delay() -> float:
    try:
        return float(os.environ.get("MDLA_PROGRESS_DELAY", 1.0))
    except ValueError:
        return 1.0


def _bar_class():
    from hw.progress import Bar      # tqdm without its monitor thread, which would outlive the command
    return Bar


class Steps:
    """``with Steps(n, 'mdla run') as p: p.step('compiling'); ...; p.step('running'); ...``: each
    :meth:`step` completes the previous one and names the next."""

    def __init__(self, total: int, desc: str, enabled: bool | None = None):
        if enabled is None:
            enabled = os.environ.get("MDLA_PROGRESS", "1") != "0"
        self.enabled = enabled
        self._tqdm = _bar_class()
        self.bar = self._tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False, disable=not enabled,
                        delay=_delay(), dynamic_ncols=True,
                        bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}]{postfix}")
        self._started = False
        self._delay = _delay()
        self._shown = self._delay <= 0
        self._stop = threading.Event()
        self._ticker = None

    def step(self, what: str) -> None:
        if self._started:
            self.bar.update(1)
        self._started = True
        self.bar.set_postfix_str(what, refresh=self._shown)

    def write(self, text: str) -> None:
        """Print ``text`` on stdout above the bar."""
        if self._shown:
            self._tqdm.write(text, file=sys.stdout)
        else:
            print(text)

    def _tick(self) -> None:
        if self._stop.wait(self._delay):
            return
        self._shown = True
        while True:
            self.bar.refresh()
            if self._stop.wait(0.5):
                return

    def __enter__(self) -> "Steps":
        if self.enabled:
            self._ticker = threading.Thread(target=self._tick, name="mdla-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._started and exc[0] is None:
            self.bar.update(1)
        self.bar.close()
