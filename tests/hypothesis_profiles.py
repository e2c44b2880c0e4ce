"""Hypothesis profiles: ``default`` for ``make test``, ``long`` for ``make fuzz``.

Choose one with HYPOTHESIS_PROFILE (``make fuzz`` sets ``long``). tests/conftest.py
calls :func:`load` once; calling it again is harmless.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Fuzz targets talk to real servers over sockets, so an example takes
# milliseconds, not microseconds, and its time varies with the machine's load.
_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]

settings.register_profile(
    "default",
    max_examples=60,
    deadline=None,
    suppress_health_check=_SLOW_IS_FINE,
    derandomize=False,
    print_blob=True,
)
settings.register_profile(
    "long",
    max_examples=5000,
    deadline=None,
    suppress_health_check=_SLOW_IS_FINE,
    print_blob=True,
)


def load() -> str:
    """Load the profile named by HYPOTHESIS_PROFILE (``default`` if unset)."""
    name = os.environ.get("HYPOTHESIS_PROFILE", "default")
    settings.load_profile(name)
    return name
