"""Loaded by every Python process of the smoke book run (via PYTHONPATH): refuses any network
connection that does not stay on this machine, so a test proves the default path is offline.
Loopback stays open because Jupyter kernels talk to papermill over local sockets."""

import ipaddress
import socket

_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


class OfflineViolation(OSError):
    """Raised when code tries to reach the network during an offline run."""


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if not _is_local(address):
        raise OfflineViolation(f"network access to {address!r} during an offline run")
    return _connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise OfflineViolation(f"network access to {address!r} during an offline run")
    return _connect_ex(self, address)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
