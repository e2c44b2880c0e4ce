"""Fault scenarios at load-test size: the long forms of tests/faults.

    .venv/bin/python loadtest/faults.py --scenario NAME [--messages N] [--keep DIR]

NAME is one of worker-kill, api-kill, smtp-kill, redis-flushall, redis-restart,
postgres-restart, tempfail, backlog (or "all"). Each run starts real ``sesame``
processes on a fresh database (on SESAME_TEST_DATABASE_URL's server, or on a
throwaway PostgreSQL cluster for postgres-restart), a Redis server of its own and
a counting SMTP sink, injects the fault under load and prints one line:

    [NAME] accepted A / delivered D / lost L / duplicated X  (context ...)

Pass: lost = 0 and duplicated <= in flight at the fault. The exit status is 1
when a scenario does not pass. --keep DIR keeps every process's log there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults import scenarios  # noqa: E402
from tests.faults.harness import Figures, open_stack, report  # noqa: E402

# Larger batches than the tests use: throughput matters at this size.
LOAD_SETTINGS = {"SESAME_DISPATCH_BATCH_SIZE": "100", "SESAME_LEASE_SECONDS": "10"}


def run(name: str, messages: int | None, keep: Path | None) -> Figures:
    options: dict[str, Any] = {"settings": dict(LOAD_SETTINGS)}
    kwargs: dict[str, Any] = {}
    if messages is not None:
        kwargs["messages"] = messages
    if name == "postgres-restart":
        options["own_postgres"] = True
    if name in ("worker-kill", "redis-flushall", "redis-restart", "postgres-restart"):
        options["sink_delay"] = 0.005
    if name == "tempfail":
        options["tempfail"] = (scenarios.SLOW_DOMAIN,)
        options["settings"].update(scenarios.TEMPFAIL_SETTINGS)
    if name in ("worker-kill", "api-kill", "redis-flushall", "redis-restart"):
        # Spread the load over about 20 s whatever its size.
        kwargs["rate"] = max(200.0, (messages or 600) / 20)
    # More faults in a longer run: one per thousand messages, at least the tests'.
    many = max(1, (messages or 0) // 1000)
    if name == "worker-kill":
        kwargs["kills"] = max(2, many)
    if name == "api-kill":
        kwargs["kills"] = max(3, many)
    if name == "smtp-kill":
        kwargs["kills"] = max(2, many)
    if name == "redis-flushall":
        kwargs["flushes"] = max(2, many)
    if keep is not None:
        options["workdir"] = keep / f"{name}-{int(time.time())}"
    with open_stack(**options) as stack:
        return report(scenarios.SCENARIOS[name](stack, **kwargs))


def passed(figures: Figures) -> bool:
    if figures.scenario == "tempfail-window":
        return figures.lost == 0 and figures.extra.get("bounces_per_recipient") == "1-1"
    return (
        figures.lost == 0
        and figures.duplicated <= figures.in_flight
        and bool(figures.extra.get("drained", True))
        and not figures.extra.get("accepted_while_down")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenario", required=True, choices=[*scenarios.SCENARIOS, "all"]
    )
    parser.add_argument("--messages", type=int, help="messages (one recipient each)")
    parser.add_argument("--keep", type=Path, help="keep the processes' logs here")
    args = parser.parse_args()
    names = list(scenarios.SCENARIOS) if args.scenario == "all" else [args.scenario]
    ok = True
    for name in names:
        started = time.monotonic()
        figures = run(name, args.messages, args.keep)
        print(f"    {name}: {time.monotonic() - started:.0f} s", flush=True)
        ok = passed(figures) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
