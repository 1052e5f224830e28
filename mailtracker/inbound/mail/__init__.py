"""One raw message to plain facts (``parse``), pure and bounded."""
