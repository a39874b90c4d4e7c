"""Durable outbox of results to deliver (issue 4)."""
