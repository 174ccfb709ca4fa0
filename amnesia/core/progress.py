"""Progress for long loops: a bar in a terminal, and where there is none (a kfp.local task, a pod) a log
line every `every_s` seconds with the step, the rate and the time left, so a run is never silent."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from tqdm import tqdm


class Progress:
    """`cap`: the total is an upper bound (an early stop may end the loop sooner), so the count and the time
    left are shown as at most ("step 40/≤480", "ETA ≤ 1h39m") and a bar says so in its description."""

    def __init__(
        self, total: int, desc: str, unit: str, log: logging.Logger, initial: int = 0, every_s: float = 30.0,
        cap: bool = False,
    ) -> None:  # fmt: skip
        self.total, self.desc, self.unit, self.log, self.every_s, self.cap = total, desc, unit, log, every_s, cap
        self.done = self.start_done = initial
        # a logger quieted below INFO (another rank of a torchrun job) quiets the bar as well
        self.terminal = sys.stderr.isatty() and log.isEnabledFor(logging.INFO)
        label = f"{desc} (at most {total}: may stop early)" if cap else desc
        self.bar = tqdm(total=total, initial=initial, desc=label, unit=unit) if self.terminal else None
        self.t0 = self.last = time.monotonic()
        self.logged = initial  # `done` at the last log line

    def update(self, n: int = 1, figures: Mapping[str, float] | None = None) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if figures:
                self.bar.set_postfix({k: f"{v:.3g}" for k, v in figures.items()})
            return
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last, self.logged = now, self.done
            self.log.info("%s", self.line(now, figures))

    def line(self, now: float, figures: Mapping[str, float] | None = None) -> str:
        """'unlearning: step 40/120 (33%), 1.9 step/s, ETA 42s; forget_loss -3.1, m 6.2'; with a cap:
        'step 40/≤120 (33%), …, ETA ≤ 42s (an early stop may end it sooner)'."""
        rate = (self.done - self.start_done) / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        share = 100 * self.done / max(self.total, 1)
        bound = "≤" if self.cap else ""
        text = f"{self.desc}: {self.unit} {self.done}/{bound}{self.total} ({share:.0f}%), {rate:.3g} {self.unit}/s"
        text += f", ETA ≤ {span(eta)} (an early stop may end it sooner)" if self.cap else f", ETA {span(eta)}"
        if figures:
            text += "; " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items())
        return text

    def close(self) -> None:
        """A loop that ends before its total (an early stop) says where it ended."""
        if self.bar is not None:
            self.bar.close()
        elif self.done != self.logged:
            elapsed = span(time.monotonic() - self.t0)
            early = " (stopped early)" if self.cap and self.done < self.total else ""
            self.log.info("%s: %s %d/%d, ended after %s%s", self.desc, self.unit, self.done, self.total, elapsed, early)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def span(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")
    )
