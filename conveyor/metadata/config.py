"""Which metadata store: a SQLite file (the embedded default), or a MySQL /
MariaDB or PostgreSQL database through MLMD's own connection configs.

    metadata="/path/metadata.sqlite"                 # or sqlite:///path/metadata.sqlite
    metadata="mysql://conveyor@127.0.0.1:3306/mlmd"
    metadata="postgresql://conveyor@127.0.0.1:5432/mlmd"

A database URI names the user, host, port and database, never the password:
that comes from the environment (`CONVEYOR_METADATA_PASSWORD`) or a file
only the user reads (`CONVEYOR_METADATA_PASSWORD_FILE`), so it stays out of
pipeline files, MLMD, logs and the compiled IR.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlparse

from conveyor.errors import PipelineDefinitionError

__all__ = ["DATABASE_SCHEMES", "is_database_uri", "check_metadata", "connection_config", "describe"]

DATABASE_SCHEMES = ("mysql", "postgresql", "postgres")
_DEFAULT_PORTS = {"mysql": 3306, "postgresql": 5432, "postgres": 5432}


def is_database_uri(spec: str) -> bool:
    return urlparse(spec).scheme in DATABASE_SCHEMES


def check_metadata(spec: str, where: str) -> str:
    """`spec` normalised (a SQLite path made absolute), or a
    PipelineDefinitionError saying what is wrong with it."""
    parsed = urlparse(spec)
    if parsed.scheme == "sqlite":
        path = parsed.path if not parsed.netloc else f"/{parsed.netloc}{parsed.path}"
        return os.path.abspath(unquote(path))
    if parsed.scheme in DATABASE_SCHEMES:
        if parsed.password is not None:
            raise PipelineDefinitionError(
                f"{where}: the metadata URI carries a password; name only user@host:port/database and put "
                f"the password in CONVEYOR_METADATA_PASSWORD (or a file named by "
                f"CONVEYOR_METADATA_PASSWORD_FILE), so it never lands in pipeline files, MLMD or logs."
            )
        if not parsed.hostname or not parsed.path.strip("/") or not parsed.username:
            raise PipelineDefinitionError(
                f"{where}: metadata URI {spec!r} must name a user, a host and a database, e.g. "
                f"{parsed.scheme}://conveyor@127.0.0.1:{_DEFAULT_PORTS[parsed.scheme]}/mlmd."
            )
        return spec
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        raise PipelineDefinitionError(
            f"{where}: metadata {spec!r} must be a local SQLite path or a mysql:// or postgresql:// URI; "
            f"the {parsed.scheme}:// scheme is not supported (an object store cannot hold the database)."
        )
    return os.path.abspath(spec)


def _password() -> str:
    path = os.environ.get("CONVEYOR_METADATA_PASSWORD_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    return os.environ.get("CONVEYOR_METADATA_PASSWORD", "")


def connection_config(spec: str) -> Any:
    """MLMD's ConnectionConfig for a checked metadata spec."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    config = pb.ConnectionConfig()
    parsed = urlparse(spec)
    if parsed.scheme == "mysql":
        config.mysql.host = parsed.hostname or ""
        config.mysql.port = parsed.port or _DEFAULT_PORTS["mysql"]
        config.mysql.database = parsed.path.strip("/")
        config.mysql.user = unquote(parsed.username or "")
        config.mysql.password = _password()
        return config
    if parsed.scheme in ("postgresql", "postgres"):
        config.postgresql.host = parsed.hostname or ""
        config.postgresql.port = str(parsed.port or _DEFAULT_PORTS["postgresql"])
        config.postgresql.dbname = parsed.path.strip("/")
        config.postgresql.user = unquote(parsed.username or "")
        config.postgresql.password = _password()
        return config
    os.makedirs(os.path.dirname(spec), exist_ok=True)
    config.sqlite.filename_uri = spec
    config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return config


def describe(spec: str) -> str:
    """The store as printed and recorded: never with a password."""
    parsed = urlparse(spec)
    if parsed.scheme in DATABASE_SCHEMES:
        return f"{parsed.scheme}://{parsed.username}@{parsed.hostname}:{parsed.port or _DEFAULT_PORTS[parsed.scheme]}" \
               f"/{parsed.path.strip('/')}"
    return spec
