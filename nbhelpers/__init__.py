"""nbhelpers — the code behind attention-book's chapters (one concept per module)."""
__version__ = "0.1.0"
