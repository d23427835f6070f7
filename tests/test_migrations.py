"""squeal's Alembic migrations: every way to run them, on every database.

Ways covered: ``squeal.migrate`` from Python, ``Queue.create``/``destroy``, the plain ``alembic``
command (isolated: squeal's own script_location; integrated: the application's environment with
squeal's ``version_locations``), and the ``squeal migrate`` console script in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import squeal
from squeal import Queue, migrate
from squeal.recorded import Fit, fit
from squeal.schema import SCHEMA_REVISION, build_tables
from tests import needs

SUBPROCESS_TIMEOUT = 120
APP_REVISION = "a1b2c3d4e5f6"


# -- helpers --------------------------------------------------------------------------------------


def prefix_tables(engine: sa.Engine, prefix: str) -> set[str]:
    """The tables in the database whose name starts with ``prefix_``."""
    return {t for t in sa.inspect(engine).get_table_names() if t.startswith(f"{prefix}_")}


def squeal_tables(prefix: str) -> set[str]:
    """The tables the head revision creates for ``prefix`` (its version table aside)."""
    return set(build_tables(prefix).metadata.tables)


def all_tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def drop_prefix_tables(engine: sa.Engine, prefix: str) -> None:
    metadata = sa.MetaData()
    metadata.reflect(engine, only=lambda name, _meta: name.startswith(f"{prefix}_"))
    metadata.drop_all(engine)


def versions_in(engine: sa.Engine, table: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT version_num FROM {table}")).scalars().all()
    return sorted(rows)


def subprocess_env() -> dict[str, str]:
    """This environment without SQUEAL_URL, so each run states its database explicitly."""
    return {k: v for k, v in os.environ.items() if k != "SQUEAL_URL"}


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env=env if env is not None else subprocess_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


def ran(result: subprocess.CompletedProcess[str]) -> str:
    """Everything a process printed, for assertion messages."""
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def compare_with_schema(engine: sa.Engine, prefix: str) -> list[Any]:
    """What ``alembic revision --autogenerate`` would change to reach schema.py's tables."""
    return migrate.schema_diff(engine, prefix=prefix)


