"""``sesame up``: run every component as a child process and keep them running."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from sesame import db, metrics
from sesame.log import event
from sesame.settings import Settings

log = logging.getLogger(__name__)

# A child that dies is restarted after this delay, doubled up to the cap while
# it keeps dying quickly, so a crash loop does not spin the CPU.
RESTART_DELAY_SECONDS = 1.0
RESTART_DELAY_MAX_SECONDS = 30.0
STOP_GRACE_SECONDS = 10.0


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    delay: float = RESTART_DELAY_SECONDS
    restart_at: float = field(default=0.0)


def components(settings: Settings) -> list[Child]:
    cli = [sys.executable, "-m", "sesame.cli"]
    children = [Child("api", [*cli, "api"]), Child("scheduler", [*cli, "scheduler"])]
    children += [
        Child(f"worker-{i + 1}", [*cli, "worker"]) for i in range(settings.workers)
    ]
    for optional in ("smtp", "mx"):
        if _available(optional):
            children.append(Child(optional, [*cli, optional]))
    return children


def _available(component: str) -> bool:
    try:
        if component == "smtp":
            import mta.submission.server  # noqa: F401
        elif component == "mx":
            import mta.inbound.server  # noqa: F401
    except ImportError:
        return False
    return True


def run(settings: Settings) -> int:
    assert settings.database_url and settings.redis_url
    db.migrate(settings.database_url)
    env = dict(os.environ)
    env["SESAME_DATABASE_URL"] = settings.database_url
    env["SESAME_REDIS_URL"] = settings.redis_url
    # One metrics directory for every child, emptied now: /metrics sums its files.
    env.update(metrics.supervisor_environment(settings.data_dir))
    children = components(settings)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    for child in children:
        _start(child, env)
    names = {c.name for c in children}
    print(
        f"Sesame is up: API http://{settings.api_host}:{settings.api_port}/", flush=True
    )
    if "smtp" in names:
        print(
            f"  SMTP submission {settings.smtp_host}:{settings.smtp_port} (STARTTLS),"
            f" {settings.smtp_host}:{settings.smtps_port} (TLS)",
            flush=True,
        )
    if "mx" in names:
        print(f"  inbound MX {settings.mx_host}:{settings.mx_port}", flush=True)
    print("  Ctrl-C stops everything.", flush=True)

    while not stopping:
        now = time.monotonic()
        for child in children:
            if child.process is not None and child.process.poll() is not None:
                code = child.process.returncode
                lived = now - child.started_at
                child.delay = (
                    RESTART_DELAY_SECONDS
                    if lived > RESTART_DELAY_MAX_SECONDS
                    else min(child.delay * 2, RESTART_DELAY_MAX_SECONDS)
                )
                child.restart_at = now + child.delay
                child.process = None
                event(
                    log,
                    "component exited",
                    logging.WARNING,
                    component=child.name,
                    code=code,
                    restart_in=child.delay,
                )
            if child.process is None and now >= child.restart_at:
                _start(child, env)
        time.sleep(0.2)

    _stop_all(children)
    return 0


def _start(child: Child, env: dict[str, str]) -> None:
    child.process = subprocess.Popen(child.argv, env=env)
    child.started_at = time.monotonic()
    event(log, "component started", component=child.name, pid=child.process.pid)


def _stop_all(children: list[Child]) -> None:
    for child in children:
        if child.process is not None and child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
    event(log, "stopped")
