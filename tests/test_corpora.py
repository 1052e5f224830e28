"""Real-world, partly hostile mail from other projects (``../shared/corpora/``) goes through
parse → classify without an exception, and none of it is an EG event or one of ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailtracker.inbound.judge.classify import classify
from mailtracker.inbound.judge.rules import DEFAULT_RULES
from mailtracker.inbound.judge.trust import TrustSettings
from mailtracker.inbound.mail.parse import parse
from mailtracker.task.verdict import Kind
from tests.inbound_mail import require_corpora
from tests.test_parse import assert_safe_strings

CORPORA = Path(__file__).parents[1].parent / "shared" / "corpora"
TRUST = TrustSettings(authserv_id="mx.kommune.dk")


def _corpus_files() -> list[Path]:
    if not CORPORA.is_dir():
        return []
    return sorted(p for p in CORPORA.rglob("*") if p.is_file())


FILES = _corpus_files()


def test_corpora_are_present() -> None:
    require_corpora()
    assert FILES


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CORPORA)) for p in FILES])
def test_corpus_message_is_no_event(path: Path) -> None:
    msg = parse(path.read_bytes())
    assert_safe_strings(msg)
    result = classify(msg, DEFAULT_RULES, TRUST, {})
    assert result.kind not in {Kind.MILESTONE, Kind.QUARANTINE, Kind.ACKNOWLEDGED, Kind.BOUNCE}, \
        result.summary
    assert "\n" not in result.summary
