"""Loopback helpers shared by the live tests: every socket stays on 127.0.0.1."""
import socket

from policyc.runtime.live.demo import HOST, free_port  # noqa: F401  (the tests import them from here)


def wait_port(port: int, timeout: float = 10.0, proc=None) -> None:
    """Block until something listens on HOST:port (a process started for the test
    has come up), polling; fail early if `proc` has already exited."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"process exited with {proc.returncode} before listening on {port}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {HOST}:{port} after {timeout} s")
            time.sleep(0.02)
