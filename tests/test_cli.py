"""The ``fdpush`` command line, run as an operator runs it: as a subprocess."""

from __future__ import annotations

import base64
import inspect
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import fdpush
from conftest import DEV_SECRET, create_postgres_database, drop_postgres_database
from fdpush.cli import cli

FDPUSH = Path(sys.executable).parent / "fdpush"
DEV_ENV = {"FDPUSH_AUTH_MODE": "dev", "FDPUSH_AUTH_DEV_SECRET": DEV_SECRET}
MASTER_KEY = base64.b64encode(os.urandom(32)).decode()


def run(
    *args: str, cwd: Path, command: tuple[str, ...] = (str(FDPUSH),), **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``fdpush ARGS`` with only the given FDPUSH_* settings, in ``cwd``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FDPUSH_")}
    return subprocess.run(
        [*command, *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def ec_public_key_file(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / "idp.pem"
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


# --- help and version -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["", *cli.list_commands(click.Context(cli))])
def test_help_everywhere(tmp_path: Path, command: str) -> None:
    """``--help`` works on the group and every command, without any configuration."""
    result = run(*command.split(), "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: fdpush")
    assert result.stderr == ""


def test_the_gateway_command_is_loaded_only_when_it_is_used() -> None:
    """The development gateway's module (its HTTP client, its TLS tooling) stays out of every
    other command and of the processes they start."""
    code = (
        "import sys; from click import Context; from fdpush.cli import cli; "
        "assert 'fdpush.gateway.cli' not in sys.modules; "
        "assert cli.get_command(Context(cli), 'gateway').name == 'gateway'; "
        "assert 'fdpush.gateway.cli' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_group_help_lists_the_commands(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path)
    for name in ("serve", "worker", "migrate", "failed", "token", "demo", "gateway", "--config"):
        assert name in result.stdout


def test_version(tmp_path: Path) -> None:
    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"fdpush, version {fdpush.__version__}"
    assert fdpush.__version__ != "0.0.0+unknown"


def test_python_dash_m(tmp_path: Path) -> None:
    """``python -m fdpush`` is the same command."""
    result = run("--help", cwd=tmp_path, command=(sys.executable, "-m", "fdpush"))
    assert result.returncode == 0
    assert "migrate" in result.stdout


def test_unknown_command(tmp_path: Path) -> None:
    result = run("frobnicate", cwd=tmp_path)
    assert result.returncode == 2
    assert "No such command" in result.stderr


# --- a bad configuration stops serve ----------------------------------------------------------


def assert_one_clear_error(result: subprocess.CompletedProcess[str], *names: str) -> None:
    """Non-zero exit, one line on stderr naming the setting(s), no traceback, nothing served."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0]
    assert "Started server" not in result.stderr


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("FDPUSH_PORT", "eighty"),
        ("FDPUSH_CHANNELS", "a,a"),
        ("FDPUSH_GATEWAY_ALLOWLIST", "https://gateway.test"),
        ("FDPUSH_RATE_LIMIT", "lots"),
        ("FDPUSH_MASTER_KEY", base64.b64encode(b"too short").decode()),
        ("FDPUSH_DATABASE_URL", "mysql://db/fdpush"),
        ("FDPUSH_AUTH_DEV_SECRET", "short"),
    ],
)
def test_bad_setting_stops_serve(tmp_path: Path, setting: str, value: str) -> None:
    result = run("serve", cwd=tmp_path, **{**DEV_ENV, setting: value})
    assert_one_clear_error(result, setting)


def test_jwt_mode_without_a_key_stops_serve(tmp_path: Path) -> None:
    """The default mode is jwt; without a key the message names both ways to give one."""
    result = run("serve", cwd=tmp_path)
    assert_one_clear_error(result, "FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE", "FDPUSH_AUTH_JWKS_FILE")


@pytest.mark.parametrize(
    ("setting", "content"),
    [
        ("FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE", "not a PEM key\n"),
        ("FDPUSH_AUTH_JWKS_FILE", "{not json"),
        ("FDPUSH_AUTH_JWKS_FILE", '{"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]}'),
    ],
)
def test_unusable_key_file_stops_serve(tmp_path: Path, setting: str, content: str) -> None:
    """A key file that exists but holds no usable public key (or a symmetric key) is refused."""
    path = tmp_path / "key"
    path.write_text(content)
    result = run(
        "serve",
        cwd=tmp_path,
        FDPUSH_AUTH_MODE="jwt",
        FDPUSH_MASTER_KEY=MASTER_KEY,
        **{setting: str(path)},
    )
    assert_one_clear_error(result, setting)


def test_master_key_file_readable_by_others_stops_serve(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(os.urandom(32)).decode())
    path.chmod(0o644)
    result = run("serve", cwd=tmp_path, **DEV_ENV, FDPUSH_MASTER_KEY_FILE=str(path))
    assert_one_clear_error(result, "FDPUSH_MASTER_KEY_FILE")


@pytest.mark.parametrize(
    "url",
    ["postgresql://fdpush@127.0.0.1:1/fdpush", "sqlite:///{tmp}/a-file/fdpush.db"],
)
def test_unreachable_database_stops_serve(tmp_path: Path, url: str) -> None:
    """A database URL that leads nowhere is named in one line, not a page of traceback."""
    (tmp_path / "a-file").write_text("not a directory")
    result = run(
        "serve",
        cwd=tmp_path,
        **DEV_ENV,
        FDPUSH_MASTER_KEY=MASTER_KEY,
        FDPUSH_DATABASE_URL=url.format(tmp=tmp_path),
    )
    assert_one_clear_error(result, "FDPUSH_DATABASE_URL")


def test_unreachable_database_stops_worker(tmp_path: Path) -> None:
    """``fdpush worker`` checks and prepares the database in a process of its own: what went
    wrong there comes back as the same one line, and the supervisor never starts."""
    result = run(
        "worker",
        cwd=tmp_path,
        **DEV_ENV,
        FDPUSH_MASTER_KEY=MASTER_KEY,
        FDPUSH_DATABASE_URL="postgresql://fdpush@127.0.0.1:1/fdpush",
    )
    assert_one_clear_error(result, "FDPUSH_DATABASE_URL")
    assert "supervising" not in result.stderr


@pytest.mark.parametrize("after", [False, True], ids=["before-serve", "after-serve"])
def test_bad_setting_in_config_file_stops_serve(tmp_path: Path, after: bool) -> None:
    """``--config FILE`` (before or after the command) is read like the environment, and named
    errors work the same."""
    config = tmp_path / "fdpush.env"
    config.write_text(f"FDPUSH_AUTH_MODE=dev\nFDPUSH_AUTH_DEV_SECRET={DEV_SECRET}\nFDPUSH_PORT=x\n")
    where = ("serve", "--config", str(config)) if after else ("--config", str(config), "serve")
    result = run(*where, cwd=tmp_path)
    assert_one_clear_error(result, "FDPUSH_PORT")


def test_missing_config_file(tmp_path: Path) -> None:
    result = run("--config", str(tmp_path / "missing.env"), "serve", cwd=tmp_path)
    assert result.returncode == 2
    assert "missing.env" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("setting", ["FDPUSH_PORT", "FDPUSH_INTERNAL_PORT"])
def test_busy_port_stops_serve_before_anything_starts(tmp_path: Path, setting: str) -> None:
    """A port in use is one line naming the setting, before migrations, key or worker."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            other = free.getsockname()[1]
        ports = {"FDPUSH_PORT": str(other), "FDPUSH_INTERNAL_PORT": str(other + 1)}
        ports[setting] = str(busy)
        result = run("serve", cwd=tmp_path, FDPUSH_HOST="127.0.0.1", **DEV_ENV, **ports)
    assert_one_clear_error(result, setting, f"127.0.0.1:{busy}", "in use")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no database, no master key


# --- migrate ----------------------------------------------------------------------------------


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database (its file does not exist yet on SQLite)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'fdpush.db'}"
        return
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


def tables(url: str) -> set[str]:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return {row[0] for row in rows}
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in rows}


def test_migrate_a_fresh_database_twice(tmp_path: Path, database_url: str) -> None:
    """``fdpush migrate`` creates the schema; running it again changes nothing and succeeds."""
    env = {**DEV_ENV, "FDPUSH_DATABASE_URL": database_url}
    first = run("migrate", cwd=tmp_path, **env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("database schema is at revision ")
    revision = first.stdout.split()[-1]
    assert revision != "None"
    assert {"pushers", "pusher_keys", "channel_states", "audit_log", "alembic_version"} <= tables(
        database_url
    )

    second = run("migrate", cwd=tmp_path, **env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split()[-1] == revision
    assert "Traceback" not in second.stderr


def test_migrate_needs_the_master_key_but_no_authentication_settings(tmp_path: Path) -> None:
    """A migration job touches only the database, but its data steps need the master key: the
    default jwt mode without the identity provider's keys is fine, without a master key not
    (one line naming it, and nothing created)."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    result = run("migrate", cwd=tmp_path, FDPUSH_DATABASE_URL=url, FDPUSH_MASTER_KEY=MASTER_KEY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("database schema is at revision ")
    keyless = run("migrate", cwd=tmp_path, FDPUSH_DATABASE_URL=f"sqlite:///{tmp_path / 'n.db'}")
    assert keyless.returncode != 0
    assert "FDPUSH_MASTER_KEY" in keyless.stderr and "Traceback" not in keyless.stderr
    assert not (tmp_path / "n.db").exists()


def test_migrate_an_unreachable_database(tmp_path: Path) -> None:
    result = run(
        "migrate",
        cwd=tmp_path,
        **DEV_ENV,
        FDPUSH_MASTER_KEY=MASTER_KEY,
        FDPUSH_DATABASE_URL="postgresql://fdpush@127.0.0.1:1/fdpush",
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "migration failed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- token ------------------------------------------------------------------------------------


def test_token_verifies_with_the_dev_secret(tmp_path: Path) -> None:
    """``fdpush token USER`` prints one HS256 token for USER, signed with the dev secret."""
    result = run("token", "user-4711", cwd=tmp_path, **DEV_ENV)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, DEV_SECRET, algorithms=["HS256"], options={"require": ["exp"]})
    assert claims["sub"] == "user-4711"
    assert claims["exp"] > time.time() + 3600
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, DEV_SECRET + "x", algorithms=["HS256"])


def test_token_ttl_and_user_claim(tmp_path: Path) -> None:
    """``--ttl`` sets the lifetime; the user id goes into FDPUSH_AUTH_USER_CLAIM."""
    result = run(
        "token", "--ttl", "60", "X123456789", cwd=tmp_path, **DEV_ENV, FDPUSH_AUTH_USER_CLAIM="kvnr"
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), DEV_SECRET, algorithms=["HS256"])
    assert claims["kvnr"] == "X123456789"
    assert claims["exp"] - claims["iat"] == 60


def test_token_refused_outside_dev_mode(tmp_path: Path, ec_public_key_file: Path) -> None:
    """With real (jwt) authentication there is no secret to sign with: no token, an error."""
    result = run(
        "token",
        "user-4711",
        cwd=tmp_path,
        FDPUSH_AUTH_MODE="jwt",
        FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE=str(ec_public_key_file),
        FDPUSH_AUTH_DEV_SECRET=DEV_SECRET,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert "FDPUSH_AUTH_MODE=dev" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_command_list_shows_each_first_paragraph_whole() -> None:
    """Click ends a short help at the first full stop, "(Art." included: ours never cut."""
    from click.testing import CliRunner

    context = click.Context(cli)
    commands = [(name, cli.get_command(context, name)) for name in cli.list_commands(context)]
    groups = [([], cli)] + [
        ([name], command) for name, command in commands if isinstance(command, click.Group)
    ]
    for args, group in groups:
        listing = " ".join(CliRunner().invoke(cli, [*args, "--help"]).output.split())
        for command in group.commands.values():
            first = " ".join(inspect.cleandoc(command.help or "").split("\n\n")[0].split())
            assert first in listing, (args, first)
    assert "(Art. 15) or erase (Art. 17) one user's data." in " ".join(
        CliRunner().invoke(cli, ["--help"]).output.split()
    )
