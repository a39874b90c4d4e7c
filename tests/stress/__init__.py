"""Stress suite for issue 11 ("Never lose, never send twice, never stall").

``python -m tests.stress --fast`` (CI, about 3 minutes) or ``make stress`` (the full run).
See docs/reliability.md.
"""
