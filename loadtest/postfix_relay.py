"""A real MTA as the client: Debian's Postfix relays through Sesame's SMTP submission.

    .venv/bin/python loadtest/postfix_relay.py [--keep]

Shows that an unmodified Postfix, configured the way an operator would point a
server at Amazon SES (``relayhost`` + SASL + mandatory STARTTLS), delivers mail
through Sesame:

1. Finds Postfix: the installed one if ``/usr/sbin/postfix`` exists, else the
   Debian package unpacked (``apt-get download postfix`` + ``dpkg -x``) into
   ``loadtest/bin/postfix/`` (gitignored).  Nothing is installed system-wide.
2. Starts Sesame (``sesame.cli up``) on a throwaway PostgreSQL database, Redis
   db 12 and free loopback ports, with ``SESAME_SMARTHOST`` pointing at an
   aiosmtpd sink on loopback that records what Sesame delivers.
3. Creates a production account (``sesame.cli account create relay
   --production``) and a verified domain identity ``example.com``.
4. Runs a PRIVATE Postfix instance from a temp directory (own main.cf,
   master.cf, queue; no smtpd/inet listener at all, so nothing listens on port
   25) with ``relayhost = [127.0.0.1]:<submission port>``, SASL PLAIN/LOGIN
   with the account's SMTP credentials and ``smtp_tls_security_level = encrypt``.
5. Submits a message with Postfix's ``sendmail -C <config> -f
   sender@example.com user@dest.example.net`` and waits (<= 60 s) until the sink
   has it; checks the sink copy carries Sesame's Message-ID and the subject,
   and that Sesame's ``messages`` row has ``interface = 'smtp'``.  Prints
   Postfix's log lines ``relay=127.0.0.1[127.0.0.1]:<port> ... status=sent
   (250 2.0.0 Ok <MessageId>)``.
6. Stops Postfix and Sesame and drops the database (``--keep`` keeps the
   Postfix temp directory for inspection).

Run as root (Postfix's master must start as root to drop to its mail_owner,
here ``nobody``).  Exit status 0 means the message made it end to end.
"""

from __future__ import annotations

import argparse
import contextlib
import email
import email.policy
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from loadtest.common import (  # noqa: E402
    REDIS_URL,
    ROOT,
    free_port,
    fresh_database,
    process,
    python,
    wait_for_port,
)
from tests.support.smtp_sink import SmtpSink  # noqa: E402

CACHE = Path(__file__).resolve().parent / "bin" / "postfix"
SASL_PLUGINS = Path("/usr/lib/x86_64-linux-gnu/sasl2")
DOMAIN = "example.com"
SENDER = f"sender@{DOMAIN}"
RECIPIENT = "user@dest.example.net"
MAIL_OWNER = "nobody"  # Postfix daemons drop to this user; no 'postfix' user needed
SETGID_GROUP = "mail"  # must differ from mail_owner's group (nogroup)
DEFAULT_PRIVS = "daemon"  # must differ from mail_owner


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


# -- 1. Postfix binaries --------------------------------------------------------


class Postfix:
    """Where the Postfix programs live: the system's or an unpacked package."""

    def __init__(self, prefix: Path, sasl_path: Path | None) -> None:
        self.prefix = prefix  # "/" for an installed Postfix
        self.command_directory = prefix / "usr/sbin"
        self.daemon_directory = prefix / "usr/lib/postfix/sbin"
        self.shlib_directory = prefix / "usr/lib/postfix"
        self.sasl_path = sasl_path

    def env(self) -> dict[str, str]:
        # The binaries have RUNPATH /usr/lib/postfix; LD_LIBRARY_PATH wins over it.
        # main.cf passes it on: import_environment (daemons) and export_environment
        # (sendmail -> postdrop).
        env = {"LD_LIBRARY_PATH": str(self.shlib_directory)}
        if self.sasl_path:
            env["SASL_PATH"] = str(self.sasl_path)
        return env

    def bin(self, name: str) -> str:
        return str(self.command_directory / name)


