"""Fuzzing parse → classify → transition: hostile mail never escapes as an exception, never
puts CR/LF into a stored field, a header or a log line, and costs bounded time and memory.

* hypothesis generates whole MIME messages (nested multiparts, forwards, DSNs, calendars,
  encoded words that decode to CR/LF, lying charsets and encodings) and splices fixtures;
* the giants (2000-deep multiparts, 50 MB parts, 1 MB header lines, …) are measured with
  tracemalloc and a clock;
* every file in tests/fuzz_regressions/ is replayed: a failing hypothesis example is written
  there as ``hypothesis-<test>.eml`` and an atheris crash as ``atheris-<sha1>.eml``;
* atheris (coverage-guided, libFuzzer) runs for a short while when it is installed
  (``pip install atheris``); ``python tests/test_fuzz.py -max_total_time=600`` runs it longer.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script for atheris
    sys.path.insert(0, str(ROOT))


def _instrumented() -> contextlib.AbstractContextManager[object]:
    """Run as the atheris script: mailtracker and the email package, imported inside this,
    report coverage to the fuzzer (imported before pytest and hypothesis, which load
    ``email`` too, uninstrumented)."""
    if __name__ == "__main__" and sys.argv[1:2] != ["--giant"]:
        import atheris

        return atheris.instrument_imports(include=["mailtracker", "email"])
    return contextlib.nullcontext()


with _instrumented():
    from mailtracker.inbound.judge.classify import classify
    from mailtracker.inbound.judge.trust import TrustSettings
    from mailtracker.inbound.mail.parse import parse
    from mailtracker.settings.taskdef import TaskDefinition, find_definition, load_task
    from mailtracker.task.transition import TaskState, transition

import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

MAIL = ROOT / "tests" / "mail"
REGRESSIONS = ROOT / "tests" / "fuzz_regressions"
TRUST = TrustSettings(authserv_id="mx.kommune.dk")
OUR_ID = "<20260302093000.41872.efaktura-8b.3f9a@kommune.dk>"
SENT = {OUR_ID: "systemejer@kommune.dk"}
FIXTURES = [p.read_bytes() for p in sorted(MAIL.glob("*.eml"))]
#: Examples per hypothesis test; raise it for a longer campaign.
EXAMPLES = int(os.environ.get("MAILTRACKER_FUZZ_EXAMPLES", "300"))
_UNSAFE = ("\r", "\n", "\x00", "\u2028", "\u2029")
_TASK: list[TaskDefinition] = []


def task() -> TaskDefinition:
    if not _TASK:
        _TASK.append(load_task(find_definition("efaktura-8b", ROOT / "config")))
    return _TASK[0]


def strings_in(obj: Any) -> Iterator[str]:
    """Every str inside dataclasses, tuples, lists and dicts."""
    if isinstance(obj, str):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from strings_in(getattr(obj, f.name))
    elif isinstance(obj, tuple | list):
        for item in obj:
            yield from strings_in(item)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from strings_in(key)
            yield from strings_in(value)


def check(raw: bytes) -> None:
    """The whole inbound path on ``raw``; raises AssertionError on an unsafe string.

    What the poller stores (facts, classification, effect) and logs (the summaries) must be
    single-line text: a CR/LF there forges log lines and, via follow-up mail quoting an EG
    subject, headers."""
    msg = parse(raw)
    cls = classify(msg, task().rules, TRUST, SENT)
    state = TaskState(milestones={}, notifications={})
    effect = transition(task(), cls, state, received_at=datetime(2026, 3, 2, tzinfo=UTC),
                        referenced=(*filter(None, [msg.in_reply_to]), *msg.references))
    for text in (*strings_in(msg), *strings_in(cls), *strings_in(effect)):
        assert not any(c in text for c in _UNSAFE), repr(text[:300])


def keep_failure(name: str, raw: bytes) -> None:
    """Hypothesis replays the shrunk example last, so the file ends up holding it."""
    REGRESSIONS.mkdir(exist_ok=True)
    (REGRESSIONS / f"hypothesis-{name}.eml").write_bytes(raw)


def checked(name: str) -> Callable[[bytes], None]:
    def run(raw: bytes) -> None:
        try:
            check(raw)
        except BaseException:
            keep_failure(name, raw)
            raise
    return run


# --- generated MIME ------------------------------------------------------------------------

_CHARSETS = ["utf-8", "iso-8859-1", "windows-1252", "x-unknown", "zlib", "base64", "utf-16",
             "utf-7", "", "\"utf-8\"", "us-ascii"]
_NASTY = ["\r\n", "\n", "\r", "\x00", "\u2028", "\u202e", "=?", "?=", '"', "<", ">", "@", ",",
          ";", "(", ")", "\\", "\t", " ", "\xff", "æøå", "eg.dk", "kundeservice@eg.dk"]
_HEADERS = ["From", "To", "Cc", "Subject", "Message-ID", "In-Reply-To", "References", "Date",
            "Authentication-Results", "DKIM-Signature", "Auto-Submitted", "Precedence",
            "X-Autoreply", "Reply-To", "Sender", "Content-Disposition"]
_WORDS = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)


@st.composite
def encoded_words(draw: st.DrawFn) -> str:
    charset = draw(st.sampled_from(_CHARSETS))
    payload = draw(st.one_of(st.binary(max_size=40),
                             _WORDS.map(lambda t: t.encode("utf-8")),
                             st.just(b"EG\r\nBcc: victim@example.org")))
    if draw(st.booleans()):
        return f"=?{charset}?b?{base64.b64encode(payload).decode()}?="
    quoted = "".join(chr(b) if 0x21 <= b < 0x7f and b not in b"=?_" else f"={b:02X}"
                     for b in payload)
    return f"=?{charset}?q?{quoted}?="


header_values = st.lists(st.one_of(_WORDS, st.sampled_from(_NASTY), encoded_words()),
                         max_size=8).map("".join)


def _header_block(pairs: list[tuple[str, str]]) -> bytes:
    lines = [f"{k}: {v}".encode("utf-8", "surrogateescape") for k, v in pairs]
    return b"\r\n".join(lines) + b"\r\n"


@st.composite
def leaves(draw: st.DrawFn) -> bytes:
    ctype = draw(st.sampled_from([
        "text/plain", "text/html", "text/calendar; method=REQUEST", "text/calendar",
        "application/pdf", "application/ics", "message/delivery-status",
        "text/rfc822-headers", "application/octet-stream", "text/x-unknown", ""]))
    charset = draw(st.sampled_from(_CHARSETS))
    cte = draw(st.sampled_from(["", "7bit", "8bit", "base64", "quoted-printable", "x-junk"]))
    body = draw(st.one_of(
        st.binary(max_size=300),
        _WORDS.map(lambda t: t.encode("utf-8")),
        st.lists(st.sampled_from([
            "BEGIN:VCALENDAR", "METHOD:REQUEST", "METHOD:CANCEL", "BEGIN:VEVENT",
            "DTSTART;TZID=Romance Standard Time:20260415T100000", "DTSTART:99999999T999999",
            "SUMMARY:Webinar =?utf-8?q?=0D=0A?=", "UID:x", "END:VEVENT", "END:VCALENDAR",
            "Final-Recipient: rfc822; soeren@kommune.example", "Action: failed",
            "Status: 5.1.1", "Message-ID: " + OUR_ID, "<a href=\"https://teams.microsoft.com/"
            "l/meetup-join/x\">join</a>", "<script>x</script>", "=0D=0A", "--b1", ""]),
            max_size=20).map(lambda ls: "\r\n".join(ls).encode())))
    name = draw(st.one_of(st.none(), header_values))
    head = [("Content-Type", f"{ctype}; charset={charset}" if charset else ctype)]
    if cte:
        head.append(("Content-Transfer-Encoding", cte))
    if name is not None:
        head.append(("Content-Disposition", f'attachment; filename="{name}"'))
    if cte == "base64" and draw(st.booleans()):
        body = base64.encodebytes(body)
    return _header_block(head) + b"\r\n" + body


def _containers(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def multipart(draw: st.DrawFn) -> bytes:
        subtype = draw(st.sampled_from(["mixed", "alternative", "related",
                                        "report; report-type=delivery-status", "x-weird"]))
        boundary = draw(st.sampled_from(["b1", "b2", "", "=_x", "a" * 80, "b1--"]))
        parts = draw(st.lists(children, max_size=4))
        closing = draw(st.booleans())
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
        return (f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'
                .encode() + body + (b"--" + boundary.encode() + b"--\r\n" if closing else b""))

    @st.composite
    def forward(draw: st.DrawFn) -> bytes:
        inner = draw(messages_from(children))
        return b"Content-Type: message/rfc822\r\n\r\n" + inner

    return st.one_of(multipart(), forward())


def messages_from(bodies: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def message(draw: st.DrawFn) -> bytes:
        pairs = draw(st.lists(st.tuples(st.sampled_from(_HEADERS), header_values), max_size=8))
        return _header_block(pairs) + draw(bodies)
    return message()


mime_messages = messages_from(st.recursive(leaves(), _containers, max_leaves=10))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(mime_messages)
def test_generated_mime_never_escapes_or_leaks_line_breaks(raw: bytes) -> None:
    checked("generated-mime")(raw)


@settings(max_examples=EXAMPLES * 2 // 3, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(st.sampled_from(FIXTURES), st.lists(st.tuples(st.sampled_from(_HEADERS), header_values),
                                           min_size=1, max_size=6), st.booleans())
def test_fixtures_with_hostile_headers_spliced_in(fixture: bytes,
                                                  extra: list[tuple[str, str]],
                                                  on_top: bool) -> None:
    head, sep, body = fixture.partition(b"\r\n\r\n") if b"\r\n\r\n" in fixture else \
        fixture.partition(b"\n\n")
    block = _header_block(extra).rstrip(b"\r\n")
    spliced = block + b"\r\n" + head if on_top else head + b"\r\n" + block
    checked("spliced-headers")(spliced + sep + body)


@settings(max_examples=EXAMPLES * 2 // 3, deadline=None)
@given(st.binary(max_size=4000))
def test_random_bytes_never_escape(raw: bytes) -> None:
    checked("random-bytes")(raw)


# --- giants: time and memory per message ---------------------------------------------------

MB = 1024 * 1024


def _nested(depth: int, kind: bytes) -> bytes:
    if kind == b"rfc822":
        return (b"From: a@example.org\r\nSubject: deep\r\n"
                + b"Content-Type: message/rfc822\r\n\r\nFrom: b@example.org\r\n" * depth
                + b"\r\nx\r\n")
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                       for i in range(depth))
    closing = b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    return (b"From: a@example.org\r\nSubject: deep\r\nMIME-Version: 1.0\r\n" + opening
            + b"Content-Type: text/plain\r\n\r\nhello\r\n" + closing)


def _big_part(ctype: bytes, cte: bytes, line: bytes, size: int) -> bytes:
    return (b"From: kundeservice@eg.dk\r\nSubject: Serviceaftale\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"
            b"Content-Type: " + ctype + b"\r\nContent-Transfer-Encoding: " + cte + b"\r\n\r\n"
            + line * (size // len(line)) + b"\r\n--x--\r\n")


GIANTS: dict[str, Callable[[], bytes]] = {
    "2000-deep multiparts": lambda: _nested(2000, b"multipart"),
    "2000-deep forwards": lambda: _nested(2000, b"rfc822"),
    "50 MB base64 PDF": lambda: _big_part(b"application/pdf", b"base64",
                                          b"JVBERi0xLjQK" * 6 + b"\r\n", 50 * MB),
    "50 MB text part": lambda: _big_part(b"text/plain; charset=utf-8", b"8bit",
                                         "Vejledning æøå ".encode() * 5 + b"\r\n", 50 * MB),
    "50 MB quoted-printable calendar": lambda: _big_part(
        b"text/calendar; method=REQUEST", b"quoted-printable", b"DESCRIPTION:=C3=A6=\r\n",
        50 * MB),
    "1 MB Subject line": lambda: b"From: a@eg.dk\r\nSubject: " + b"x" * MB + b"\r\n\r\nhi\r\n",
    "1 MB of encoded words": lambda: (b"From: a@eg.dk\r\nSubject: "
                                      + b"=?utf-8?q?=0D=0A?= " * (MB // 18) + b"\r\n\r\nhi\r\n"),
    "1 MB From line": lambda: b"From: " + b"<a@eg.dk>, " * (MB // 11) + b"\r\n\r\nhi\r\n",
    "1 MB Content-Type params": lambda: (b"From: a@eg.dk\r\nContent-Type: text/plain"
                                         + b"; a=b" * (MB // 5) + b"\r\n\r\nhi\r\n"),
    "1 MB Authentication-Results": lambda: (
        b"From: a@eg.dk\r\nAuthentication-Results: mx.kommune.dk; "
        + b"dkim=pass header.d=eg.dk; " * (MB // 26) + b"\r\n\r\nhi\r\n"),
    "100,000 header fields": lambda: b"X-A: b\r\n" * 100_000 + b"\r\nhi\r\n",
    "3,000,000 empty parts": lambda: (b"From: a@eg.dk\r\nContent-Type: multipart/mixed; "
                                      b"boundary=x\r\n\r\n" + b"--x\r\n\r\n" * 3_000_000),
    "nested HTML": lambda: (b"From: a@eg.dk\r\nContent-Type: text/html\r\n\r\n"
                            + b"<div>" * 200_000 + b"x"),
}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def _measure_giant(name: str) -> None:
    """Child process: build the giant, reset the RSS high-water mark, run ``check``, print
    the seconds and the extra resident memory (KiB) as JSON."""
    raw = GIANTS[name]()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _rss_kib("VmRSS")
    started = time.monotonic()
    check(raw)
    elapsed = time.monotonic() - started
    print(json.dumps({"seconds": elapsed, "extra_kib": _rss_kib("VmHWM") - before,
                      "read": min(len(raw), 25 * MB)}))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("name", list(GIANTS))
def test_giant_message_costs_bounded_time_and_memory(name: str) -> None:
    proc = subprocess.run([sys.executable, str(Path(__file__)), "--giant", name],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    # Unbounded, these took minutes to hours and gigabytes (DESIGN.md, "Pitfalls measured").
    # Measured here: at most 1.5 s, and 10-12 times the bytes read in extra memory (the stdlib
    # parser keeps lines, payload and decoded copies); only max_message_bytes (25 MB) are
    # read, so one message costs at most ~300 MB.
    assert result["seconds"] < 20, f"{name}: {result['seconds']:.1f} s"
    extra, read = result["extra_kib"] * 1024, result["read"]
    assert extra < 16 * read + 64 * MB, f"{name}: {extra / MB:.0f} MB for {read / MB:.0f} MB"


# --- regressions and atheris ---------------------------------------------------------------

_REGRESSION_FILES = sorted(p for p in REGRESSIONS.glob("*") if p.is_file()
                           and p.suffix != ".md")


@pytest.mark.parametrize("path", _REGRESSION_FILES, ids=[p.name for p in _REGRESSION_FILES])
def test_kept_fuzz_inputs_stay_fixed(path: Path) -> None:
    check(path.read_bytes())


def test_atheris_short_campaign(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    seconds = os.environ.get("MAILTRACKER_ATHERIS_SECONDS", "20")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__)), f"-max_total_time={seconds}", "-timeout=20",
         "-rss_limit_mb=2048", "-max_len=200000", f"-artifact_prefix={artifacts}/",
         str(corpus), str(MAIL), str(REGRESSIONS)],
        capture_output=True, text=True, cwd=ROOT, timeout=int(seconds) + 300, check=False)
    crashes = sorted(artifacts.iterdir())
    for crash in crashes:
        data = crash.read_bytes()
        keep = REGRESSIONS / f"atheris-{hashlib.sha1(data).hexdigest()[:12]}.eml"
        keep.write_bytes(data)
    assert proc.returncode == 0 and not crashes, (
        f"atheris found {len(crashes)} crashing input(s), kept in {REGRESSIONS}:\n"
        + proc.stderr[-4000:])


def _atheris_main() -> None:
    import atheris

    def one_input(data: bytes) -> None:
        check(data)  # any exception, or a line break in a stored field, is a crash

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--giant"]:
        _measure_giant(sys.argv[2])
    else:
        _atheris_main()
