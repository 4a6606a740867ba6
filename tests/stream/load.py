"""A stream of contact changes for the crash tests, run as its own process:

    python -m tests.stream.load STORE_URL SEED COUNT [DONE_FILE]

Each change is one transaction (an attribute change, a read or a login of a
random contact). A write that fails because the database went away is retried
until it commits, so every change the script makes lands exactly once. When
done it writes the number of changes to DONE_FILE.
"""

from __future__ import annotations

import random
import sys
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from personatag.contacts import add_events, set_contact
from personatag.domain import utcnow
from personatag.store import open_store
from personatag.store.db import StoreUnreachable

CONTACTS = 200
REGIONS = ("EMEA", "AMER", "APAC", "")


def change(rng: random.Random) -> tuple[str, dict[str, object]]:
    cid = f"c{rng.randrange(CONTACTS):04d}"
    kind = rng.random()
    if kind < 0.5:
        field = rng.choice(("region", "seniority"))
        value = rng.choice(REGIONS) if field == "region" else str(rng.randrange(10))
        return "set", {"contact_id": cid, "values": {field: value}}
    if kind < 0.8:
        pub = f"p{rng.randrange(10)}"
        return "read", {"contact_id": cid, "pub": pub, "days": rng.randrange(1, 30)}
    return "login", {"contact_id": cid, "days": rng.randrange(1, 30)}


def main() -> None:
    url, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    done_file = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    rng = random.Random(seed)
    deadline = time.monotonic() + 120
    while True:  # a slow start can meet the database restarting, too
        try:
            store = open_store(url)
            break
        except StoreUnreachable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    for i in range(count):
        what, args = change(rng)
        # Distinct microseconds: a retried read or login is recognised as known.
        at = utcnow() - timedelta(days=int(args.get("days", 0)), microseconds=i)  # type: ignore[call-overload]
        while True:
            try:
                if what == "set":
                    set_contact(store, str(args["contact_id"]), args["values"])  # type: ignore[arg-type]
                elif what == "read":
                    add_events(store, str(args["contact_id"]), reads=[(str(args["pub"]), at)])
                else:
                    add_events(store, str(args["contact_id"]), logins=[at])
                break
            except DBAPIError:
                time.sleep(0.2)  # the database is restarting: try again
        time.sleep(0.002)
    store.dispose()
    if done_file is not None:
        done_file.write_text(str(count))


if __name__ == "__main__":
    main()
