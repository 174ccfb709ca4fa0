"""The error boundary every pipeline task runs inside: a library error (AmnesiaError) ends the task with its
one line on stderr and in `<run>/errors/<stage>.txt`, exit 1, no traceback; anything else propagates as it is
(a bug or a transient failure shows its traceback, and KFP's retry sees it). The lines name ids and URIs
only: the errors never quote record text.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from amnesia.core.errors import AmnesiaError
from amnesia.storage.context import RunContext
from amnesia.storage.layout import error_uri


@contextlib.contextmanager
def one_line_errors(ctx: RunContext, stage: str) -> Iterator[None]:
    """An AmnesiaError ends the task with its one line (stderr and `<run>/errors/<stage>.txt`), exit 1, no
    traceback; anything else propagates as it is (a bug or a transient failure shows its traceback)."""
    try:
        yield
    except AmnesiaError as err:
        line = f"{stage}: {err}"
        print(f"ERROR {line}", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):  # the store may be what failed
            ctx.store.put_bytes((line + "\n").encode(), error_uri(ctx.root, stage))
        raise SystemExit(1) from None
