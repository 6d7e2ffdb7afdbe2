"""Fixtures of the report tests; the helpers behind them live in report_store.py."""

from report_store import paper_dir, toy_store  # noqa: F401  (pytest fixtures)
