"""SIGTERM (`ray job stop`, a scheduler's kill) and Ctrl-C take Ray Tune's graceful stop path.

Tune (2.60) handles SIGINT/SIGUSR1 itself: its handler sets an event, the control loop stops,
the experiment state is written one last time and the trials are stopped. SIGTERM gets no such
handler: `ray.init` installs `sys.exit`, so a terminated driver leaves no final snapshot. Here
both signals are routed into Tune's own handler; a second signal exits at once (like a second
Ctrl-C). `fit()` returns normally after a graceful stop, so the runner checks `requested`.

    stop = GracefulStop().install()   # after ray.init, which replaces the SIGTERM handler
    ... tune.RunConfig(callbacks=[..., stop]) ...   # forwards a signal that came before fit() began
"""

from __future__ import annotations

import os
import signal
from typing import Any

from ray import tune


class GracefulStop(tune.Callback):
    """A signal handler and Tune callback; `requested` tells whether a stop was asked for."""

    def __init__(self) -> None:
        self.requested = False
        self.signal: int | None = None
        self._count = 0
        self._forwarded = False

    def __getstate__(self) -> dict[str, Any]:
        return {}  # pickled with the Tuner: only its settings would travel, and it has none

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def install(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> GracefulStop:
        """Handle `signals` (main thread only); Tune's own SIGINT handler is then left out."""
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for s in signals:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self._count += 1
        self.requested = True
        self.signal = signum
        if self._count > 1:
            raise SystemExit(128 + signum)
        self._forward(frame)

    def _forward(self, frame: Any = None) -> None:
        # Tune installs its stop handler for SIGUSR1 at the start of every fit().
        handler = signal.getsignal(signal.SIGUSR1)
        if callable(handler):
            handler(signal.SIGINT, frame)
            self._forwarded = True

    def setup(self, **info: Any) -> None:
        """A new fit() began (Tune's handler is installed now)."""
        self._forwarded = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        """Forward a stop requested before this fit() could take it."""
        if self.requested and not self._forwarded:
            self._forward()
