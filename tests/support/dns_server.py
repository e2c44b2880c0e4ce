"""Loopback DNS server for tests (being written)."""
