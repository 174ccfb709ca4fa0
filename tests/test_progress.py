"""Progress without a terminal (kfp.local tasks, pods): rate-limited log lines with step, rate and ETA."""

from __future__ import annotations

import logging

import pytest

from amnesia.core.progress import Progress, span


def test_without_a_terminal_it_logs_step_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("amnesia.test-progress")
    with caplog.at_level(logging.INFO, logger=log.name), Progress(4, "unlearning", "step", log, every_s=0) as bar:
        assert bar.bar is None  # pytest's stderr is not a terminal
        bar.update(1, {"forget_loss": -3.14159, "m": 6.0})
        bar.update(3)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("unlearning: step 1/4 (25%), ") and " step/s, ETA " in lines[0]
    assert lines[0].endswith("; forget_loss -3.14, m 6")
    assert lines[1].startswith("unlearning: step 4/4 (100%)") and lines[1].endswith("ETA 0s")


def test_an_early_stop_says_where_it_ended(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("amnesia.test-progress")
    with caplog.at_level(logging.INFO, logger=log.name), Progress(600, "unlearning", "step", log, every_s=3600) as bar:
        bar.update(70)
    assert [r.getMessage() for r in caplog.records] == ["unlearning: step 70/600, ended after 0s"]


def test_lines_are_rate_limited_but_the_last_is_always_logged(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("amnesia.test-progress")
    with caplog.at_level(logging.INFO, logger=log.name), Progress(100, "tracing", "fact", log, every_s=3600) as bar:
        for _ in range(100):
            bar.update(1)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["tracing: fact 100/100 (100%)"]


def test_time_spans_read_as_a_person_would() -> None:
    assert [span(s) for s in (0, 42, 61, 3599, 3661, float("inf"))] == [
        "0s",
        "42s",
        "1m01s",
        "59m59s",
        "1h01m",
        "unknown",
    ]


def test_a_capped_loop_says_its_eta_is_an_upper_bound(caplog: pytest.LogCaptureFixture) -> None:
    """Unlearning with an early stop: 480 steps is a cap, not a forecast (a run that ended at step 70 once
    showed 'ETA 1h39m')."""
    log = logging.getLogger("amnesia.test-progress")
    with caplog.at_level(logging.INFO, logger=log.name):
        with Progress(480, "unlearning", "step", log, every_s=0, cap=True) as bar:
            bar.update(10)
        with Progress(480, "unlearning", "step", log, every_s=3600, cap=True) as bar:
            bar.update(70)
    first, ended = (r.getMessage() for r in caplog.records)
    assert first.startswith("unlearning: step 10/≤480 (2%), ") and ", ETA ≤ " in first
    assert first.endswith("(an early stop may end it sooner)")
    assert ended == "unlearning: step 70/480, ended after 0s (stopped early)"