def find_postfix() -> Postfix:
    if (
        Path("/usr/sbin/postfix").exists()
        and Path("/usr/lib/postfix/sbin/master").exists()
    ):
        step("using the installed Postfix in /usr/sbin")
        return Postfix(Path("/"), _sasl_plugins())
    if not (CACHE / "usr/lib/postfix/sbin/master").exists():
        step(f"unpacking Debian's postfix package into {CACHE.relative_to(ROOT)}")
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            debs = sorted(glob.glob("/var/cache/apt/archives/postfix_*.deb"))
            if not debs:
                subprocess.run(
                    ["apt-get", "download", "postfix"],
                    cwd=tmp,
                    check=True,
                    capture_output=True,
                )
                debs = glob.glob(f"{tmp}/postfix_*.deb")
            subprocess.run(["dpkg", "-x", debs[-1], str(CACHE)], check=True)
    else:
        step(f"using Postfix unpacked in {CACHE.relative_to(ROOT)}")
    postfix = Postfix(CACHE, _sasl_plugins())
    missing = subprocess.run(
        ["ldd", str(postfix.daemon_directory / "smtp")],
        env={**os.environ, **postfix.env()},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "not found" in missing:
        raise SystemExit(f"Postfix needs shared libraries that are missing:\n{missing}")
    version = subprocess.run(
        [postfix.bin("postconf"), "-d", "-h", "mail_version"],
        env={**os.environ, **postfix.env()},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    step(f"Postfix {version}")
    return postfix


def _sasl_plugins() -> Path | None:
    """Cyrus SASL client plugins for PLAIN/LOGIN (libsasl2-modules)."""
    if glob.glob(str(SASL_PLUGINS / "libplain.so*")):
        return None  # the system's, found by libsasl2 itself
    unpacked = CACHE / "sasl"
    plugins = unpacked / "usr/lib/x86_64-linux-gnu/sasl2"
    if not glob.glob(str(plugins / "libplain.so*")):
        step("unpacking libsasl2-modules for the PLAIN/LOGIN client mechanisms")
        unpacked.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                ["apt-get", "download", "libsasl2-modules"],
                cwd=tmp,
                check=True,
                capture_output=True,
            )
            subprocess.run(
                [
                    "dpkg",
                    "-x",
                    glob.glob(f"{tmp}/libsasl2-modules_*.deb")[0],
                    str(unpacked),
                ],
                check=True,
            )
    return plugins


# -- 4. the private Postfix instance ----------------------------------------------

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
# No smtpd / inet service: this instance only accepts mail from sendmail.
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

QUEUE_DIRS = [
    "active",
    "bounce",
    "corrupt",
    "defer",
    "deferred",
    "flush",
    "hold",
    "incoming",
    "private",
    "saved",
    "trace",
]


@contextlib.contextmanager
def private_postfix(
    postfix: Postfix,
    smtp_port: int,
    username: str,
    password: str,
    ca_file: Path,
    keep: bool,
) -> Iterator[tuple[Path, Path]]:
    """Configure and start a Postfix instance under a temp dir; yield (config, log)."""
    import grp
    import pwd

    owner = pwd.getpwnam(MAIL_OWNER)
    group = grp.getgrnam(SETGID_GROUP)
    base = Path(tempfile.mkdtemp(prefix="sesame-postfix-"))
    base.chmod(0o755)  # the daemons run as nobody and must reach their queue
    config, queue, data = base / "etc", base / "spool", base / "lib"
    log = base / "postfix.log"
    config.mkdir()
    for directory in (queue, data):
        directory.mkdir()
        os.chown(directory, 0 if directory == queue else owner.pw_uid, 0)
    for name in QUEUE_DIRS:
        (queue / name).mkdir(mode=0o700)
        os.chown(queue / name, owner.pw_uid, 0)
    (queue / "pid").mkdir(mode=0o755)
    (queue / "maildrop").mkdir()
    os.chown(queue / "maildrop", owner.pw_uid, group.gr_gid)
    (queue / "maildrop").chmod(0o1730)
    (queue / "public").mkdir()
    os.chown(queue / "public", owner.pw_uid, group.gr_gid)
    (queue / "public").chmod(0o2710)
    # The smtp client runs as nobody: give it a readable copy of Sesame's cert.
    shutil.copy(ca_file, config / "sesame-cert.pem")
    (config / "sesame-cert.pem").chmod(0o644)
    (config / "dynamicmaps.cf").write_text("")  # static: is built in
    (config / "master.cf").write_text(MASTER_CF)
    passthrough = " ".join(f"{k}={v}" for k, v in postfix.env().items())
    (config / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
command_directory = {postfix.command_directory}
daemon_directory = {postfix.daemon_directory}
shlib_directory = {postfix.shlib_directory}
meta_directory = {config}
mail_owner = {MAIL_OWNER}
setgid_group = {SETGID_GROUP}
default_privs = {DEFAULT_PRIVS}
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C POSTLOG_SERVICE POSTLOG_HOSTNAME {passthrough}
export_environment = TZ MAIL_CONFIG LANG {passthrough}
maillog_file = {log}
maillog_file_prefixes = {base}
syslog_name = postfix-sesame
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = relay.example.com
myorigin = {DOMAIN}
mydestination =
mynetworks = 127.0.0.0/8
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
biff = no
relayhost = [127.0.0.1]:{smtp_port}
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = static:{{{username}:{password}}}
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
smtp_tls_security_level = encrypt
smtp_tls_CAfile = {config / "sesame-cert.pem"}
smtp_tls_loglevel = 1
""")
    env = {**os.environ, **postfix.env(), "MAIL_CONFIG": str(config)}
    step(
        f"private Postfix in {base}: relayhost = [127.0.0.1]:{smtp_port}, SASL user {username}"
    )
    check = subprocess.run(
        [postfix.bin("postconf"), "-c", str(config), "-n"],
        env=env,
        capture_output=True,
        text=True,
    )
    for line in check.stderr.splitlines():
        print(f"    postconf: {line}")
    # master in the foreground (-d), leading its own process group: we own its
    # PID, and on SIGTERM it stops every daemon in that group.
    master = subprocess.Popen(
        [str(postfix.daemon_directory / "master"), "-c", str(config), "-d"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not (queue / "public" / "pickup").exists():
            if master.poll() is not None:
                output = master.stdout.read().decode() if master.stdout else ""
                raise RuntimeError(
                    f"Postfix master exited {master.returncode}:\n{output}"
                    f"\n{_read(log)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix did not come up:\n{_read(log)}")
            time.sleep(0.1)
        step(f"Postfix master running (pid {master.pid}); no inet listener configured")
        yield config, log
    finally:
        master.terminate()
        try:
            master.wait(10)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()
        _reap_group(master.pid)
        step("Postfix stopped")
        if keep:
            print(f"    kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _reap_group(pgid: int, timeout: float = 5.0) -> None:
    """Wait for the daemons in master's process group to exit; kill stragglers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


# -- 2./3. Sesame ---------------------------------------------------------------


def create_account(env: dict[str, str], database_url: str) -> dict[str, str]:
    out = subprocess.run(
        [python(), "-m", "sesame.cli", "account", "create", "relay", "--production"],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    account = json.loads(out)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "insert into identities (account_id, name, kind, verification_status)"
            " values (%s, %s, 'domain', 'success')",
            (account["AccountId"], DOMAIN),
        )
    return account


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", action="store_true", help="keep Postfix's temp directory"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="delivery deadline (s)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit(
            "run as root: Postfix's master starts as root and drops privileges"
        )

    postfix = find_postfix()
    ports = {name: free_port() for name in ("api", "smtp", "smtps", "mx", "sink")}
    with contextlib.ExitStack() as stack:
        data_dir = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="sesame-data-"))
        )
        step("creating a throwaway database")
        database_url = stack.enter_context(fresh_database())
        sink = stack.enter_context(SmtpSink("127.0.0.1", ports["sink"]))
        step(f"aiosmtpd sink on 127.0.0.1:{ports['sink']}")
        env = {
            "SESAME_DATABASE_URL": database_url,
            "SESAME_REDIS_URL": REDIS_URL,
            "SESAME_DATA_DIR": str(data_dir),
            "SESAME_API_PORT": str(ports["api"]),
            "SESAME_SMTP_PORT": str(ports["smtp"]),
            "SESAME_SMTPS_PORT": str(ports["smtps"]),
            "SESAME_MX_PORT": str(ports["mx"]),
            "SESAME_SMARTHOST": f"127.0.0.1:{ports['sink']}",
            "SESAME_HOSTNAME": "sesame.example.org",
            "SESAME_SWEEP_SECONDS": "1",
            "SESAME_LOG_LEVEL": "WARNING",
        }
        account = create_account(env, database_url)
        step(f"account {account['AccountId']} (production), identity {DOMAIN} verified")
        stack.enter_context(process([python(), "-m", "sesame.cli", "up"], env=env))
        for name in ("api", "smtp"):
            wait_for_port(ports[name], timeout=60)
        step(f"Sesame up: API :{ports['api']}, submission :{ports['smtp']} (STARTTLS)")
        cert = data_dir / "smtp-cert.pem"
        deadline = time.monotonic() + 10
        while not cert.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

        config, log = stack.enter_context(
            private_postfix(
                postfix,
                ports["smtp"],
                account["SmtpUsername"],
                account["SmtpPassword"],
                cert,
                args.keep,
            )
        )

        token = uuid.uuid4().hex[:12]
        subject = f"Relayed by Postfix {token}"
        message = (
            f"From: Relay Test <{SENDER}>\nTo: {RECIPIENT}\nSubject: {subject}\n"
            f"\nHello from Postfix's sendmail, token {token}.\n"
        )
        step(f"sendmail -C {config} -f {SENDER} {RECIPIENT}  (Subject: {subject})")
        subprocess.run(
            [postfix.bin("sendmail"), "-C", str(config), "-f", SENDER, RECIPIENT],
            input=message.encode(),
            env={**os.environ, **postfix.env()},
            check=True,
        )

        deadline = time.monotonic() + args.timeout
        got = None
        while got is None and time.monotonic() < deadline:
            got = next((m for m in sink.messages if token.encode() in m.data), None)
            if got is None:
                time.sleep(0.2)
        postfix_lines = [
            line
            for line in _read(log).splitlines()
            if "relay=" in line
            or "TLS connection" in line
            or "warning" in line
            or "error" in line
            or "fatal" in line
            or "panic" in line
        ]
        print("--- Postfix log (delivery lines) ---")
        for line in postfix_lines:
            print(f"    {line}")
        if got is None:
            print("--- full Postfix log ---")
            print(_read(log))
            print(
                f"FAIL: the sink got nothing within {args.timeout:.0f} s",
                file=sys.stderr,
            )
            return 1

        parsed = email.message_from_bytes(got.data, policy=email.policy.default)
        message_id = str(parsed["Message-ID"] or "")
        step(
            f"sink got it: MAIL FROM {got.mail_from!r}, RCPT {got.rcpt_tos},"
            f" Message-ID {message_id}, Subject {parsed['Subject']!r}"
        )
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "select id, interface, source, subject, recipient_count"
                " from messages where account_id = %s",
                (account["AccountId"],),
            ).fetchall()
        failures = []
        if str(parsed["Subject"]) != subject:
            failures.append(f"subject is {parsed['Subject']!r}, expected {subject!r}")
        if len(rows) != 1:
            failures.append(f"expected one messages row, found {rows}")
        else:
            ses_id, interface, source, _, count = rows[0]
            step(
                f"messages row: id={ses_id} interface={interface} source={source}"
                f" recipients={count}"
            )
            if interface != "smtp":
                failures.append(f"interface is {interface!r}, expected 'smtp'")
            if ses_id not in message_id:
                failures.append(f"Message-ID {message_id!r} is not Sesame's ({ses_id})")
            sent = [
                line
                for line in postfix_lines
                if f"relay=127.0.0.1[127.0.0.1]:{ports['smtp']}" in line
                and "status=sent" in line
                and f"250 2.0.0 Ok {ses_id}" in line
            ]
            if not sent:
                failures.append(
                    "no Postfix 'status=sent (250 2.0.0 Ok <MessageId>)' log line"
                )
        if RECIPIENT not in got.rcpt_tos:
            failures.append(f"sink recipients are {got.rcpt_tos}")
        if failures:
            for failure in failures:
                print(f"FAIL: {failure}", file=sys.stderr)
            return 1
        step(
            "OK: Postfix relayed through Sesame (SASL + STARTTLS) and Sesame delivered"
        )
    step("cleaned up: Postfix and Sesame stopped, database dropped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
