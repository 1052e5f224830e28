"""Follow-ups: event mail when EG's mail arrives, reminders when nobody answers, escalation
when a milestone is late. ``calendar`` (working days, Danish holidays) and ``schedule`` (what
is due) are pure; ``runner`` sends what is due through the outbox (``notify.deliver``)."""
