"""Waiting for the kernel to destroy a finished run's keys.

A run's session keyring, and every key linked only from it, is destroyed by the kernel's key
garbage collector some time after the run's last process is gone: tens of milliseconds on an idle
host, longer under load. Until then any process may read such a key by its serial number if the run
opened it to others (``KEYCTL_SETPERM``). So a run is not over until the keys its uid owned beyond
its standing keyrings are gone; ``/proc/key-users`` counts them, destroyed or not yet.
"""

from __future__ import annotations

import time

KEY_GC_WAIT_S = 5.0  # far beyond what the collector takes on a loaded 2-core host (about 0.1 s)


def key_count(uid: int, path: str = "/proc/key-users") -> int:
    """How many keys ``uid`` owns, counting those the collector has not destroyed yet (0 if none)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:  # a kernel without keys (CONFIG_KEYS=n)
        return 0
    for line in lines:
        who, _, rest = line.partition(":")
        if who.strip() == str(uid):  # "uid: usage nkeys/nikeys qnkeys/maxkeys qnbytes/maxbytes"
            return int(rest.split()[1].split("/")[0])
    return 0


def await_key_gc(
    uid: int, standing: int, timeout_s: float = KEY_GC_WAIT_S, path: str = "/proc/key-users"
) -> bool:
    """Wait until ``uid`` owns at most ``standing`` keys; False if it still owns more at the deadline
    (a key kept alive from elsewhere, or an unreadable ``/proc/key-users``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if key_count(uid, path) <= standing:
                return True
        except (OSError, ValueError, IndexError):
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