def write_alembic_ini(path: Path, **options: str) -> Path:
    lines = ["[alembic]", "path_separator = os"]
    lines += [f"{key} = {value.replace('%', '%%')}" for key, value in options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def drop_tables(engine: sa.Engine, prefix: str) -> Iterator[None]:
    """Drop every table of this test's prefix afterwards, whatever state the test left."""
    yield
    drop_prefix_tables(engine, prefix)


@pytest.fixture(params=["python -m squeal.cli", "squeal script"])
def squeal_cmd(request: pytest.FixtureRequest) -> list[str]:
    """The ``squeal`` command: as a module, and as the console script pip installed."""
    if request.param == "python -m squeal.cli":
        return [sys.executable, "-m", "squeal.cli"]
    beside = Path(sys.executable).parent / "squeal"
    script = str(beside) if beside.is_file() else shutil.which("squeal")
    if script is None:
        needs.unavailable("the squeal console script is not installed: pip install -e .")
    return [script]


# -- the revisions --------------------------------------------------------------------------------


def test_migrations_have_one_head_and_it_is_the_schema_revision() -> None:
    heads = ScriptDirectory.from_config(migrate.config()).get_heads()
    assert heads == [SCHEMA_REVISION]
    assert migrate.head() == SCHEMA_REVISION


def test_every_revision_carries_the_squeal_branch_label() -> None:
    script = ScriptDirectory.from_config(migrate.config())
    revisions = list(script.walk_revisions())
    assert revisions
    assert [r.revision for r in revisions if migrate.BRANCH_LABEL not in r.branch_labels] == []


# -- squeal.migrate from Python -------------------------------------------------------------------


@pytest.mark.usefixtures("drop_tables")
def test_upgrade_downgrade_to_base_with_messages_then_upgrade_again(
    engine: sa.Engine, prefix: str
) -> None:
    assert migrate.current(engine, prefix=prefix) is None

    migrate.upgrade(engine, prefix=prefix)
    assert migrate.current(engine, prefix=prefix) == SCHEMA_REVISION
    assert prefix_tables(engine, prefix) == squeal_tables(prefix) | {f"{prefix}_alembic_version"}
    q = Queue(engine, prefix=prefix)
    for n in range(3):
        q.put(b"before %d" % n, "t")
    assert q.size("t") == 3

    migrate.downgrade(engine, prefix=prefix, revision="base")
    assert migrate.current(engine, prefix=prefix) is None
    assert prefix_tables(engine, prefix) == {f"{prefix}_alembic_version"}

    migrate.upgrade(engine, prefix=prefix)
    assert migrate.current(engine, prefix=prefix) == SCHEMA_REVISION
    again = Queue(engine, prefix=prefix)
    assert again.size("t") == 0
    again.put(b"after", "t")
    msg = again.get("t")
    assert msg is not None
    assert msg.payload == b"after"
    msg.ack()


@pytest.mark.usefixtures("drop_tables")
def test_down_and_up_across_squeal_0008_keeps_messages_and_dedup_keys_and_reuses_no_id(
    engine: sa.Engine, prefix: str
) -> None:
    """squeal_0008 rebuilds SQLite's message table (elsewhere it changes nothing)."""
    migrate.upgrade(engine, prefix=prefix)
    q = Queue(engine, prefix=prefix)
    q.put(b"later", "t", delay=3600)
    ids = [q.put(b"%d" % n, "t", dedup_key=f"k{n}") for n in range(5)]
    taken = q.get_many("t", 5)
    q.ack_many([m for m in taken if m.payload in (b"3", b"4")])  # the highest ids: deleted
    for m in taken:
        if m.payload not in (b"3", b"4"):
            m.release()
    q.close()

    migrate.downgrade(engine, prefix=prefix, revision="squeal_0007_compat_0002")
    migrate.upgrade(engine, prefix=prefix)
    assert compare_with_schema(engine, prefix) == []
    again = Queue(engine, prefix=prefix)
    assert again.put(b"copy", "t", dedup_key="k0") is None  # a live message's key still holds
    new = again.put(b"new", "t")
    assert new is not None
    assert new > max(i for i in ids if i is not None)  # after the ids deleted before
    got = again.get_many("t", 10)
    assert sorted(m.payload for m in got) == [b"0", b"1", b"2", b"new"]
    again.ack_many(got)
    assert again.stats()["t"].delayed == 1  # the delayed one kept its time
    again.close()


def test_version_table_is_prefixed_and_the_application_alembic_version_is_untouched(
    private_engine: sa.Engine, prefix: str
) -> None:
    with private_engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.exec_driver_sql("INSERT INTO alembic_version (version_num) VALUES ('app_rev_1')")

    migrate.upgrade(private_engine, prefix=prefix)
    assert versions_in(private_engine, f"{prefix}_alembic_version") == [SCHEMA_REVISION]
    assert versions_in(private_engine, "alembic_version") == ["app_rev_1"]
    Queue(private_engine, prefix=prefix).put(b"x", "t")
    migrate.downgrade(private_engine, prefix=prefix, revision="base")
    migrate.upgrade(private_engine, prefix=prefix)
    Queue(private_engine, prefix=prefix).destroy()

    assert versions_in(private_engine, "alembic_version") == ["app_rev_1"]
    assert all_tables(private_engine) == {"alembic_version"}


# -- the migrated schema is schema.py -------------------------------------------------------------


@pytest.mark.usefixtures("drop_tables")
def test_migrated_schema_equals_schema_py(engine: sa.Engine, prefix: str) -> None:
    migrate.upgrade(engine, prefix=prefix)
    assert compare_with_schema(engine, prefix) == []


@pytest.mark.usefixtures("drop_tables")
def test_schema_comparison_reports_a_changed_type_nullability_and_a_missing_index(
    engine: sa.Engine, prefix: str
) -> None:
    """The comparison above is not blind: drift in the migrated tables shows up."""
    migrate.upgrade(engine, prefix=prefix)
    with engine.begin() as conn:
        op = Operations(MigrationContext.configure(conn))
        with op.batch_alter_table(f"{prefix}_message") as batch:
            batch.alter_column("topic", type_=sa.String(100), existing_nullable=False)
            batch.alter_column("lease_token", existing_type=sa.BigInteger(), nullable=False)
        op.drop_index(f"{prefix}_message_due_ix", table_name=f"{prefix}_message")

    diffs = compare_with_schema(engine, prefix)
    flat = [d for group in diffs for d in (group if isinstance(group, list) else [group])]
    found = {(d[0], d[3] if d[0].startswith("modify") else d[1].name) for d in flat}
    assert found == {
        ("modify_type", "topic"),
        ("modify_nullable", "lease_token"),
        ("add_index", f"{prefix}_message_due_ix"),
    }


# -- Queue.create / destroy and the schema check --------------------------------------------------


@pytest.mark.usefixtures("drop_tables")
def test_create_then_destroy_leaves_no_table_of_the_prefix(engine: sa.Engine, prefix: str) -> None:
    q = Queue(engine, prefix=prefix)
    q.create()
    assert prefix_tables(engine, prefix) == squeal_tables(prefix) | {f"{prefix}_alembic_version"}
    q.put(b"x", "t")
    q.destroy()
    assert prefix_tables(engine, prefix) == set()


def test_threads_of_one_process_migrating_two_prefixes_at_once_both_succeed(
    engine: sa.Engine, prefix: str
) -> None:
    # Alembic's context is process-global: before squeal ran one command at a time, two
    # threads ran in each other's context (KeyError: 'script').
    prefixes = [f"{prefix}a", f"{prefix}b", f"{prefix}c"]
    failures: list[BaseException] = []

    def create(name: str) -> None:
        try:
            Queue(engine, prefix=name).create()
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=create, args=(name,)) for name in prefixes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert failures == []
        for name in prefixes:
            assert migrate.current(engine, prefix=name) == SCHEMA_REVISION
    finally:
        for name in prefixes:
            Queue(engine, prefix=name).destroy()


