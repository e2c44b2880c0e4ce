"""Postfix's C ``smtp-sink`` for benchmarks: a sink that costs little CPU.

Found on PATH, in ``loadtest/bin/``, or unpacked there from Debian's postfix
package (``apt-get download postfix`` + ``dpkg -x``; no daemon is installed).
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import tempfile
from pathlib import Path

BIN = Path(__file__).resolve().parent / "bin"


def smtp_sink() -> Path:
    """Return the path of an ``smtp-sink`` binary, unpacking one if needed."""
    found = shutil.which("smtp-sink") or (BIN / "smtp-sink")
    if Path(found).exists():
        return Path(found)
    BIN.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        debs = glob.glob("/var/cache/apt/archives/postfix_*.deb")
        if not debs:
            subprocess.run(
                ["apt-get", "download", "postfix"],
                cwd=tmp,
                check=True,
                capture_output=True,
            )
            debs = glob.glob(f"{tmp}/postfix_*.deb")
        subprocess.run(["dpkg", "-x", debs[0], f"{tmp}/root"], check=True)
        shutil.copy(f"{tmp}/root/usr/sbin/smtp-sink", BIN / "smtp-sink")
        # smtp-sink links Postfix's own shared libraries; keep them beside it.
        (BIN / "lib").mkdir(exist_ok=True)
        for lib in glob.glob(f"{tmp}/root/usr/lib/postfix/*.so*"):
            shutil.copy(lib, BIN / "lib")
    return BIN / "smtp-sink"


def command(port: int) -> list[str]:
    """The sink on 127.0.0.1:port; it must drop root, so it runs as nobody."""
    binary = smtp_sink()
    libs = binary.parent / "lib"
    return [
        "env",
        f"LD_LIBRARY_PATH={libs}",
        str(binary),
        "-u",
        "nobody",
        f"127.0.0.1:{port}",
        "1024",
    ]
