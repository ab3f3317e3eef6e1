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


def test_a_problem_document_never_shows_personal_data_from_the_path() -> None:
    """An identifier's value in a path (valid or not) never comes back in ``instance``
    or ``detail``; nor does a phone, email or ID number in an unknown endpoint's path."""
    from tests.inprocess import in_process_client

    headers = {"X-Channel": "app", "If-Match": "99"}  # stale: 412 where the value is valid
    with in_process_client() as c:
        for kind, value in (
            ("phone", "1391234567"),  # malformed: 422
            ("phone", "13912345678"),
            ("email", "john.smith@corp"),
            ("id_number", "110101199003071234"),
        ):
            r = c.delete(f"/v1/users/u-pii/identities/{kind}/{value}", headers=headers)
            assert r.status_code >= 400, r.text
            assert value not in r.text and "john.smith" not in r.text, r.text
            assert r.json()["instance"] == f"/v1/users/u-pii/identities/{kind}/***"
            bare = c.delete(f"/v1/users/u-pii/identities/{kind}/{value}")  # no channel: 400
            assert bare.status_code == 400 and value not in bare.text, bare.text
        lost = c.get("/v1/lookup/13912345678/ann.lee@example.com")
        assert lost.status_code == 404
        assert "13912345678" not in lost.text and "ann.lee" not in lost.text, lost.text