@pytest.mark.usefixtures("drop_tables")
def test_queue_on_missing_tables_raises_schema_missing_naming_squeal_migrate(
    engine: sa.Engine, prefix: str
) -> None:
    q = Queue(engine, prefix=prefix)
    with pytest.raises(squeal.SchemaMissing, match="squeal migrate") as put_error:
        q.put(b"x", "t")
    assert put_error.value.command.startswith("squeal migrate")
    assert f"--prefix {prefix}" in put_error.value.command
    with pytest.raises(squeal.SchemaMissing, match="squeal migrate"):
        q.get("t")
    assert prefix_tables(engine, prefix) == set()


@pytest.mark.usefixtures("drop_tables")
def test_queue_after_downgrade_to_base_raises_schema_missing(
    engine: sa.Engine, prefix: str
) -> None:
    migrate.upgrade(engine, prefix=prefix)
    migrate.downgrade(engine, prefix=prefix, revision="base")  # keeps an empty version table
    with pytest.raises(squeal.SchemaMissing, match="squeal migrate"):
        Queue(engine, prefix=prefix).put(b"x", "t")


@pytest.mark.usefixtures("drop_tables")
def test_queue_on_tables_at_another_revision_raises_schema_out_of_date(
    engine: sa.Engine, prefix: str
) -> None:
    migrate.upgrade(engine, prefix=prefix)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {prefix}_alembic_version SET version_num = '0000'"))
    q = Queue(engine, prefix=prefix)
    with pytest.raises(squeal.SchemaOutOfDate, match="squeal migrate") as error:
        q.put(b"x", "t")
    assert "0000" in str(error.value)
    assert SCHEMA_REVISION in str(error.value)
    with pytest.raises(squeal.SchemaOutOfDate):
        q.get("t")


# -- a rolling upgrade: the previous version's workers on a later version's tables ----------------

LATER_REVISION_SCRIPT = """\
\"\"\"A later squeal's revision (written by tests/test_migrations.py): adds a table.\"\"\"

import sqlalchemy as sa
from alembic import op

from squeal.migrate import migration_prefix, migration_schema

revision = {revision!r}
down_revision = {down_revision!r}
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        f"{{migration_prefix()}}_later",
        sa.Column("id", sa.Integer(), primary_key=True),
        schema=migration_schema(),
    )


def downgrade():
    op.drop_table(f"{{migration_prefix()}}_later", schema=migration_schema())
"""


