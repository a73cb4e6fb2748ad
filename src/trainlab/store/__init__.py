"""The embedded store (SQLite, WAL): runs, sweeps and one row per metric value."""

from trainlab.store.base import RunStore
from trainlab.store.sqlite import (
    DEFAULT_STORE,
    MIGRATIONS,
    SCHEMA_VERSION,
    Store,
    held_elsewhere,
    open_store,
    store_path,
)

__all__ = ["DEFAULT_STORE", "MIGRATIONS", "SCHEMA_VERSION", "RunStore", "Store",
           "held_elsewhere", "open_store", "store_path"]
