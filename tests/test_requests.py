"""Art. 12(3) deadlines: due one month after receipt, extendable by two months with a reason; overdue first."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from amnesia.core.settings import load_settings
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.requests import ErasureRequest, RequestError, RequestQueue, add_months, due_date

NOW = datetime.now(UTC)


def _queue(tmp_path: Path) -> tuple[RequestQueue, str]:
    root = str(tmp_path / "store")
    queue = RequestQueue(ArtifactStore(load_settings(home=tmp_path / "home")), root)
    ages = {"REQ-A-fresh": 3, "REQ-B-old": 40, "REQ-C-soon": 27, "REQ-D-mid": 15}
    queue.submit([ErasureRequest(request_id=rid, subject=f"Person {rid}", ground="a",
                                 received_at=NOW - timedelta(days=days)) for rid, days in ages.items()])  # fmt: skip
    return queue, root


def test_calendar_months_clamp_to_the_months_end() -> None:
    assert add_months(datetime(2026, 1, 31), 1) == datetime(2026, 2, 28)
    assert add_months(datetime(2028, 1, 31), 1) == datetime(2028, 2, 29)
    assert add_months(datetime(2026, 11, 15), 3) == datetime(2027, 2, 15)
    r = ErasureRequest(request_id="R", subject="S", ground="a", received_at=datetime(2026, 3, 10, 9, 0))
    assert due_date(r) == datetime(2026, 4, 10, 9, 0, tzinfo=UTC)  # a naive time is UTC


def test_the_queue_orders_by_due_date_and_marks_the_overdue(tmp_path: Path) -> None:
    queue, _root = _queue(tmp_path)
    due = queue.by_due_date("pending")
    assert [d.request.request_id for d in due] == ["REQ-B-old", "REQ-C-soon", "REQ-D-mid", "REQ-A-fresh"]
    assert [d.overdue(NOW) for d in due] == [True, False, False, False]
    assert due[0].days_left(NOW) < 0 and 0 <= due[1].days_left(NOW) < 7 and due[3].days_left(NOW) > 20


def test_an_extension_moves_the_due_date_at_most_two_months_and_keeps_the_reason(tmp_path: Path) -> None:
    queue, _root = _queue(tmp_path)
    before = queue.by_due_date()[0]
    after = queue.extend("REQ-B-old", "complex request: 3 systems to search", by="dpo", months=1)
    assert after.due == add_months(before.due, 1) and after.extension is not None and after.extension.months == 1
    with pytest.raises(RequestError, match=r"REQ-B-old: extending by 2 month\(s\) makes 3; .* at most 2"):
        queue.extend("REQ-B-old", "more", by="dpo", months=2)
    after = queue.extend("REQ-B-old", "still searching backups", by="dpo", months=1)
    assert after.extension.months == 2 and "complex request" in after.extension.reason  # type: ignore[union-attr]
    assert "still searching" in after.extension.reason  # type: ignore[union-attr]
    with pytest.raises(RequestError, match="needs the reason given to the person"):
        queue.extend("REQ-A-fresh", "  ", by="dpo")
    with pytest.raises(RequestError, match="REQ-Z is not pending"):
        queue.extend("REQ-Z", "why", by="dpo")
    # The request as received is untouched: snapshots (and their digests) never see the extension.
    assert queue.list()[1].model_dump().keys() == ErasureRequest.model_fields.keys()


def test_requests_list_shows_due_dates_overdue_first_without_subjects(tmp_path: Path) -> None:
    _queue(tmp_path)
    cli = [sys.executable, "-m", "amnesia.cli", "requests"]
    env = {"AMNESIA_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([*cli, "list", "--root", str(tmp_path / "store")], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    old = ErasureRequest(request_id="x", subject="x", ground="a", received_at=NOW - timedelta(days=40))
    late = (datetime.now(UTC) - due_date(old)).days  # 40 days minus the month's length
    assert lines[0].startswith("REQ-B-old") and f"OVERDUE by {late} days" in lines[0], lines
    assert "days left" in lines[1] and lines[1].startswith("REQ-C-soon") and "Person" not in out.stdout
    ext = subprocess.run([*cli, "extend", "--request", "REQ-C-soon", "--reason", "backups", "--root",
                          str(tmp_path / "store")], capture_output=True, text=True, env=env)  # fmt: skip
    assert ext.returncode == 0 and "extended 2 months in all" in ext.stdout, ext.stderr
    rows = subprocess.run([*cli, "list", "--json", "--root", str(tmp_path / "store")], capture_output=True, text=True,
                          env=env).stdout.splitlines()  # fmt: skip
    parsed = [json.loads(r) for r in rows]
    assert [r["request_id"] for r in parsed][-1] == "REQ-C-soon" and parsed[-1]["extended_months"] == 2
    assert parsed[0]["overdue"] is True and all("subject" not in r for r in parsed)
