"""Loopback helpers shared by the live tests: every socket stays on 127.0.0.1."""
import socket

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]
