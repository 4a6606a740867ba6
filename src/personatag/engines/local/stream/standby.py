"""One stream processor per offset: the others wait as standbys.

Two processors on one store would race for the same offset (only one step's
commit can win). The one holding the offset's lease steps; any other waits,
says so once, and takes over as soon as the lease is free (its holder stopped,
crashed or lost its database session).
"""

from __future__ import annotations

import logging

from personatag.store import Store
from personatag.store.leases import Lease, try_lease

log = logging.getLogger("personatag.engines.local.stream.processor")

# How often a standby checks whether the active processor is gone.
STANDBY_POLL_S = 1.0


def lease_name(offset: str) -> str:
    """The lease a processor of offset `offset` holds while it steps."""
    return f"stream-offset:{offset}"


class Ownership:
    """Whether this processor may step the offset `name` now."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        self._lease: Lease | None = None
        self._waiting = False  # the standby line was logged

    @property
    def active(self) -> bool:
        return self._lease is not None

    def acquire(self) -> bool:
        """True when this processor holds the offset (taking it if it is free);
        False while another one does. Store errors are raised."""
        if self._lease is not None:
            if self._lease.held():
                return True
            self._lease = None
            log.warning(
                "stream processor %s lost its hold on the offset (its database session "
                "ended); taking it again",
                self.name,
            )
        self._lease = try_lease(self.store, lease_name(self.name))
        if self._lease is None:
            if not self._waiting:
                self._waiting = True
                log.warning(
                    "another stream processor is running on this store's offset %r: "
                    "this one waits as a standby and takes over when it stops",
                    self.name,
                )
            return False
        if self._waiting:
            self._waiting = False
            log.info("stream processor %s took over the offset", self.name)
        return True

    def release(self) -> None:
        """Let another processor take over (on stop, or when the offset moved
        under this one anyway)."""
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()
