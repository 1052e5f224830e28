"""Inbound mail: the mailbox adapters (I/O), the poll pipeline and the watcher; ``mail/`` and
``judge/`` below are pure."""
