"""MySQL and MariaDB drivers: PyMySQL, mysqlclient, mysql-connector-python, MariaDB Connector."""

from __future__ import annotations

from contextlib import suppress
from typing import Any, ClassVar

from squeal.drivers.base import Code, Driver


class PyMySQL(Driver):
    """PyMySQL (``mysql+pymysql``, ``mariadb+pymysql``): pure Python."""

    name: ClassVar[str] = "pymysql"
    extra: ClassVar[str] = "mysql"

    def autocommit(self, dbapi: Any) -> None:
        dbapi.autocommit(True)

    def socket(self, dbapi: Any) -> int | None:
        sock = getattr(dbapi, "_sock", None)
        with suppress(Exception):
            return int(sock.fileno())  # type: ignore[union-attr]
        return None

    def connect_timeout(self, seconds: int) -> dict[str, Any]:
        return {"connect_timeout": seconds}


class MySQLdb(PyMySQL):
    """mysqlclient (``mysql+mysqldb``, plain ``mysql://``): the C client library."""

    name: ClassVar[str] = "mysqldb"
    extra: ClassVar[str] = "mysqlclient"

    def socket(self, dbapi: Any) -> int | None:
        with suppress(Exception):
            return int(dbapi.fileno())
        return None


class _Errno(Driver):
    """A driver whose exceptions carry the server's error number as ``errno``."""

    def code(self, error: BaseException) -> Code:
        errno = getattr(error, "errno", None)
        return errno if isinstance(errno, int) and errno > 0 else None


class MySQLConnector(_Errno):
    """mysql-connector-python (``mysql+mysqlconnector``)."""

    name: ClassVar[str] = "mysqlconnector"
    extra: ClassVar[str] = "mysql-connector"

    def socket(self, dbapi: Any) -> int | None:
        with suppress(Exception):
            return int(dbapi._socket.sock.fileno())
        return None

    def rows(self, cursor: Any) -> list[Any]:
        # Its pure-Python protocol returned BLOBs as bytearray before 9.x.
        return [
            tuple(bytes(v) if type(v) is bytearray else v for v in row) for row in cursor.fetchall()
        ]

    def connect_timeout(self, seconds: int) -> dict[str, Any]:
        return {"connection_timeout": seconds}


class MariaDBConnector(_Errno):
    """MariaDB Connector/Python (``mariadb+mariadbconnector``, ``mysql+mariadbconnector``)."""

    name: ClassVar[str] = "mariadbconnector"
    extra: ClassVar[str] = "mariadb"

    def socket(self, dbapi: Any) -> int | None:
        # _get_socket() gives the descriptor; the public .socket wraps it in a socket object
        # that closes it again when collected, breaking a later connection given that number.
        with suppress(Exception):
            return int(dbapi._get_socket())
        return None

    def connect_timeout(self, seconds: int) -> dict[str, Any]:
        return {"connect_timeout": seconds}


__all__ = ["MariaDBConnector", "MySQLConnector", "MySQLdb", "PyMySQL"]
