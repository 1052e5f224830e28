"""The task itself, pure: stored facts and ``now`` in, task state and its report out.

Nothing here imports the store, a network library or ``App``.
"""
