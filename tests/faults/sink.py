"""A loopback SMTP sink in its own process that logs every delivery per recipient.

    python -m tests.faults.sink --port P --log FILE [--tempfail-domain D] [--delay S]

Each accepted recipient appends one line ``<unix time> <address>`` to the log
(flushed before the 250 reply), so a crashed Sesame that re-sends shows up as a
second line for the same address. RCPT for a tempfailed domain gets a 451.
Runs apart from the test process so the load generator and the sink do not share
a GIL, and so its counts survive whatever the test does to Sesame.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class CountingHandler:
    """aiosmtpd handler: log accepted recipients; tempfail one domain on request."""

    def __init__(self, log_path: str, tempfail: set[str], delay: float) -> None:
        # O_APPEND writes of one short line are atomic, and unbuffered.
        self._fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._tempfail = tempfail
        self._delay = delay

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.rpartition("@")[2].lower() in self._tempfail:
            return "451 4.4.1 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self._delay:
            await asyncio.sleep(self._delay)
        now = time.time()
        lines = "".join(f"{now:.6f} {rcpt.lower()}\n" for rcpt in envelope.rcpt_tos)
        os.write(self._fd, lines.encode())
        return "250 2.0.0 OK queued"


async def serve(args: argparse.Namespace) -> None:
    handler = CountingHandler(args.log, set(args.tempfail_domain), args.delay)
    loop = asyncio.get_running_loop()

    def factory() -> Any:
        return SMTP(handler, hostname="sink.test", enable_SMTPUTF8=True, loop=loop)

    server = await loop.create_server(
        factory, host=args.host, port=args.port, reuse_address=True, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Tell the parent we listen: it waits for this file.
    with open(args.log + ".ready", "w") as ready:
        ready.write(str(os.getpid()))
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--tempfail-domain", action="append", default=[])
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args))
    except ImportError:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
