"""The log lines' format: the access log keeps its exact shape while records are made cheaper."""

from __future__ import annotations

import logging
import re
import time

import pytest

from server import LOG_FORMAT, LineHandler, SecondCachingFormatter
from tests.conftest import RunningServer, random_word, text_image


def record_at(created: float, message: str = "POST /ocr_service 200 %.1fms %s") -> logging.LogRecord:
    record = logging.LogRecord("ocr_server.access", logging.INFO, __file__, 1, message, (1.25, "cached=True"), None)
    record.created = created
    record.msecs = float(int((created - int(created)) * 1000))
    return record


@pytest.mark.parametrize(
    "moments",
    [
        [1_700_000_000.0, 1_700_000_000.5, 1_700_000_000.999],  # one second, three lines
        [1_700_000_000.999, 1_700_000_001.0004, 1_700_000_061.25],  # across seconds and minutes
        [1_711_846_799.9, 1_711_846_800.1, 1_711_846_799.95],  # a DST change in some zones; a clock step back
    ],
)
def test_second_caching_formatter_writes_what_logging_formatter_writes(moments: list[float]) -> None:
    cached, plain = SecondCachingFormatter(LOG_FORMAT), logging.Formatter(LOG_FORMAT)
    for created in moments:
        assert cached.format(record_at(created)) == plain.format(record_at(created))


def _failing() -> logging.LogRecord:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        return logging.LogRecord("ocr_server", logging.ERROR, __file__, 2, "failed: %s", ("x",), sys.exc_info())


@pytest.mark.parametrize(
    "make",
    [
        lambda: record_at(1_700_000_000.25),
        lambda: logging.LogRecord("ocr_server", logging.WARNING, __file__, 3, "no args, 100%", None, None),
        lambda: logging.LogRecord("ocr_server", logging.INFO, __file__, 4, "%(a)s-%(b)s", ({"a": 1, "b": 2},), None),
        lambda: logging.LogRecord("ocr_server", logging.INFO, __file__, 5, "with stack", (), None, sinfo="Stack:\n  x"),
        _failing,
    ],
)
def test_records_filled_in_directly_read_as_logging_formats_them(make) -> None:  # type: ignore[no-untyped-def]
    # The direct path (no exception, no stack) and the fallback give logging.Formatter's text.
    import copy

    cached, plain = SecondCachingFormatter(LOG_FORMAT), logging.Formatter(LOG_FORMAT)
    record = make()
    expected = plain.format(copy.copy(record))
    assert cached.format(record) == expected
    assert cached.format(record) == expected  # again, with the exception's text now kept on the record


@pytest.mark.parametrize(
    ("fmt", "style", "defaults"),
    [
        ("{asctime} {message}", "{", None),
        ("%(asctime)s %(tag)s %(message)s", "%", {"tag": "t"}),
        ("%(message)s", "%", None),
    ],
)
def test_other_styles_and_defaults_are_left_to_logging(fmt: str, style: str, defaults: dict | None) -> None:
    cached = SecondCachingFormatter(fmt, style=style, defaults=defaults)  # type: ignore[arg-type]
    plain = logging.Formatter(fmt, style=style, defaults=defaults)  # type: ignore[arg-type]
    assert cached.format(record_at(1_700_000_000.5)) == plain.format(record_at(1_700_000_000.5))


def test_line_handler_writes_what_stream_handler_writes() -> None:
    import copy
    import io

    ours, stock = io.StringIO(), io.StringIO()
    records = (record_at(1_700_000_000.0), record_at(1_700_000_001.5), _failing())
    for handler in (LineHandler(ours), logging.StreamHandler(stock)):
        handler.setFormatter(SecondCachingFormatter(LOG_FORMAT))
        for record in records:
            handler.handle(copy.copy(record))
    assert ours.getvalue() == stock.getvalue() and ours.getvalue().count("\n") > 3


def test_line_handler_reports_a_failing_stream_and_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    class Broken:
        def write(self, text: str) -> None:
            raise OSError("disk full")

        def flush(self) -> None:
            pass

    handler = LineHandler(Broken())  # type: ignore[arg-type]
    handler.setFormatter(SecondCachingFormatter(LOG_FORMAT))
    previous, logging.raiseExceptions = logging.raiseExceptions, True
    try:
        handler.handle(record_at(1_700_000_000.0))  # handled, as StreamHandler does: reported, not raised
    finally:
        logging.raiseExceptions = previous
    assert "disk full" in capsys.readouterr().err


def test_an_explicit_date_format_is_left_to_logging() -> None:
    cached, plain = SecondCachingFormatter(LOG_FORMAT, "%H:%M"), logging.Formatter(LOG_FORMAT, "%H:%M")
    now = time.time()
    assert cached.format(record_at(now)) == plain.format(record_at(now))


def test_access_log_lines_keep_their_shape(ocr_server: RunningServer) -> None:
    image = text_image(random_word())
    first = ocr_server.ocr_upload(image).json()
    hit = ocr_server.ocr_upload(image).json()
    time.sleep(0.2)
    mine = [line for line in ocr_server.log_text().splitlines() if first["image_hash"][:12] in line]
    assert len(mine) == 2
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(
        stamp + r" INFO ocr_server\.access: POST /ocr_service 200 [0-9.]+ms "
        rf"image_hash={first['image_hash'][:12]} task_id={first['task_id']} cached=False",
        mine[0],
    )
    assert re.fullmatch(
        stamp
        + rf" INFO ocr_server\.access: POST /ocr_service 200 [0-9.]+ms image_hash={first['image_hash'][:12]}"
        rf" task_id={hit['task_id']} cached=True",
        mine[1],
    )
