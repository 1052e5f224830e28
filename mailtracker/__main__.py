"""``python -m mailtracker``: the command line."""

from mailtracker.cli import main

main()
