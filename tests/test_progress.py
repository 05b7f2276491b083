"""The progress of long phases: a live line on a terminal, log lines under cron.

Under pytest stderr is not a terminal, so the terminal case is tested with a stream that says it is one.
"""
from __future__ import annotations

import io
import logging
import sys

import airtable_sync
from airtable_sync import Progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_live_line_shows_done_of_total():
    terminal = FakeTerminal()
    with Progress("users: create", 30, stream=terminal) as progress:
        for _ in range(3):
            progress.update(10)
    out = terminal.getvalue()
    assert "users: create" in out and "30/30" in out
    assert "\r" in out  # redrawn in place


def test_on_a_terminal_an_unknown_total_counts_up():
    terminal = FakeTerminal()
    with Progress("users: pull", stream=terminal) as progress:
        progress.update(100)
        progress.update(100)
    assert "users: pull" in terminal.getvalue() and "200" in terminal.getvalue()


def test_on_a_terminal_log_lines_go_above_the_live_line_masked_as_before(monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(airtable_sync.RedactToken("sekrit-token"))
    handler.addFilter(lambda record: not getattr(record, "log_file_only", False))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with Progress("users: update", 20) as progress:
            progress.update(10)
            logging.getLogger("airtable_sync").warning("a warning naming sekrit-token")
            logging.getLogger("airtable_sync").warning("for the log file", extra=airtable_sync.LOG_FILE_ONLY)
            progress.update(10)
        assert root.handlers[-1] is handler  # given back
    finally:
        root.removeHandler(handler)
    out = terminal.getvalue()
    assert "a warning naming [token]\n" in out and "sekrit-token" not in out and "for the log file" not in out
    assert "20/20" in out and out.index("a warning") < out.rindex("20/20")


def test_without_a_terminal_it_logs_lines_and_writes_nothing_else(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="airtable_sync"):
        with Progress("users: create", 30, stream=stream, log_every_s=0) as progress:
            for _ in range(3):
                progress.update(10)
    assert stream.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("users: create: 10/30 records (") and "s left)" in lines[0]
    assert lines[-1].startswith("users: create: 30/30 records (")
    assert not any("\r" in line for line in lines)


def test_without_a_terminal_a_short_phase_stays_quiet_and_an_unknown_total_says_so_far(caplog):
    with caplog.at_level(logging.INFO, logger="airtable_sync"):
        with Progress("users: update", 5, stream=io.StringIO()) as progress:
            progress.update(5)  # well within the 5 s between log lines
        assert caplog.records == []
        with Progress("users: pull", stream=io.StringIO(), log_every_s=0) as progress:
            progress.update(100)
    assert caplog.records[0].getMessage().startswith("users: pull: 100 records so far (")
    assert caplog.records[-1].getMessage().startswith("users: pull: 100 records (")


def test_a_sync_whose_stderr_is_not_a_terminal_writes_no_live_line(harness, capfd):
    assert harness.run() == 1  # the fixtures hold one bad record on purpose
    err = capfd.readouterr().err
    assert "\r" not in err and "%|" not in err and "records/s" not in err
    assert "users: applied" in err  # the log lines are there


def test_a_sync_on_a_terminal_shows_live_lines_for_the_pull_and_the_writes(harness, monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert harness.run() == 1
    out = terminal.getvalue()
    assert "\r" in out
    assert "users: pull" in out and "messages: pull" in out
    assert "users: create" in out and "messages: create" in out
    assert "users: applied" in out  # log lines still reach the terminal, above the live line
    assert "maria.lopez@example.com" not in out and "not-an-email" not in out  # counts, never values
