"""T13: the migrator role of docs/security.md migrates, and a role without its rights is refused.

Each test gets a private database (``sq_mig_<hex>``), so the migrator's rights are exactly the
documented ones on that database's ``public`` schema (PostgreSQL) or on the database (MariaDB)
and nothing the shared test database happens to grant. The producer and consumer GRANTs come
from ``test_privileges`` so both tests follow one list.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from squeal import DatabaseError, Queue, migrate
from tests.reliability.helpers import REPO
from tests.reliability.test_privileges import GRANTS, SETUP, do_their_part

#: The migrator lines of docs/security.md, with ``public``/``app`` as the private database.
MIGRATOR = {
    "postgresql": [
        "CREATE ROLE {role} LOGIN",
        "GRANT CREATE, USAGE ON SCHEMA public TO {role}",
    ],
    "mysql": [
        "CREATE USER '{role}'@'127.0.0.1'",
        "GRANT CREATE, ALTER, DROP, INDEX, SELECT, INSERT, UPDATE, DELETE ON {database}.* "
        "TO '{role}'@'127.0.0.1'",
    ],
}
#: A role that may connect and read, but not create tables.
READER = {
    "postgresql": ["CREATE ROLE {role} LOGIN", "GRANT USAGE ON SCHEMA public TO {role}"],
    "mysql": [
        "CREATE USER '{role}'@'127.0.0.1'",
        "GRANT SELECT ON {database}.* TO '{role}'@'127.0.0.1'",
    ],
}
DROP_ROLE = {"postgresql": "DROP ROLE IF EXISTS {role}", "mysql": "DROP USER '{role}'@'127.0.0.1'"}
DROP_DATABASE = {
    "postgresql": "DROP DATABASE IF EXISTS {database} WITH (FORCE)",
    "mysql": "DROP DATABASE IF EXISTS {database}",
}


class PrivateDatabase:
    """A fresh database; roles made in it connect as themselves, with no password."""

    def __init__(self, db: str, db_url: str, admin: sa.Engine, name: str) -> None:
        self.db = db
        self.name = name
        self.url = sa.make_url(db_url).set(database=name)
        self.admin = sa.create_engine(self.url)
        self.roles: list[str] = []
        self.engines: list[sa.Engine] = []

    def role(self, kind: str, statements: list[str], **fmt: str) -> sa.Engine:
        """Create a role with ``statements`` (run as the administrator); its engine."""
        role = f"sq_{kind}_{secrets.token_hex(3)}"
        self.roles.append(role)
        with self.admin.begin() as conn:
            for sql in statements:
                conn.exec_driver_sql(sql.format(role=role, database=self.name, **fmt))
        eng = sa.create_engine(self.role_url(role))
        self.engines.append(eng)
        return eng

    def role_url(self, role: str) -> sa.URL:
        return self.url.set(username=role, password=None)

    def tables(self, prefix: str) -> list[str]:
        with self.admin.connect() as conn:
            return sorted(t for t in sa.inspect(conn).get_table_names() if t.startswith(prefix))


@pytest.fixture
def private_db(db: str, db_url: str, engine: sa.Engine) -> Iterator[PrivateDatabase]:
    name = f"sq_mig_{secrets.token_hex(4)}"
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    with autocommit.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    private = PrivateDatabase(db, db_url, engine, name)
    try:
        yield private
    finally:
        for eng in [*private.engines, private.admin]:
            eng.dispose()
        with autocommit.connect() as conn:
            conn.exec_driver_sql(DROP_DATABASE[db].format(database=name))
            for role in private.roles:
                conn.exec_driver_sql(DROP_ROLE[db].format(role=role))


def _cli_migrate(url: sa.URL, prefix: str, *action: str) -> subprocess.CompletedProcess[str]:
    argv = ["migrate", "--url", url.render_as_string(hide_password=False), "--prefix", prefix]
    return subprocess.run(
        [sys.executable, "-m", "squeal.cli", *argv, *action],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.dialects("postgresql", "mysql")
def test_migrator_role_migrates_up_and_down_and_the_other_roles_work_on_its_tables(
    db: str, private_db: PrivateDatabase, prefix: str
) -> None:
    """T13: with only the documented migrator GRANTs, the Python API and ``squeal migrate``
    upgrade, producer and consumer roles then work on its tables, and ``downgrade base`` drops
    them again."""
    migrator = private_db.role("migrator", MIGRATOR[db])
    migrate.upgrade(migrator, prefix=prefix, revision="squeal_0001")
    assert migrate.current(migrator, prefix=prefix) == "squeal_0001"
    done = _cli_migrate(migrator.url, prefix)
    assert done.returncode == 0, done.stderr
    assert migrate.current(migrator, prefix=prefix) == migrate.head()
    assert migrate.schema_diff(migrator, prefix=prefix) == []

    def role_queue(kind: str) -> Queue:
        eng = private_db.role(kind, SETUP[db] + GRANTS[(db, kind)], prefix=prefix)
        return Queue(eng, prefix=prefix)

    producer = role_queue("producer")
    consumer = role_queue("consumer")
    do_their_part(producer, consumer)
    producer.close()
    consumer.close()

    migrate.downgrade(migrator, prefix=prefix, revision="base")
    assert migrate.current(migrator, prefix=prefix) is None
    assert private_db.tables(prefix) == [f"{prefix}_alembic_version"]
    Queue(migrator, prefix=prefix).destroy()
    assert private_db.tables(prefix) == []


@pytest.mark.dialects("postgresql", "mysql")
def test_role_without_migrator_rights_gets_a_clean_squeal_error(
    db: str, private_db: PrivateDatabase, prefix: str
) -> None:
    """T13: ``Queue.create()`` raises DatabaseError and ``squeal migrate`` exits 1 with one
    line, no traceback; nothing is left half-created."""
    reader = private_db.role("reader", READER[db])
    q = Queue(reader, prefix=prefix)
    with pytest.raises(DatabaseError) as raised:
        q.create()
    assert "create()" in str(raised.value)
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None
    q.close()
    refused = _cli_migrate(reader.url, prefix)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith("squeal: "), refused.stderr
    assert private_db.tables(prefix) == []
