"""mailtracker: carries a municipality through the KLIK task eFaktura 8b."""

__version__ = "0.1.0"
