"""Mutual proof that both ends of a connection are the nodes of this job they claim to
be, for any protocol between nodes (the relay's code and data trees, the MPI launch
agent): one key derivation and one handshake, imported, never copied.

Keys. Every node derives ``derive(secret, job_id, protocol)``: a job key from a secret
every node holds (the store's secret key, or a job secret the user gives) and the job's
id, then one key per protocol, so a proof made for one protocol is worth nothing in
another.

Handshake (``accept`` on the listening side, ``connect`` on the dialling side), all of
it under one deadline on each end, so a peer that trickles bytes cannot hold a slot
past it:

1. server: ``BOOTSTRAP-AUTH1 <protocol> <server rank> <server nonce>``
2. client: ``{"rank": <client rank>, "nonce": <client nonce>}``; it has already checked
   that the protocol and the rank are the ones it dialled for.
3. server: refuses a rank it does not serve, else proves first:
   ``HMAC(key, "server|" + transcript)``, the transcript binding the protocol, both ranks
   and both fresh nonces.
4. client: checks that proof, and only then proves ``HMAC(key, "client|" + transcript)``.
5. server: checks it and says ``{"ok": true}``.

What follows: a child accepts only its own parent and a server only its own children;
nobody signs a nonce for a party it has not checked (the server's proof, given first,
names the rank it serves and covers its own fresh nonce, so it verifies nowhere else);
a reflected proof fails on its role label, a replayed one on the other side's nonce. A
listener that is not the node dialled for (another node on the same host, a program on
the port) gets the client's rank and nonce, never a proof. The handshake authenticates
the peers, not the bytes after it: what a protocol sends next is checked by its own
means (the relay's files against the store's listing).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Collection

from .wire import Wire

MAGIC = "BOOTSTRAP-AUTH1"
_NONCE = re.compile(r"[0-9a-f]{32}")
_STEP = 5.0  # seconds one send may take inside the handshake's deadline


class Refused(Exception):
    """The other end is not the party this one may talk to; ``str()`` says why."""


def derive(secret: str, job_id: str, protocol: str) -> bytes:
    """The key of one protocol of one job, from a secret every node of the job holds."""
    job = hmac.new(secret.encode(), f"{MAGIC}|job|{job_id}".encode(), hashlib.sha256).digest()
    return hmac.new(job, f"{MAGIC}|protocol|{protocol}".encode(), hashlib.sha256).digest()


def transcript(protocol: str, server: int, client: int, server_nonce: str,
               client_nonce: str) -> str:
    return f"{MAGIC}|{protocol}|server={server}|client={client}|{server_nonce}|{client_nonce}"


def prove(key: bytes, side: str, said: str) -> str:
    """``side`` ("server" or "client") vouching for the transcript ``said``."""
    return hmac.new(key, f"{side}|{said}".encode(), hashlib.sha256).hexdigest()


def _valid(key: bytes, side: str, said: str, proof: object) -> bool:
    return isinstance(proof, str) and hmac.compare_digest(proof, prove(key, side, said))


def _rank(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Refused("no rank")
    return value


def accept(wire: Wire, key: bytes, protocol: str, rank: int, allowed: Collection[int],
           deadline: float) -> int:
    """The listening side of the handshake; returns the client's rank, proven.

    Raises :class:`Refused`, ``TimeoutError``, ``OSError`` or ``ValueError`` as
    :func:`accept_session` does."""
    return accept_session(wire, key, protocol, rank, allowed, deadline)[0]


def session_key(key: bytes, said: str) -> bytes:
    """A key for what follows one handshake: bound to both fresh nonces, so bytes
    recorded from one connection mean nothing in another (a protocol that encrypts its
    frames, the launch agent's, keys them from this)."""
    return hmac.new(key, f"session|{said}".encode(), hashlib.sha256).digest()


def accept_session(wire: Wire, key: bytes, protocol: str, rank: int,
                   allowed: Collection[int], deadline: float) -> tuple[int, bytes]:
    """:func:`accept`, also returning the session's key (:func:`session_key`).

    Raises :class:`Refused` (a rank not in ``allowed``, a wrong proof, a malformed
    message), ``TimeoutError`` past ``deadline``, ``OSError``/``ValueError`` on a broken
    connection or a line that is not JSON."""
    server_nonce = secrets.token_hex(16)
    wire.send(f"{MAGIC} {protocol} {rank} {server_nonce}\n".encode(), _STEP)
    hello = wire.json(deadline, limit=256)
    client, client_nonce = _rank(hello.get("rank")), hello.get("nonce")
    if not isinstance(client_nonce, str) or not _NONCE.fullmatch(client_nonce):
        raise Refused("no nonce")
    if client not in allowed:
        raise Refused(f"rank {client} is not a node this one serves")
    said = transcript(protocol, rank, client, server_nonce, client_nonce)
    wire.send_json({"proof": prove(key, "server", said)}, _STEP)
    if not _valid(key, "client", said, wire.json(deadline, limit=256).get("proof")):
        raise Refused("no proof of the job's key")
    wire.send_json({"ok": True}, _STEP)
    return client, session_key(key, said)


def connect(wire: Wire, key: bytes, protocol: str, rank: int, server: int,
            deadline: float) -> None:
    """The dialling side: proves ``rank`` to node ``server`` once it has proven itself
    (raises as :func:`connect_session` does)."""
    connect_session(wire, key, protocol, rank, server, deadline)


def connect_session(wire: Wire, key: bytes, protocol: str, rank: int, server: int,
                    deadline: float) -> bytes:
    """:func:`connect`, returning the session's key (:func:`session_key`).

    Raises :class:`Refused` when the listener is not node ``server`` speaking
    ``protocol`` with the job's key (no proof of ours has been sent then), or when it
    refused ours."""
    greeting = wire.line(deadline, limit=256).decode(errors="replace").split()
    if len(greeting) != 4 or greeting[0] != MAGIC:
        raise Refused("not a bootstrap node")
    if greeting[1] != protocol:
        raise Refused(f"it speaks {greeting[1][:40]!r}, not {protocol!r}")
    if greeting[2] != str(server):
        raise Refused(f"node {greeting[2][:12]} answered, not node {server}")
    server_nonce = greeting[3]
    if not _NONCE.fullmatch(server_nonce):
        raise Refused("no nonce")
    client_nonce = secrets.token_hex(16)
    wire.send_json({"rank": rank, "nonce": client_nonce}, _STEP)
    try:
        reply = wire.json(deadline, limit=256)
    except ConnectionError:
        raise Refused(f"node {server} refused rank {rank}") from None
    said = transcript(protocol, server, rank, server_nonce, client_nonce)
    if not _valid(key, "server", said, reply.get("proof")):
        raise Refused(f"no proof of the job's key from node {server}")
    wire.send_json({"proof": prove(key, "client", said)}, _STEP)
    try:
        ok = wire.json(deadline, limit=64).get("ok")
    except ConnectionError:
        ok = False
    if ok is not True:
        raise Refused(f"node {server} refused our proof")
    return session_key(key, said)