def later_revision(*, compatible: bool) -> str:
    """The id the next revision after this squeal's head would have: ``squeal_NNNN``, or
    ``squeal_NNNN_compat_MMMM`` when it only adds, so this squeal's code still runs on it."""
    number = int(SCHEMA_REVISION.removeprefix("squeal_")[:4])
    later = f"squeal_{number + 1:04d}"
    return f"{later}_compat_{number:04d}" if compatible else later


@pytest.fixture
def migrate_as_later_squeal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[sa.Engine, str, str], None]:
    """Migrate as the next version of squeal would: its migrations are this version's, plus
    one revision. What runs afterwards is this version: the old workers of a rolling upgrade."""

    def migrate_as_later(engine: sa.Engine, prefix: str, revision: str) -> None:
        folder = tmp_path / "later_migrations"
        shutil.copytree(
            migrate.script_location(), folder, ignore=shutil.ignore_patterns("__pycache__")
        )
        script = LATER_REVISION_SCRIPT.format(revision=revision, down_revision=SCHEMA_REVISION)
        (folder / "versions" / f"{revision}_later.py").write_text(script)
        with monkeypatch.context() as later:
            later.setattr(migrate, "script_location", lambda: folder)
            assert migrate.head() == revision
            migrate.upgrade(engine, prefix=prefix)

    return migrate_as_later


@pytest.mark.usefixtures("drop_tables")
def test_old_workers_keep_running_and_restart_on_a_later_compatible_revision(
    engine: sa.Engine, prefix: str, migrate_as_later_squeal: Callable[[sa.Engine, str, str], None]
) -> None:
    later = later_revision(compatible=True)
    migrate.upgrade(engine, prefix=prefix)
    running = Queue(engine, prefix=prefix)
    running.put(b"before", "t")

    migrate_as_later_squeal(engine, prefix, later)
    assert f"{prefix}_later" in prefix_tables(engine, prefix)
    assert migrate.current(engine, prefix=prefix) == later

    # A worker that was running goes on; one of the same (old) version restarting starts.
    message = running.get("t")
    assert message is not None
    assert message.payload == b"before"
    message.ack()
    restarted = Queue(engine, prefix=prefix)
    restarted.put(b"after", "t")
    again = restarted.get("t")
    assert again is not None
    assert again.payload == b"after"
    again.ack()
    # Its entrypoint's `squeal migrate` finds nothing to do and changes nothing.
    assert migrate.upgrade(engine, prefix=prefix) == later
    assert migrate.current(engine, prefix=prefix) == later
    result = run(
        [
            sys.executable,
            "-m",
            "squeal.cli",
            "migrate",
            "--url",
            str(engine.url.render_as_string(hide_password=False)),
            "--prefix",
            prefix,
        ],
        cwd=Path.cwd(),
    )
    assert result.returncode == 0, ran(result)
    assert f"already at {later} (a later squeal's revision, which this squeal" in result.stdout
    # Only the squeal that migrated the tables may take them down again.
    with pytest.raises(squeal.SchemaOutOfDate, match="squeal version that migrated them"):
        migrate.downgrade(engine, prefix=prefix)


@pytest.mark.usefixtures("drop_tables")
def test_old_code_on_a_later_revision_not_marked_compatible_stops_with_advice(
    engine: sa.Engine, prefix: str, migrate_as_later_squeal: Callable[[sa.Engine, str, str], None]
) -> None:
    later = later_revision(compatible=False)
    migrate.upgrade(engine, prefix=prefix)
    migrate_as_later_squeal(engine, prefix, later)
    q = Queue(engine, prefix=prefix)
    with pytest.raises(squeal.SchemaOutOfDate, match="newer than this squeal") as error:
        q.put(b"x", "t")
    assert later in str(error.value)
    assert "squeal migrate" not in str(error.value)
    with pytest.raises(squeal.SchemaOutOfDate, match="not marked compatible"):
        migrate.upgrade(engine, prefix=prefix)


