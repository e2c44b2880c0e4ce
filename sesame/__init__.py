"""Sesame's shared core: settings, database access, ids, secrets and logging."""
