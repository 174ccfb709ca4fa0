"""Stops process groups when their owner process ends or a time limit passes.

Started by `stack.up(owner_pid=..., ttl_s=...)` so that servers a test run starts stop by
themselves, even when the test run is killed before its teardown.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
from collections.abc import Callable


def _exists(send: Callable[[int, int], None], target: int) -> bool:
    """Does a process (os.kill) or process group (os.killpg) still exist? Signal 0 only asks."""
    try:
        send(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="amnesia.devstack.watchdog")
    parser.add_argument("--pgid", type=int, action="append", required=True)
    parser.add_argument("--owner", type=int)
    parser.add_argument("--ttl", type=float)
    parser.add_argument("--poll", type=float, default=0.5)
    parser.add_argument("--grace", type=float, default=3.0, help="seconds between SIGTERM and SIGKILL")
    args = parser.parse_args(argv)

    deadline = time.monotonic() + args.ttl if args.ttl else None
    while True:
        if args.owner is not None and not _exists(os.kill, args.owner):
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(args.poll)
    for pgid in args.pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + args.grace
    while time.monotonic() < deadline and any(_exists(os.killpg, pgid) for pgid in args.pgid):
        time.sleep(0.2)
    for pgid in args.pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":
    main()
