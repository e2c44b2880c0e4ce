"""Loopback SMTP sinks for tests (being written)."""
