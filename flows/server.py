"""The temporary Prefect server a CLI campaign runs against when no ``PREFECT_API_URL`` is set.

Prefect would start one itself (``python -m uvicorn ...`` from ``SubprocessASGIServer``), but in the terminal's
process group, so Ctrl-C stops the server while the flows still report their final states to it (minutes of
retries and tracebacks), and a SIGKILLed command leaves it running forever. This one is the same Prefect app on a
free port of 127.0.0.1, in its own session (the terminal's Ctrl-C reaches only the command, which stops the
server after its flows have reported), and it gets SIGTERM when the command dies, even by SIGKILL
(:func:`sapis.runtime.die_with_parent`). Run records land in ``PREFECT_HOME``'s database, as with Prefect's own
temporary server, so a later ``prefect server start`` shows them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress

#: Seconds to wait for the server to answer (Prefect's own default of 20 s is too short on a busy machine).
STARTUP_S = 150.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


class TemporaryServer:
    """A Prefect API server subprocess that never outlives this process; ``stop()`` ends it."""

    def __init__(self, timeout_s: float = STARTUP_S) -> None:
        from prefect.settings import get_current_settings

        env = {
            **os.environ,
            **get_current_settings().to_environment_variables(exclude_unset=True),
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        env.pop("PREFECT_API_URL", None)
        deadline = time.monotonic() + timeout_s
        for _attempt in range(3):  # another process may take the free port before uvicorn binds it
            self.port = _free_port()
            self.api_url = f"http://127.0.0.1:{self.port}/api"
            cmd = [sys.executable, "-m", "sapis.flows.server", str(self.port), str(os.getpid())]
            self.process = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
            )
            while self.process.poll() is None and time.monotonic() < deadline:
                if _healthy(self.api_url):
                    return
                time.sleep(0.2)
            if self.process.poll() is None:
                break
        self.stop()
        raise RuntimeError(f"the temporary Prefect server did not answer within {timeout_s:.0f} s")

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the server, SIGKILL it after ``grace_s``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _drain_prefect_clients(timeout_s: float = 10.0) -> None:
    """Send the logs and events still queued in this process before the server goes away."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with suppress(Exception):  # best effort: a lost log line must not turn an exit into a traceback
            worker.drain_all(timeout=timeout_s)


@contextmanager
def prefect_api() -> Iterator[str | None]:
    """Run the body against ``PREFECT_API_URL`` if set (or a test harness), else against a
    :class:`TemporaryServer` that is stopped when the body ends; yields the API URL it started, or None."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield None  # a server of the user's, or none allowed (Prefect then says so)
        return
    server = TemporaryServer()
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                _drain_prefect_clients()
    finally:
        server.stop()


def main(argv: list[str]) -> None:
    """``python -m sapis.flows.server PORT PARENT_PID``: serve Prefect's API until SIGTERM or the parent's death."""
    from sapis.runtime import die_with_parent

    port, parent = int(argv[0]), int(argv[1])
    die_with_parent(parent)
    import uvicorn

    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="on",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
