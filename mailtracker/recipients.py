"""Recipients: add, list, remove and forget, with validation before anything is stored."""

from __future__ import annotations

from datetime import datetime

from mailtracker.addresses import check_display_name, check_email
from mailtracker.errors import InvalidInputError, NotFoundError
from mailtracker.models import Recipient
from mailtracker.settings.taskdef import TaskDefinition
from mailtracker.store import Store

LANGUAGES = ("da", "en")


def validate_recipient(task: TaskDefinition, *, role: str, name: str, email: str,
                       lang: str, now: datetime, greeting: str | None = None) -> Recipient:
    """A valid ``Recipient`` or ``InvalidInputError`` saying what is wrong (pure)."""
    if task.role(role) is None:
        known = ", ".join(r.key for r in task.roles)
        raise InvalidInputError(f"unknown role {role!r} (roles of {task.key}: {known})")
    try:
        clean_name = check_display_name(name)
    except ValueError as exc:
        raise InvalidInputError(f"invalid name: {exc}") from None
    try:
        clean_email = check_email(email)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    if lang not in LANGUAGES:
        raise InvalidInputError(f"unknown language {lang!r} (use da or en)")
    clean_greeting = None
    if greeting is not None:
        try:
            clean_greeting = check_display_name(greeting)
        except ValueError as exc:
            raise InvalidInputError(f"invalid greeting: {exc}") from None
    return Recipient(email=clean_email, name=clean_name, role=role, lang=lang, added_at=now,
                     greeting=clean_greeting)


def add_recipient(store: Store, recipient: Recipient, *, replace: bool = False) -> bool:
    """Store ``recipient``. Returns True if it was new. An existing address is an error
    unless ``replace`` (then name, role and language are updated)."""
    with store.transaction() as txn:
        existing = txn.recipient(recipient.email)
        if existing is not None and not replace:
            raise InvalidInputError(
                f"{recipient.email} is already a recipient (role {existing.role}); "
                "use --replace to update it")
        if existing is not None and existing.added_at is not None:
            recipient = Recipient(recipient.email, recipient.name, recipient.role,
                                  recipient.lang, existing.added_at)
        txn.put_recipient(recipient)
    return existing is None


def list_recipients(store: Store) -> list[Recipient]:
    return store.snapshot().recipients()


def remove_recipient(store: Store, email: str) -> Recipient:
    """Remove a recipient (their sent-mail history stays, for the evidence)."""
    with store.transaction() as txn:
        existing = txn.recipient(email)
        if existing is None:
            raise NotFoundError(f"no recipient with address {email!r}")
        txn.remove_recipient(email)
    return existing


def forget_person(store: Store, email: str) -> int:
    """GDPR: remove a person and every record that names them. Returns records removed."""
    with store.transaction() as txn:
        count = txn.forget_person(email)
    if count == 0:
        raise NotFoundError(f"nothing stored about {email!r}")
    return count
