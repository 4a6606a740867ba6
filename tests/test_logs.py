"""Structured logs: JSON lines that carry the request id, in any thread."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from personatag.logs import (
    JsonFormatter,
    RequestContextFilter,
    TextFormatter,
    configure_logging,
    current_context,
    redact,
    request_context,
)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose records go to a JSON stream handler (and nowhere else)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContextFilter())
    logger = logging.getLogger("personatag.test_logs")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_one_json_object_per_line_with_the_core_fields(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.info("claimed %s", "a/b.json")
    logger.warning("two\nlines")
    first, second = _lines(stream)
    assert set(first) == {"ts", "level", "logger", "message"}
    assert first["level"] == "INFO"
    assert first["logger"] == "personatag.test_logs"
    assert first["message"] == "claimed a/b.json"
    assert second == {**second, "level": "WARNING", "message": "two\nlines"}
    ts = datetime.fromisoformat(first["ts"])
    assert first["ts"].endswith("Z") and ts.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - ts) < timedelta(seconds=60)


def test_request_context_adds_the_ids_and_restores_on_exit(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    with request_context("req-1", job=7):
        logger.info("outer")
        with request_context("req-2"):
            logger.info("inner")
            assert current_context() == {"request_id": "req-2"}
        logger.info("outer again")
        # A record from another module (any logger) carries the ids too.
        other = logging.getLogger("personatag.elsewhere")
        other.propagate = False
        other.addHandler(logger.handlers[0])
        try:
            other.error("from elsewhere")
        finally:
            other.removeHandler(logger.handlers[0])
            other.propagate = True
    logger.info("outside")
    outer, inner, again, elsewhere, outside = _lines(stream)
    assert (outer["request_id"], outer["job"]) == ("req-1", 7)
    assert inner["request_id"] == "req-2" and "job" not in inner
    assert (again["request_id"], again["job"]) == ("req-1", 7)
    assert (elsewhere["logger"], elsewhere["request_id"]) == ("personatag.elsewhere", "req-1")
    assert "request_id" not in outside and "job" not in outside
    assert current_context() == {}


def test_context_is_restored_when_the_block_raises(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    with pytest.raises(RuntimeError), request_context("req-x", job=1):
        raise RuntimeError("boom")
    logger.info("after")
    assert "request_id" not in _lines(stream)[0]


def test_threads_keep_their_own_request_ids(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    start = threading.Barrier(8)

    def job(n: int) -> None:
        with request_context(f"req-{n}", job=n):
            start.wait(timeout=10)  # every thread is inside its block at once
            for i in range(50):
                logger.info("step %d of job %d", i, n)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(job, range(8)))
    lines = _lines(stream)
    assert len(lines) == 8 * 50
    for line in lines:
        n = int(line["message"].rsplit(" ", 1)[1])
        assert (line["request_id"], line["job"]) == (f"req-{n}", n)


def test_a_new_thread_inherits_the_ids_only_when_given_the_context(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    with request_context("req-parent", job=3):
        plain = threading.Thread(target=logger.info, args=("plain thread",))
        plain.start()
        plain.join()
        ctx = contextvars.copy_context()
        copied = threading.Thread(target=ctx.run, args=(logger.info, "copied context"))
        copied.start()
        copied.join()
    plain_line, copied_line = _lines(stream)
    assert "request_id" not in plain_line
    assert (copied_line["request_id"], copied_line["job"]) == ("req-parent", 3)


def test_exceptions_are_one_string_field(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError("bad value\nsecond line")
    except ValueError:
        with request_context("req-9"):
            logger.exception("request failed")
    logger.error("no exception here", exc_info=False)
    (line, plain) = _lines(stream)
    assert line["level"] == "ERROR"
    assert line["message"] == "request failed"
    assert line["request_id"] == "req-9"
    assert isinstance(line["exc"], str)
    assert line["exc"].startswith("Traceback (most recent call last):")
    assert line["exc"].rstrip().endswith("ValueError: bad value\nsecond line")
    assert "test_exceptions_are_one_string_field" in line["exc"]
    assert "exc" not in plain
    assert len(stream.getvalue().splitlines()) == 2  # the traceback did not break the line


def test_extra_fields_are_kept_and_cannot_replace_core_fields(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    when = datetime(2026, 1, 2, tzinfo=UTC)
    with request_context("req-ctx", job=1):
        logger.info(
            "job finished",
            extra={"status": "succeeded", "seconds": 1.5, "tagged": 3, "at": when, "ts": "x"},
        )
        logger.info("explicit id", extra={"request_id": "req-explicit"})
    line, explicit = _lines(stream)
    assert line["status"] == "succeeded"
    assert line["seconds"] == 1.5 and line["tagged"] == 3
    assert line["at"] == str(when)  # not JSON: written as text, the line still parses
    assert line["ts"] != "x"
    assert explicit["request_id"] == "req-explicit" and explicit["job"] == 1


def test_stack_info_is_kept(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("where am I", stack_info=True)
    (line,) = _lines(stream)
    assert line["stack"].startswith("Stack (most recent call last):")


@pytest.fixture
def root_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


@pytest.mark.usefixtures("root_restored")
def test_configure_logging_json_covers_every_logger() -> None:
    stream = io.StringIO()
    configure_logging("info", json=True, stream=stream)
    with request_context("req-cfg", job=2):
        logging.getLogger("personatag.requests.dispatcher").info("hello")
        logging.getLogger("personatag.requests.dispatcher").debug("not at info")
        logging.getLogger("sqlalchemy.engine").warning("a library")
    a, b = _lines(stream)
    assert (a["logger"], a["message"], a["request_id"], a["job"]) == (
        "personatag.requests.dispatcher",
        "hello",
        "req-cfg",
        2,
    )
    assert (b["logger"], b["level"], b["request_id"]) == ("sqlalchemy.engine", "WARNING", "req-cfg")


@pytest.mark.usefixtures("root_restored")
def test_configure_logging_again_replaces_its_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    h1 = configure_logging(logging.DEBUG, json=True, stream=first)
    h2 = configure_logging(logging.WARNING, json=False, stream=second)
    root = logging.getLogger()
    assert h1 not in root.handlers and h2 in root.handlers
    assert root.level == logging.WARNING
    logging.getLogger("personatag.x").warning("only once")
    assert first.getvalue() == ""
    assert second.getvalue().count("only once") == 1


@pytest.mark.usefixtures("root_restored")
def test_text_format_shows_the_ids_on_the_message_line() -> None:
    stream = io.StringIO()
    configure_logging(logging.INFO, json=False, stream=stream)
    log = logging.getLogger("personatag.y")
    log.info("plain")
    with request_context("req-t", job=5):
        try:
            raise KeyError("k")
        except KeyError:
            log.exception("failed")
    lines = stream.getvalue().splitlines()
    stamp, rest = lines[0].split(" ", 1)
    assert stamp.endswith("Z") and datetime.fromisoformat(stamp).utcoffset() == timedelta(0)
    assert rest == "INFO personatag.y: plain"
    assert lines[1].endswith(" ERROR personatag.y: failed [request_id=req-t job=5]")
    assert lines[2] == "Traceback (most recent call last):"
    assert isinstance(
        configure_logging(logging.INFO, json=False, stream=stream).formatter, TextFormatter
    )


@pytest.mark.usefixtures("root_restored")
def test_unknown_level_is_refused_and_changes_nothing() -> None:
    before = list(logging.getLogger().handlers)
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        configure_logging("LOUD", json=True, stream=io.StringIO())
    assert logging.getLogger().handlers == before


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_no_secret_reaches_a_log_line(formatter: logging.Formatter) -> None:
    """Issue 17 item 12: secrets in a message, in `extra=` fields or in an
    exception's text are written as [redacted] in either format."""
    token = "pt_" + "A1b2C3d4E5f6G7h8I9j0K"
    try:
        raise RuntimeError(f"upstream refused https://bob:pw@x.example/h?key=abc {token}")
    except RuntimeError:
        record = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "GET %s", ("/api/v1/me?token=s3cr3t",),
            exc_info=__import__("sys").exc_info(),
        )  # fmt: skip
    record.url = "http://h/x?access_token=zz9"
    line = formatter.format(record)
    for secret in (token, "s3cr3t", "zz9", "pw@", "key=abc"):
        assert secret not in line, (secret, line)
    assert "token=[redacted]" in line and "RuntimeError" in line


