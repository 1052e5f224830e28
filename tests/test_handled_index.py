"""The handled-message index: compact on disk, exact in use, and a schema-1 state file (one
document per message, possibly with journal lines) is read and upgraded without losing one."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailtracker.models import HandledMessage, Recipient
from mailtracker.store import SCHEMA_VERSION, Store
from mailtracker.store.handled import CHUNK, key_for

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _messages(n: int, start: int = 0, outcome: str = "noise") -> list[HandledMessage]:
    return [HandledMessage(f"<m{i}.jens.hansen@kommune.dk>", NOW + timedelta(seconds=i),
                           outcome, i + 1, "INBOX") for i in range(start, start + n)]


def test_thousands_are_a_few_chunks_without_message_ids(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.json")
    with store.transaction() as txn:
        txn.add_handled(_messages(1500))
    with store.transaction() as txn:  # half of these are known already
        txn.add_handled(_messages(1500, start=750, outcome="milestone"))
    view = Store(tmp_path / "state.json").snapshot()
    assert view.handled_count() == 2250
    index = view.handled_ids()
    assert all(f"<m{i}.jens.hansen@kommune.dk>" in index for i in (0, 749, 750, 2249))
    assert "<m2250.jens.hansen@kommune.dk>" not in index
    assert not view.is_handled("<m2250.jens.hansen@kommune.dk>")
    journal = _journal(tmp_path)
    on_disk = (tmp_path / "state.json").read_bytes() + (
        journal.read_bytes() if journal.exists() else b"")
    assert b"jens.hansen" not in on_disk  # only hashes: a Message-ID can carry a name
    data = _replayed(tmp_path)
    assert sorted(data["handled"]) == ["1", "2", "3"]
    assert [d["count"] for d in data["handled"].values()] == [CHUNK, CHUNK, 250]
    assert data["handled"]["3"]["outcomes"] == {"milestone": 250}


def test_a_poll_batch_beside_many_is_a_small_journal_line(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.json")
    with store.transaction() as txn:
        txn.add_handled(_messages(20_000))
    size = (tmp_path / "state.json").stat().st_size
    assert size < 400_000  # 20,000 handled messages; one document each took 3.6 MB
    with store.transaction() as txn:
        txn.add_handled(_messages(10, start=20_000))
    line = _journal(tmp_path).read_bytes().split(b"\n")[-1]
    assert len(line) < 1000  # the new chunk only, not the whole index
    assert Store(tmp_path / "state.json").snapshot().handled_count() == 20_010


def test_a_schema_1_file_with_journal_lines_is_upgraded_on_the_next_write(
        tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    old = {f"<old{i}@eg.dk>": (NOW - timedelta(days=i)).isoformat() for i in range(5)}
    token = "0123456789abcdef"
    path.write_text(json.dumps({
        "meta": {"1": {"schema_version": 1, "journal": token}},
        "recipients": {},
        "handled": {_v1_id(mid): _v1_doc(mid, at) for mid, at in old.items()},
    }), encoding="utf-8")
    # A journal line written by the old version: one more handled message, one recipient.
    later = "<later@eg.dk>"
    ops = [["handled", _v1_id(later), _v1_doc(later, NOW.isoformat())],
           ["recipients", "7", {"email": "a@kommune.dk", "name": "Åse", "role": "finance",
                                "lang": "da", "added_at": NOW.isoformat()}]]
    payload = json.dumps(ops).encode("utf-8")
    digest = hashlib.sha256(payload).hexdigest()[:32].encode("ascii")
    _journal(tmp_path).write_bytes(b"mailtracker-journal " + token.encode() + b"\n" + digest
                                   + b" " + payload)

    view = Store(path).snapshot()
    assert view.handled_count() == 6
    assert all(view.is_handled(mid) for mid in [*old, later])
    assert [r.email for r in view.recipients()] == ["a@kommune.dk"]

    store = Store(path)
    with store.transaction() as txn:
        txn.put_recipient(Recipient("b@kommune.dk", "Bo", "finance", "da", NOW))
    data = json.loads(path.read_text(encoding="utf-8"))  # rewritten, not appended to
    assert data["meta"]["1"]["schema_version"] == SCHEMA_VERSION == 2
    assert b"\n" not in _journal(tmp_path).read_bytes()
    assert sum(d["count"] for d in data["handled"].values()) == 6
    fresh = Store(path).snapshot()
    assert all(fresh.is_handled(mid) for mid in [*old, later])
    assert {r.email for r in fresh.recipients()} == {"a@kommune.dk", "b@kommune.dk"}


def test_the_key_is_the_store_hash_of_the_message_id() -> None:
    assert key_for("<a@eg.dk>") == hashlib.sha256(b"<a@eg.dk>").digest()[:6].hex()
    assert len(key_for("<a@eg.dk>")) == 12


def _v1_id(mid: str) -> str:
    return str(int.from_bytes(hashlib.sha256(mid.encode()).digest()[:6], "big"))


def _v1_doc(mid: str, at: str) -> dict[str, object]:
    return {"message_id": mid, "at": at, "outcome": "milestone", "uid": 1, "folder": "INBOX"}


def _journal(tmp_path: Path) -> Path:
    return tmp_path / "state.json.journal"


def _replayed(tmp_path: Path) -> dict[str, dict[str, dict[str, object]]]:
    """The state as a reader builds it: the snapshot with the journal's lines applied."""
    data: dict[str, dict[str, dict[str, object]]] = json.loads(
        (tmp_path / "state.json").read_text(encoding="utf-8"))
    journal = _journal(tmp_path)
    for line in (journal.read_bytes().split(b"\n")[1:] if journal.exists() else []):
        for table, doc_id, doc in json.loads(line.partition(b" ")[2]):
            data.setdefault(table, {})[doc_id] = doc
    return data
