"""Loaded by every Python process of the "offline" smoke book run (via PYTHONPATH): bars the
network for the process and for every child it starts, so a test proves the default path is
offline.

- TCP ``connect``/``connect_ex``, UDP ``sendto``/``sendmsg`` to anything but this machine raise
  :class:`OfflineViolation`; so does resolving a name other than this machine's (``getaddrinfo``,
  ``gethostbyname``): a DNS query is network traffic too.
- Child processes (``npm``, ``git``, ``pip``, ``curl``, another Python) inherit
  :data:`GUARD_ENV` (``guard_env.json``): npm, pip and the HuggingFace libraries in offline
  mode, HTTP(S) proxies pointing at a closed local port, and this folder on ``PYTHONPATH`` (so a
  Python child loads this guard too). An ``env=`` passed to ``subprocess`` gets the same
  variables.

Loopback stays open because Jupyter kernels talk to papermill over local sockets.
"""

import contextlib
import ipaddress
import json
import os
import socket
import subprocess

_HERE = os.path.dirname(os.path.abspath(__file__))
# npm/pip/HuggingFace offline, HTTP(S) proxies at the discard port 9 of this machine (nothing
# listens: a request fails at once); tests/test_book.py gives make the same variables
with open(os.path.join(_HERE, "guard_env.json")) as _handle:
    GUARD_ENV = json.load(_handle)


class OfflineViolation(OSError):
    """Raised when code tries to reach the network during an offline run."""


def _local_names() -> set:
    names = {"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
    with contextlib.suppress(OSError):
        names.update({socket.gethostname(), socket.getfqdn()})
    return {n.lower() for n in names}


_LOCAL_NAMES = _local_names()


def _is_local_host(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).split("%", 1)[0].lower()
    if host in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _is_local(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths
        return True
    return _is_local_host(address[0])


def _refuse(what, target):
    raise OfflineViolation(f"{what} {target!r} during an offline run")


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_sendto = socket.socket.sendto
_sendmsg = getattr(socket.socket, "sendmsg", None)
_getaddrinfo = socket.getaddrinfo
_gethostbyname = socket.gethostbyname
_gethostbyname_ex = socket.gethostbyname_ex


def _guarded_connect(self, address):
    if not _is_local(address):
        _refuse("network access to", address)
    return _connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        _refuse("network access to", address)
    return _connect_ex(self, address)


def _guarded_sendto(self, data, *args):
    address = args[-1]  # sendto(data, address) or sendto(data, flags, address)
    if not _is_local(address):
        _refuse("a datagram to", address)
    return _sendto(self, data, *args)


def _guarded_sendmsg(self, buffers, ancdata=(), flags=0, address=None):
    if address is not None and not _is_local(address):
        _refuse("a datagram to", address)
    if address is None:
        return _sendmsg(self, buffers, ancdata, flags)
    return _sendmsg(self, buffers, ancdata, flags, address)


def _is_literal_address(host) -> bool:
    try:
        ipaddress.ip_address(host.decode() if isinstance(host, bytes) else str(host))
    except ValueError:
        return False
    return True


def _guarded_getaddrinfo(host, *args, **kwargs):
    # a literal address needs no DNS query (connect/sendto then decide); a name does
    if not (_is_local_host(host) or _is_literal_address(host)):
        _refuse("a DNS lookup of", host)
    return _getaddrinfo(host, *args, **kwargs)


def _guarded_gethostbyname(host):
    if not _is_local_host(host):
        _refuse("a DNS lookup of", host)
    return _gethostbyname(host)


def _guarded_gethostbyname_ex(host):
    if not _is_local_host(host):
        _refuse("a DNS lookup of", host)
    return _gethostbyname_ex(host)


def _with_guard(env):
    """``env`` plus :data:`GUARD_ENV`, with this folder first on ``PYTHONPATH``."""
    env = {**env, **GUARD_ENV}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != _HERE]
    env["PYTHONPATH"] = os.pathsep.join([_HERE, *paths])
    return env


_popen_init = subprocess.Popen.__init__


def _guarded_popen_init(self, *args, **kwargs):
    if kwargs.get("env") is not None:
        kwargs["env"] = _with_guard(kwargs["env"])
    return _popen_init(self, *args, **kwargs)


os.environ.update(_with_guard(dict(os.environ)))
socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
socket.socket.sendto = _guarded_sendto
if _sendmsg is not None:
    socket.socket.sendmsg = _guarded_sendmsg
socket.getaddrinfo = _guarded_getaddrinfo
socket.gethostbyname = _guarded_gethostbyname
socket.gethostbyname_ex = _guarded_gethostbyname_ex
subprocess.Popen.__init__ = _guarded_popen_init
