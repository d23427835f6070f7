"""The wheel carries squeal's migrations: build it, install it in a fresh venv, migrate SQLite.

Runs once (not per database). Needs PyPI for the isolated build and for the venv's dependencies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from squeal.schema import SCHEMA_REVISION

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 600


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH and no SQUEAL_URL: the venv must find squeal in its own site-packages.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SQUEAL_URL")}
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)], out)
    (built,) = out.glob("squeal-*.whl")
    return built


@pytest.fixture(scope="module")
def venv_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with only the wheel and its dependencies."""
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", str(venv)], venv)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], venv)
    return python


def test_wheel_contains_the_migrations_and_the_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = zf.read(entry_points).decode()
    assert "squeal/_migrations/env.py" in names
    assert "squeal/_migrations/script.py.mako" in names
    versions = {n for n in names if n.startswith("squeal/_migrations/versions/")}
    shipped = {Path(n).name for n in versions}
    source = Path(__file__).parent.parent / "squeal" / "_migrations" / "versions"
    in_repo = {p.name for p in source.glob("*.py")}
    assert in_repo <= shipped, versions
    assert any(n.startswith(f"{SCHEMA_REVISION}_") for n in shipped), versions
    assert "squeal/py.typed" in names
    assert "squeal = squeal.cli:main" in scripts
    # The dashboard's every asset: it works with no internet.
    web = Path(__file__).parent.parent / "squeal" / "web"
    assets = {
        f"squeal/web/{p.relative_to(web).as_posix()}"
        for folder in ("templates", "static")
        for p in (web / folder).iterdir()
    }
    assert assets
    assert assets <= names, assets - names


CHECK_INSTALLED = """
import sys
from pathlib import Path

import sqlalchemy as sa

import squeal
from squeal import Queue, migrate

venv = Path(sys.prefix)
assert Path(squeal.__file__).is_relative_to(venv), squeal.__file__
assert migrate.script_location() == Path(squeal.__file__).parent / "_migrations"
assert migrate.head() == {revision!r}

for name in sys.argv[1:]:
    engine = sa.create_engine(f"sqlite:///{{name}}")
    if name == "by_python.db":
        migrate.upgrade(engine, prefix="squeal")
    assert migrate.current(engine, prefix="squeal") == {revision!r}, name
    q = Queue(engine)
    q.put(b"from " + name.encode(), "t")
    msg = q.get("t")
    assert msg is not None and msg.payload == b"from " + name.encode(), msg
    msg.ack()
    engine.dispose()
print("ok", *sys.argv[1:])
"""


def test_installed_wheel_migrates_sqlite_with_alembic_the_cli_and_python_then_queues(
    venv_python: Path, tmp_path: Path
) -> None:
    bin_dir = venv_python.parent
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        "[alembic]\nscript_location = squeal:_migrations\nsqlalchemy.url = sqlite:///by_alembic.db\n"
    )
    run([str(bin_dir / "alembic"), "-c", str(ini), "upgrade", "head"], tmp_path)
    run([str(bin_dir / "squeal"), "migrate", "--url", "sqlite:///by_cli.db"], tmp_path)

    script = tmp_path / "check_installed.py"
    script.write_text(textwrap.dedent(CHECK_INSTALLED.format(revision=SCHEMA_REVISION)))
    dbs = ["by_alembic.db", "by_cli.db", "by_python.db"]
    result = run([str(venv_python), str(script), *dbs], tmp_path)
    assert result.stdout.split() == ["ok", *dbs]
