"""The fast reader of header FETCH answers: the usual shape is read, anything else is left to
imapclient's parser (None). Against a real Dovecot: tests/test_imap.py."""

from __future__ import annotations

from imapclient.response_parser import parse_fetch_response

from mailtracker.inbound.fetchparse import header_blocks

BLOCK = b"From: EG <noreply@eg.dk>\r\nSubject: Serviceaftale\r\n\r\n"


def test_uid_before_the_literal() -> None:
    data = [(b"1 (UID 7 BODY[HEADER] {%d}" % len(BLOCK), BLOCK), b")",
            (b"2 (UID 9 BODY[HEADER] {2}", b"\r\n"), b")"]
    assert header_blocks(data) == {7: BLOCK, 9: b"\r\n"}


def test_uid_after_the_literal() -> None:
    data = [(b"1 (BODY[HEADER] {%d}" % len(BLOCK), BLOCK), b" UID 7)"]
    assert header_blocks(data) == {7: BLOCK}


def test_an_empty_answer_is_no_blocks() -> None:
    assert header_blocks([]) == {}


def test_any_other_shape_is_left_to_imapclient() -> None:
    good = [(b"1 (UID 7 BODY[HEADER] {%d}" % len(BLOCK), BLOCK), b")"]
    odd = [
        [*good, b"3 (FLAGS (\\Seen))"],  # an unsolicited flag update
        [(b"1 (UID 7 FLAGS () BODY[HEADER] {%d}" % len(BLOCK), BLOCK), b")"],  # more items
        [(b"1 (UID 7 BODY[HEADER] {%d}" % (len(BLOCK) + 1), BLOCK), b")"],  # wrong length
        [b"1 (UID 7 BODY[HEADER] NIL)"],  # no literal
        [(b"1 (UID 7 BODY[HEADER] {%d}" % len(BLOCK), BLOCK)],  # cut short
        [*good, *good],  # the same UID twice
        [(b"1 (UID 7 BODY[HEADER] {%d}" % len(BLOCK), BLOCK), b" FLAGS ())"],
    ]
    for data in odd:
        assert header_blocks(data) is None, data


def test_a_flag_update_among_the_answers_is_read_by_imapclient_instead() -> None:
    data = [(b"1 (UID 7 BODY[HEADER] {%d}" % len(BLOCK), BLOCK), b")", b"3 (UID 9 FLAGS (\\Seen))"]
    assert header_blocks(data) is None
    parsed = parse_fetch_response(data, False, True)
    assert parsed[7][b"BODY[HEADER]"] == BLOCK and b"BODY[HEADER]" not in parsed[9]