@pytest.mark.parametrize(
    ("found", "fits"),
    [
        (("squeal_0002",), Fit.CURRENT),
        (("squeal_0001",), Fit.BEHIND),
        ((), Fit.BEHIND),
        (("squeal_0002", "squeal_0001"), Fit.BEHIND),
        (("0000",), Fit.BEHIND),
        (("squeal_0003_compat_0002",), Fit.COMPATIBLE),
        (("squeal_0004_compat_0001",), Fit.COMPATIBLE),
        (("squeal_0004_compat_0003",), Fit.AHEAD),
        (("squeal_0003",), Fit.AHEAD),
        (("squeal_0002_compat_0001",), Fit.BEHIND),
    ],
)
def test_which_revisions_code_at_squeal_0002_runs_on(found: tuple[str, ...], fits: Fit) -> None:
    assert fit(found, "squeal_0002") is fits


@pytest.mark.usefixtures("drop_tables")
def test_two_prefixes_in_one_database_are_independent(engine: sa.Engine, prefix: str) -> None:
    other = f"{prefix}b"
    try:
        migrate.upgrade(engine, prefix=prefix)
        migrate.upgrade(engine, prefix=other)
        Queue(engine, prefix=prefix).put(b"first", "t")
        Queue(engine, prefix=other).put(b"second", "t")
        assert Queue(engine, prefix=prefix).size("t") == 1

        migrate.downgrade(engine, prefix=prefix, revision="base")
        assert migrate.current(engine, prefix=prefix) is None
        assert migrate.current(engine, prefix=other) == SCHEMA_REVISION
        msg = Queue(engine, prefix=other).get("t")
        assert msg is not None
        assert msg.payload == b"second"
        msg.ack()
    finally:
        drop_prefix_tables(engine, other)


# -- the plain alembic command --------------------------------------------------------------------


@pytest.mark.usefixtures("drop_tables")
def test_alembic_command_migrates_with_squeal_script_location_and_prefix_option(
    engine: sa.Engine, db_url: str, prefix: str, tmp_path: Path
) -> None:
    ini = write_alembic_ini(
        tmp_path / "alembic.ini",
        script_location=str(migrate.script_location()),
        **{"sqlalchemy.url": db_url},
    )
    alembic = [sys.executable, "-m", "alembic", "-c", str(ini), "-x", f"squeal_prefix={prefix}"]

    up = run([*alembic, "upgrade", "head"], tmp_path)
    assert up.returncode == 0, ran(up)
    assert migrate.current(engine, prefix=prefix) == SCHEMA_REVISION
    assert compare_with_schema(engine, prefix) == []
    assert "alembic_version" not in all_tables(engine)  # isolated: squeal's own version table

    now = run([*alembic, "current"], tmp_path)
    assert now.returncode == 0, ran(now)
    assert SCHEMA_REVISION in now.stdout

    down = run([*alembic, "downgrade", "base"], tmp_path)
    assert down.returncode == 0, ran(down)
    assert prefix_tables(engine, prefix) == {f"{prefix}_alembic_version"}


APP_ENV_PY = '''
"""An application's own alembic environment (it knows nothing about squeal)."""
import sqlalchemy as sa
from alembic import context

config = context.config
engine = sa.create_engine(config.get_main_option("sqlalchemy.url"), poolclass=sa.pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
'''

APP_REVISION_PY = f'''
"""The application's first table."""
import sqlalchemy as sa
from alembic import op

revision = "{APP_REVISION}"
down_revision = None
branch_labels = ("app",)
depends_on = None


def upgrade():
    op.create_table("app_things", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade():
    op.drop_table("app_things")
'''


@pytest.fixture
def app_alembic(private_url: str, prefix: str, tmp_path: Path) -> Callable[..., Any]:
    """Run the application's alembic, whose version_locations include squeal's revisions."""
    env_dir = tmp_path / "app_migrations"
    (env_dir / "versions").mkdir(parents=True)
    (env_dir / "env.py").write_text(textwrap.dedent(APP_ENV_PY))
    (env_dir / "versions" / f"{APP_REVISION}_things.py").write_text(APP_REVISION_PY)
    ini = write_alembic_ini(
        tmp_path / "alembic.ini",
        script_location=str(env_dir),
        version_locations=os.pathsep.join([str(env_dir / "versions"), migrate.version_locations()]),
        squeal_prefix=prefix,
        **{"sqlalchemy.url": private_url},
    )

    def alembic(*args: str) -> subprocess.CompletedProcess[str]:
        result = run([sys.executable, "-m", "alembic", "-c", str(ini), *args], tmp_path)
        assert result.returncode == 0, ran(result)
        return result

    return alembic


