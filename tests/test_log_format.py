"""The log lines' format: the access log keeps its exact shape while records are made cheaper."""

from __future__ import annotations

import logging
import re
import time

import pytest

from server import LOG_FORMAT, SecondCachingFormatter
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


def test_an_explicit_date_format_is_left_to_logging() -> None:
    cached, plain = SecondCachingFormatter(LOG_FORMAT, "%H:%M"), logging.Formatter(LOG_FORMAT, "%H:%M")
    now = time.time()
    assert cached.format(record_at(now)) == plain.format(record_at(now))


def test_access_log_lines_keep_their_shape(ocr_server: RunningServer) -> None:
    image = text_image(random_word())
    first = ocr_server.ocr_upload(image).json()
    ocr_server.ocr_upload(image)
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
        + rf" INFO ocr_server\.access: POST /ocr_service 200 [0-9.]+ms image_hash={first['image_hash'][:12]} cached=True",
        mine[1],
    )
