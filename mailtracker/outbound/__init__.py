"""Outbound mail: rendering (pure), building, the outbox and SMTP submission."""