def test_application_alembic_upgrades_the_squeal_branch_then_all_heads(
    app_alembic: Callable[..., subprocess.CompletedProcess[str]],
    private_engine: sa.Engine,
    prefix: str,
) -> None:
    app_alembic("upgrade", f"{migrate.BRANCH_LABEL}@head")
    assert all_tables(private_engine) == {"alembic_version"} | squeal_tables(prefix)
    assert versions_in(private_engine, "alembic_version") == [SCHEMA_REVISION]
    assert compare_with_schema(private_engine, prefix) == []

    app_alembic("upgrade", "heads")
    assert all_tables(private_engine) == {"alembic_version", "app_things"} | squeal_tables(prefix)
    assert versions_in(private_engine, "alembic_version") == sorted([SCHEMA_REVISION, APP_REVISION])
    assert SCHEMA_REVISION in app_alembic("heads").stdout

    app_alembic("downgrade", f"{migrate.BRANCH_LABEL}@base")
    assert all_tables(private_engine) == {"alembic_version", "app_things"}
    assert versions_in(private_engine, "alembic_version") == [APP_REVISION]


def test_queue_works_after_the_application_alembic_upgraded_the_squeal_branch(
    app_alembic: Callable[..., subprocess.CompletedProcess[str]],
    private_engine: sa.Engine,
    prefix: str,
) -> None:
    app_alembic("upgrade", "heads")
    q = Queue(private_engine, prefix=prefix)
    q.put(b"integrated", "t")
    msg = q.get("t")
    assert msg is not None
    assert msg.payload == b"integrated"
    msg.ack()


# -- squeal migrate, the console script -----------------------------------------------------------


@pytest.mark.usefixtures("drop_tables")
def test_squeal_migrate_upgrades_reports_current_and_downgrades_to_base(
    squeal_cmd: list[str], engine: sa.Engine, db_url: str, prefix: str, tmp_path: Path
) -> None:
    target = ["--url", db_url, "--prefix", prefix]

    up = run([*squeal_cmd, "migrate", *target], tmp_path)
    assert up.returncode == 0, ran(up)
    assert f"to {SCHEMA_REVISION}" in up.stdout
    assert migrate.current(engine, prefix=prefix) == SCHEMA_REVISION
    assert compare_with_schema(engine, prefix) == []

    again = run([*squeal_cmd, "migrate", "upgrade", "head", *target], tmp_path)
    assert again.returncode == 0, ran(again)
    assert "already at" in again.stdout

    now = run([*squeal_cmd, "migrate", "current", *target], tmp_path)
    assert now.returncode == 0, ran(now)
    assert now.stdout.split()[0] == SCHEMA_REVISION

    down = run([*squeal_cmd, "migrate", "downgrade", "base", *target], tmp_path)
    assert down.returncode == 0, ran(down)
    assert migrate.current(engine, prefix=prefix) is None
    assert f"{prefix}_message" not in prefix_tables(engine, prefix)

    base = run([*squeal_cmd, "--url", db_url, "--prefix", prefix, "migrate", "current"], tmp_path)
    assert base.returncode == 0, ran(base)
    assert base.stdout.startswith("base")


@pytest.mark.dialects("postgresql")  # trust authentication accepts any password
@pytest.mark.usefixtures("drop_tables")
def test_squeal_migrate_never_prints_the_password_of_the_url(
    engine: sa.Engine, db_url: str, prefix: str, tmp_path: Path
) -> None:
    url = sa.make_url(db_url).set(password="s3cr3tpw").render_as_string(hide_password=False)
    cli = [sys.executable, "-m", "squeal.cli", "--url", url, "--prefix", prefix, "migrate"]
    for args in ([], ["current"], ["sideways", "squeal_0001"], ["downgrade", "base"]):
        result = run([*cli, *args], tmp_path)
        assert "s3cr3tpw" not in result.stdout + result.stderr, ran(result)
        if args in ([], ["downgrade", "base"]):  # these name the database they changed
            assert "postgres:***@" in result.stdout, ran(result)


