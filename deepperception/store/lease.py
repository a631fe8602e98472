"""Leases: a second runner of the same version waits for the first instead of computing twice.

``<root>/<name>/<version>/_lease.json`` holds ``{"owner", "expires_at"}``. It is created with the
store's exclusive create (local ``os.link``, S3 ``If-None-Match: *``), renewed by a background
thread while its owner works, and deleted on release. A lease whose owner died expires after
``StoreSettings.lease_ttl_s`` and is taken over; when the owner ran on this same machine (same
boot) and its process is gone, the lease is taken over at once: a stage rerun right after a crash
or a SIGKILL resumes without waiting for the expiry.

The lease is only an optimisation: correctness comes from the exclusive manifest commit. Two
runners that both think they hold it (a takeover racing with a late renewal) just both compute,
and one of them loses the commit race as before.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepperception.store.artifacts import ArtifactStore
    from deepperception.store.refs import ArtifactRef

log = logging.getLogger(__name__)

LEASE = "_lease.json"

# Owners this process has released. A release whose delete failed (the store was down: the run is
# failing because of it) leaves the lease file behind; a rerun in this same process (a retrying
# flow, a notebook, a test) must not wait out the TTL of a lease nobody holds any more.
_RELEASED_HERE: set[str] = set()


@dataclass(frozen=True)
class LeaseInfo:
    owner: str
    expires_at: dt.datetime
    machine: str | None = None
    pid: int | None = None

    @property
    def expired(self) -> bool:
        return dt.datetime.now(dt.timezone.utc) >= self.expires_at

    @property
    def owner_gone(self) -> bool:
        """The owner ran on this machine in this boot and its process no longer exists."""
        if self.machine is None or self.pid is None or self.machine != machine_id():
            return False  # another machine (or an old lease): only the expiry can tell
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    @property
    def released_here(self) -> bool:
        """This process released it (its file outlived the release: the delete failed)."""
        return self.owner in _RELEASED_HERE

    @property
    def stale(self) -> bool:
        return self.expired or self.owner_gone or self.released_here


def machine_id() -> str:
    """An opaque id of this machine *and boot* (a hash, naming nothing): pids are only comparable
    within one boot of one machine."""
    import hashlib
    import socket

    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return hashlib.sha256(f"{socket.gethostname()}|{boot}".encode()).hexdigest()[:16]


def new_owner() -> str:
    """Who holds a lease, for people reading it: host-free, pid plus a random part."""
    return f"pid{os.getpid()}-{uuid.uuid4().hex[:12]}"


class Lease:
    """A held lease (context manager: renews while inside, releases on exit)."""

    def __init__(self, store: "ArtifactStore", ref: "ArtifactRef", owner: str, ttl_s: float) -> None:
        self.store, self.ref, self.owner, self.ttl_s = store, ref, owner, ttl_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        return lease_path(self.store, self.ref)

    def _body(self) -> bytes:
        expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=self.ttl_s)
        return json.dumps({"owner": self.owner, "expires_at": expires.isoformat(), "machine": machine_id(),
                           "pid": os.getpid()}).encode()

    @classmethod
    def acquire(cls, store: "ArtifactStore", ref: "ArtifactRef", owner: str | None = None) -> "Lease | None":
        """The lease on ``ref``, or ``None`` while another live owner holds it."""
        lease = cls(store, ref, owner or new_owner(), store.settings.lease_ttl_s)
        _RELEASED_HERE.discard(lease.owner)  # an owner name taken again holds again
        if store._create_exclusive(lease.path, lease._body()):
            return lease
        held = read_lease(store, ref)
        if held is not None and not held.stale:
            return None
        # Expired, its owner's process gone, or unreadable: take it over, once.
        why = ("its process is gone" if held is not None and held.owner_gone
               else "it was released (its file outlived the release)" if held is not None and held.released_here
               else "expired")
        log.info("lease on %s held by %s %s; taking it over", ref, held.owner if held else "?", why)
        store._delete_file(lease.path)
        return lease if store._create_exclusive(lease.path, lease._body()) else None

    def renew(self) -> None:
        held = read_lease(self.store, self.ref)
        if held is not None and held.owner != self.owner:
            log.warning("lease on %s was taken over by %s", self.ref, held.owner)
            return
        self.store._overwrite(self.path, self._body())

    def release(self) -> None:
        self._stop.set()
        _RELEASED_HERE.add(self.owner)
        if self._thread is not None:
            self._thread.join()
        held = read_lease(self.store, self.ref)
        if held is not None and held.owner == self.owner:
            self.store._delete_file(self.path)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except Exception as exc:  # a missed renewal only risks a second runner computing too
                log.warning("could not renew the lease on %s: %s", self.ref, exc)

    def __enter__(self) -> "Lease":
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.ref}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class NoLease:
    """Stand-in when leases are off (``StoreSettings.lease=False``)."""

    def __enter__(self) -> "NoLease":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def release(self) -> None:
        pass


def lease_path(store: "ArtifactStore", ref: "ArtifactRef") -> str:
    return store._path(ref.name, ref.version, LEASE)


def read_lease(store: "ArtifactStore", ref: "ArtifactRef") -> LeaseInfo | None:
    """The current lease on ``ref``; ``None`` if there is none (or it cannot be read)."""
    try:
        raw = json.loads(store._read_small(lease_path(store, ref)))
        pid = raw.get("pid")
        return LeaseInfo(owner=str(raw["owner"]), expires_at=dt.datetime.fromisoformat(raw["expires_at"]),
                         machine=raw.get("machine"), pid=int(pid) if pid is not None else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def wait_while_leased(store: "ArtifactStore", ref: "ArtifactRef") -> None:
    """Block until ``ref`` is committed or its lease is released or expires."""
    while not store.exists(ref):
        held = read_lease(store, ref)
        if held is None or held.stale:
            return
        time.sleep(store.settings.lease_poll_s)
