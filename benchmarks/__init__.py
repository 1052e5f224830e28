"""Benchmarks of mailtracker against the floor a bare client reaches on the same servers.

Run ``python -m benchmarks`` (or ``./run bench``); see README.md in this directory.
"""
