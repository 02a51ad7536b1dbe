"""Ports that cannot be bound: one line naming the port and the setting that changes it, never a traceback."""

from __future__ import annotations

import errno
import socket

from service.settings import ENVIRONMENT, Settings

# What each listening port serves, and the flag that sets it (the metrics port has only its variable).
PORTS: dict[str, tuple[str, str | None]] = {
    "grpc_port": ("gRPC", "--grpc-port"),
    "http_port": ("HTTP edge", "--http-port"),
    "metrics_port": ("metrics", None),
}


class ListenError(Exception):
    """A port this process must listen on is taken or not allowed; the CLI prints it and exits with 2."""


def listen_error(setting: str, host: str, port: int, reason: str) -> ListenError:
    """The one-line error for `setting` (a Settings field in PORTS) failing to bind host:port."""
    what, flag = PORTS[setting]
    variable = ENVIRONMENT[setting]
    how = f"{flag} or {variable}" if flag else variable
    return ListenError(f"cannot listen on {host}:{port} for {what}: {reason}; choose another port with {how}")


def probe(setting: str, host: str, port: int) -> None:
    """Bind host:port once, as the server will (SO_REUSEADDR, no SO_REUSEPORT), and release it; raise
    ListenError if that fails. Port 0 (any free port) always succeeds and is not probed."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise listen_error(setting, host, port, reason(exc)) from None


def reason(exc: OSError) -> str:
    """`address already in use`, `permission denied`, ...: the OS's words, lowercase."""
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    return (exc.strerror or str(exc)).lower()


def probe_all(settings: Settings) -> None:
    """Probe every port the role listens on before anything starts, so a taken one costs one line."""
    names = {
        "all": ("grpc_port", "metrics_port", "http_port"),
        "core": ("grpc_port", "metrics_port"),
        "edge": ("http_port",),
    }[settings.role]
    for name in names:
        probe(name, settings.bind, getattr(settings, name))
