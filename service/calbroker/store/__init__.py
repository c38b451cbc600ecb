"""PostgreSQL: connection, migrations, the sealed-secret vault and repositories."""

from calbroker.store.database import connect_pool, resolve_database_url
from calbroker.store.keyring import Keyring, KeyringError, load_keyring
from calbroker.store.migrations import migrate

__all__ = ["Keyring", "KeyringError", "connect_pool", "load_keyring", "migrate", "resolve_database_url"]
