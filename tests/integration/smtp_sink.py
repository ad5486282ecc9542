"""Postfix's smtp-sink as a peer with faults of its own, and a record of what it took.

smtp-sink switches used by the fault tests and bench/chaos.py (Postfix 3.7):

* `-r CMD,...` rejects the commands with a soft error (450 4.3.0, `-b` sets the reply);
* `-f CMD,...` rejects them with a hard error (500 5.3.0, `-B` sets the reply);
* `-Q CMD,...` replies 421 and hangs up (`-Q CONNECT`: at the greeting);
* `-q CMD,...` hangs up without a reply (`-q .`: after the final dot, the message taken);
* `-w SECONDS` waits before answering DATA.

Each message that reaches the final dot is dumped (`-d`) to a file of its own, so a test can
count what the server took, duplicates included, even when the sink then hung up.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from postyard.localsmtp import wait_until_listening

LOCALHOST = "127.0.0.1"


@dataclass
class SmtpSink:
    process: subprocess.Popen[bytes]
    port: int
    dumps: Path

    def message_ids(self) -> Counter[str]:
        """How many times the sink took each Message-ID (complete dumps only)."""
        taken: Counter[str] = Counter()
        for path in self.dumps.rglob("*"):
            if path.is_file():
                message_id = _message_id(path.read_bytes())
                if message_id is not None:
                    taken[message_id] += 1
        return taken

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers: a sink never outlives its test."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _message_id(dump: bytes) -> str | None:
    header, _, _ = dump.partition(b"\n\n")
    for line in header.splitlines():
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"message-id" and value.strip():
            return value.strip().decode("ascii", "replace")
    return None


def start_smtp_sink(executable: str, dumps: Path, *options: str, port: int) -> SmtpSink:
    """smtp-sink with `options` on 127.0.0.1:`port`, dumping to `dumps`; waits until it listens.

    The port may have been freed a moment ago by another sink: binding is retried for a while.
    """
    dumps.mkdir(parents=True, exist_ok=True)
    command = [executable, *options, "-d", f"{dumps}/%H%M%S.", f"{LOCALHOST}:{port}", "1000"]
    if os.geteuid() == 0:
        # As root smtp-sink insists on a user to switch to; staying root lets it write its
        # dumps under the test's private temporary directory.
        command[1:1] = ["-u", "root"]
    deadline = time.monotonic() + 10
    log = dumps.with_name(f"{dumps.name}.log")  # a file, not a pipe: a full pipe would block it
    while True:
        with log.open("ab") as output:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        sink = SmtpSink(process, port, dumps)
        if wait_until_listening(process, port):
            return sink
        sink.stop()
        error = log.read_text(errors="replace").strip()[-500:]
        if time.monotonic() > deadline:
            raise RuntimeError(f"smtp-sink did not start on port {port}: {error}")
        time.sleep(0.1)
