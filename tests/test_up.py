"""``sesame up`` on a fresh data directory: embedded stores, every component."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import boto3

from tests.support.api_server import free_port


def test_up_starts_everything_on_embedded_stores_and_stops_cleanly(tmp_path):
    ports = {name: free_port() for name in ("API", "SMTP", "SMTPS", "MX")}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SESAME_")},
        "SESAME_DATA_DIR": str(tmp_path / "var"),
        "SESAME_API_PORT": str(ports["API"]),
        "SESAME_SMTP_PORT": str(ports["SMTP"]),
        "SESAME_SMTPS_PORT": str(ports["SMTPS"]),
        "SESAME_MX_PORT": str(ports["MX"]),
        "SESAME_WORKERS": "1",
        "SESAME_API_WORKERS": "1",  # a loaded CI machine starts one worker faster
        "SESAME_LOG_LEVEL": "WARNING",
    }
    up = subprocess.Popen(
        [sys.executable, "-m", "sesame.cli", "up"],
        env=env,
        cwd=tmp_path,  # not the repository: the installed packages must suffice
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 150
        ready = False
        while time.monotonic() < deadline and up.poll() is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{ports['API']}/readyz", timeout=2
                ) as r:
                    ready = r.status == 200
                    break
            except OSError:
                time.sleep(0.3)
        assert ready, "sesame up never became ready"

        created = subprocess.run(
            [sys.executable, "-m", "sesame.cli", "account", "create", "demo"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        creds = json.loads(created.stdout)
        ses = boto3.client(
            "ses",
            endpoint_url=f"http://127.0.0.1:{ports['API']}",
            region_name="us-east-1",
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
        )
        assert ses.get_send_quota()["Max24HourSend"] == 200.0
        for name in ("SMTP", "SMTPS", "MX"):
            import socket

            with socket.create_connection(("127.0.0.1", ports[name]), timeout=10):
                pass
    finally:
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=30)
    assert up.returncode == 0, output
    assert "Sesame is up" in output
