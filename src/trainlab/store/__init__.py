"""The embedded store (SQLite, WAL): runs, sweeps and one row per metric value."""

from trainlab.store.sqlite import DEFAULT_STORE, SCHEMA_VERSION, Store, open_store, store_path

__all__ = ["DEFAULT_STORE", "SCHEMA_VERSION", "Store", "open_store", "store_path"]
