"""No personal data in clear in a log line: the filter every grid process installs."""

from __future__ import annotations

import io
import logging

from omnigrid.api.runtime import log_mask


def test_phones_emails_and_id_numbers_are_masked_in_every_log_line() -> None:
    out = io.StringIO()
    logger = logging.getLogger("omnigrid.test.mask")
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    logger.propagate = False
    log_mask.install(logger)
    try:
        logger.warning("bind %s for %s", "13812341234", "Ann.Lee@example.com")
        logger.warning("id 11010519491231002X, e164 +8613812341234, +14155550123")
        try:
            raise ValueError("refused 13912345678")
        except ValueError:
            logger.exception("failed for +86 13712345678")
        logger.warning("order o1a2b3c4d5e6f7a8b9c0 of 2 units at 1795910875 s")  # not personal
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    for clear in (
        "13812341234",
        "Ann.Lee",
        "11010519491231002X",
        "13912345678",
        "13712345678",
        "14155550123",
    ):
        assert clear not in text, clear
    assert "138****1234" in text and "A***@example.com" in text and "1101**********002X" in text
    assert "o1a2b3c4d5e6f7a8b9c0 of 2 units at 1795910875 s" in text
