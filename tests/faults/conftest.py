"""Fixtures of the fault suite: a fresh installation of real processes per test."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import PG_BIN, Stack, open_stack


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """open_stack(**options) for this test; everything is torn down after it.

    When a test fails, the components' output is attached to its report.
    """
    with contextlib.ExitStack() as exits:
        opened: list[Stack] = []

        def make(**options: Any) -> Stack:
            if shutil.which("redis-server") is None:
                pytest.skip("redis-server is not installed (apt-get install redis)")
            if options.get("own_postgres") and not (PG_BIN / "initdb").exists():
                pytest.skip(f"no PostgreSQL server binaries in {PG_BIN}")
            stack = exits.enter_context(
                open_stack(workdir=tmp_path / f"stack{len(opened)}", **options)
            )
            opened.append(stack)
            return stack

        yield make
        for stack in opened:
            print(stack.cluster.logs()[-6000:])