@pytest.mark.usefixtures("drop_tables")
def test_squeal_migrate_sql_prints_the_ddl_without_creating_tables(
    engine: sa.Engine, db_url: str, prefix: str, tmp_path: Path
) -> None:
    result = run(
        [
            sys.executable,
            "-m",
            "squeal.cli",
            "migrate",
            "--sql",
            "--url",
            db_url,
            "--prefix",
            prefix,
        ],
        tmp_path,
    )
    assert result.returncode == 0, ran(result)
    assert f"CREATE TABLE {prefix}_message" in result.stdout
    assert f"CREATE TABLE {prefix}_alembic_version" in result.stdout
    assert f"CREATE INDEX {prefix}_message_claim_ix" in result.stdout
    assert prefix_tables(engine, prefix) == set()
    if engine.dialect.name == "sqlite":  # the script, run by hand, gives squeal's schema
        script = result.stdout
        assert script.lstrip().startswith("BEGIN;"), script[:200]  # one change (squeal_0008)
        assert script.rstrip().endswith("COMMIT;"), script[-200:]
        target = tmp_path / "by_hand.db"
        with sqlite3.connect(target, isolation_level=None) as by_hand:
            by_hand.executescript(script)
        by_hand.close()
        hand_engine = sa.create_engine(f"sqlite:///{target}")
        try:
            assert compare_with_schema(hand_engine, prefix) == []
            assert migrate.current(hand_engine, prefix=prefix) == SCHEMA_REVISION
        finally:
            hand_engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres:s3cr3tpw@127.0.0.1:1/x",
        "mysql+pymysql://root:s3cr3tpw@127.0.0.1:1/x",
        "sqlite:////nonexistent-squeal-dir/x.db",
    ],
)
def test_squeal_migrate_on_an_unreachable_database_prints_one_line_and_exits_1(
    url: str, tmp_path: Path
) -> None:
    result = run([sys.executable, "-m", "squeal.cli", "migrate", "--url", url], tmp_path)
    assert result.returncode == 1, ran(result)
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, ran(result)
    assert "unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cr3tpw" not in result.stderr


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["migrate", "--prefix", "Bad-Prefix"], "--prefix"),
        (["migrate", "--prefix", "x" * 60], "--prefix"),
        (["migrate", "--url", "not a url"], "--url"),
        (["migrate", "--url", "nosuchdialect://host/db"], "nosuchdialect"),
        (["migrate", "downgrade"], "REVISION"),
        (["migrate", "current", "squeal_0001"], "REVISION"),
        (["migrate", "--sql", "downgrade", "base"], "--sql"),
        (["migrate", "sideways", "squeal_0001"], "sideways"),
    ],
)
def test_squeal_migrate_usage_errors_print_one_line_and_exit_2(
    args: list[str], complaint: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'untouched.db'}"
    result = run([sys.executable, "-m", "squeal.cli", "--url", url, *args], tmp_path)
    assert result.returncode == 2, ran(result)
    assert len(result.stderr.splitlines()) == 1, ran(result)
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "untouched.db").exists()


def test_squeal_without_a_command_prints_usage_and_exits_2(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "squeal.cli"], tmp_path)
    assert result.returncode == 2, ran(result)
    assert "migrate" in result.stderr


def test_squeal_migrate_uses_squeal_url_then_a_sqlite_file_in_the_current_folder(
    tmp_path: Path,
) -> None:
    from_env = tmp_path / "from_env.db"
    env = {**subprocess_env(), "SQUEAL_URL": f"sqlite:///{from_env}"}
    result = run([sys.executable, "-m", "squeal.cli", "migrate"], tmp_path, env)
    assert result.returncode == 0, ran(result)
    assert from_env.exists()
    assert not (tmp_path / "squeal.db").exists()

    result = run([sys.executable, "-m", "squeal.cli", "migrate"], tmp_path)
    assert result.returncode == 0, ran(result)
    default = sa.create_engine(f"sqlite:///{tmp_path / 'squeal.db'}", poolclass=sa.pool.NullPool)
    try:
        assert migrate.current(default, prefix="squeal") == SCHEMA_REVISION
    finally:
        default.dispose()