def test_store_errors_never_carry_the_statements_parameters(store: Any) -> None:
    """Issue 17 item 12: a failing statement's error text (which is logged)
    listed its parameters: password and token hashes, webhook secrets."""
    import sqlalchemy

    with pytest.raises(sqlalchemy.exc.DBAPIError) as caught, store.engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT x FROM no_such_table WHERE y = :p"), {"p": "hunter2"})
    assert "no_such_table" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/me?pwd=s3cr3t",
        "/api/v1/me?wait=true&bearer=s3cr3t",
        "/api/v1/me?tok%65n=s3cr3t",
        "/api/v1/me?Pass=s3cr3t",
        "/api/v1/me?client_credentials=s3cr3t",
    ],
)
def test_secret_query_names_in_other_spellings_are_redacted(url: str) -> None:
    """Issue 17 item 12 family: `?pwd=`, `?bearer=` and a percent-encoded
    `tok%65n=` (which the server reads as `token`) reached the access log."""
    line = TextFormatter().format(
        logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "GET %s", (url,), None)
    )
    assert "s3cr3t" not in line and "=[redacted]" in line, line


def test_plain_query_parameters_stay_readable() -> None:
    """Redaction keeps the query parameters that are no secrets."""
    assert redact("/api/v1/requests?wait=true&limit=5&keyword=x") == (
        "/api/v1/requests?wait=true&limit=5&keyword=x"
    )


def test_logging_json_tells_how_this_process_logs() -> None:
    """What the stream's partition processes follow (they log as their parent)."""
    import io

    from personatag.logs import configure_logging, logging_json

    root = logging.getLogger()
    before = [h for h in root.handlers if getattr(h, "_personatag", False)]
    try:
        configure_logging(logging.INFO, json=True, stream=io.StringIO())
        assert logging_json()
        configure_logging(logging.INFO, json=False, stream=io.StringIO())
        assert not logging_json()
    finally:
        for h in [h for h in root.handlers if getattr(h, "_personatag", False)]:
            root.removeHandler(h)
        for h in before:
            root.addHandler(h)
