"""What arrives in the campaign's inbox, and the ledger of what arrived.

The EG mails are the hand-written fixtures (tests/mail/*.eml): genuine ones (authenticated by
the municipality's own ``Authentication-Results``), redeliveries of the same message (same
Message-ID, new UID), re-sends by EG (same mail, new Message-ID), spoofs and forwarded
copies that must never change the task, negatives, generated noise and files from the
shared real-world corpora.
"""

from __future__ import annotations

import random
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.inbound_mail import eml, noise

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpora"

#: Fixture → the milestone it sets when authenticated.
GENUINE = {
    "agreement-eg-pdf.eml": "service_agreement_received",
    "penneo-request.eml": "service_agreement_received",
    "penneo-signed.eml": "service_agreement_signed",
    "addo-signed.eml": "service_agreement_signed",
    "guide-eg.eml": "guide_received",
    "webinar-invite.eml": "webinar_invited",
    "webinar-cancel.eml": "webinar_cancelled",
}
#: EG may send these again as new mails. Not the webinar ones: a new cancellation after a
#: re-invitation is a new event by design, which would blur "counted exactly once".
RESENDABLE = ("agreement-eg-pdf.eml", "guide-eg.eml", "penneo-signed.eml")
SPOOFS = ("spoof-no-authres.eml", "spoof-dkim-fail.eml", "spoof-forged-authres.eml",
          "spoof-two-from.eml", "spoof-paren-from.eml", "forwarded-vs.eml")
NEGATIVES = ("nets-efaktura.eml", "kombit-serviceplatformen.eml", "kp-dk.eml")

_MSGID_RE = re.compile(rb"(?im)^message-id:[^\r\n]*\r?\n")
_ID_OF_RE = re.compile(rb"(?im)^message-id:\s*(<[^>\r\n]+>)")


def message_id_of(raw: bytes) -> str | None:
    match = _ID_OF_RE.search(raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0])
    return match.group(1).decode("ascii", "replace") if match else None


def with_message_id(raw: bytes, message_id: str) -> bytes:
    """``raw`` with its Message-ID header replaced."""
    return _MSGID_RE.sub(f"Message-ID: {message_id}\r\n".encode("ascii"), raw, count=1)


def corpus_files() -> list[Path]:
    if not CORPORA.is_dir():
        return []
    # Dovecot refuses to store an empty message, so the corpus's empty file cannot arrive.
    return sorted(p for p in CORPORA.rglob("*") if p.is_file() and p.name != "LICENSE"
                  and not p.name.endswith(".md") and p.stat().st_size > 0)


@dataclass
class Ledger:
    """Everything the world put in the inbox or saw delivered, for the invariant checks."""

    genuine: dict[str, str] = field(default_factory=dict)  # Message-ID → milestone
    spoofs: set[str] = field(default_factory=set)
    inbound: int = 0  # messages appended to the mailbox, every kind
    uids: dict[str, list[int]] = field(default_factory=dict)  # Message-ID → UIDs it got
    # recipient → (response kind, the Message-ID of our mail it answers), per received copy
    responses: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def responded(self, recipient: str, kind: str, to_message_id: str) -> None:
        with self.lock:
            self.responses.setdefault(recipient, []).append((kind, to_message_id))


class MailSource:
    """Draws inbound mail for one run from its seeded ``rng``."""

    def __init__(self, rng: random.Random, seed: int, ledger: Ledger):
        self.rng = rng
        self.seed = seed
        self.ledger = ledger
        self._corpus = corpus_files()
        self._counter = 0
        self._delivered_eg: list[bytes] = []

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def draw(self, count: int) -> list[bytes]:
        """``count`` messages of mixed kinds, recorded in the ledger."""
        return [self._one() for _ in range(count)]

    def _one(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.22:
            return self._genuine()
        if roll < 0.30 and self._delivered_eg:
            return self._record(self.rng.choice(self._delivered_eg))  # redelivery
        if roll < 0.36:
            return self._resend()
        if roll < 0.48:
            return self._record(eml(self.rng.choice(SPOOFS)), spoof=True)
        if roll < 0.54:
            return self._record(eml(self.rng.choice(NEGATIVES)))
        if roll < 0.80 and self._corpus:
            return self._record(self.rng.choice(self._corpus).read_bytes())
        return self._record(noise(self.seed * 10_000 + self._next(),
                                  size=self.rng.choice((300, 2000, 20_000))))

    def _genuine(self) -> bytes:
        name = self.rng.choice(sorted(GENUINE))
        raw = eml(name)
        self._delivered_eg.append(raw)
        return self._record(raw, milestone=GENUINE[name])

    def _resend(self) -> bytes:
        name = self.rng.choice(RESENDABLE)
        raw = with_message_id(eml(name), f"<resend-{self.seed}-{self._next()}@mail.eg.dk>")
        self._delivered_eg.append(raw)
        return self._record(raw, milestone=GENUINE[name])

    def _record(self, raw: bytes, *, milestone: str | None = None, spoof: bool = False
                ) -> bytes:
        mid = message_id_of(raw)
        with self.ledger.lock:
            self.ledger.inbound += 1
            if mid is not None and milestone is not None:
                self.ledger.genuine[mid] = milestone
            if mid is not None and spoof:
                self.ledger.spoofs.add(mid)
        return raw
