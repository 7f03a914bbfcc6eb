"""Configuration as an operator meets it: ``fdpush config``, ``--config`` after the command,
misspelt names, relative paths, and production without a master key (subprocesses)."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import DEV_SECRET
from fdpush.config import example_config
from test_cli import FDPUSH, MASTER_KEY, assert_one_clear_error, run

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "fdpush.env.example"


def test_the_committed_example_is_what_config_example_prints(tmp_path: Path) -> None:
    result = run("config", "example", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == example_config()
    assert EXAMPLE.read_text() == result.stdout, (
        "docs/fdpush.env.example is stale: run  fdpush config example > docs/fdpush.env.example"
    )


def test_config_check_accepts_a_good_configuration(tmp_path: Path) -> None:
    config = tmp_path / "fdpush.env"
    config.write_text(f"FDPUSH_AUTH_MODE=dev\nFDPUSH_AUTH_DEV_SECRET={DEV_SECRET}\n")
    result = run("config", "check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("configuration OK")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fdpush.env"]  # made nothing


def test_config_check_reports_each_problem_on_one_line(tmp_path: Path) -> None:
    config = tmp_path / "fdpush.env"
    config.write_text("FDPUSH_AUTH_MODE=jwt\nFDPUSH_ENCRYPTION=sometimes\n")
    result = run("--config", str(config), "config", "check", cwd=tmp_path, FDPUSH_PROT="1")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0] == (
        "configuration: FDPUSH_PROT (in the environment): not a setting; did you mean FDPUSH_PORT?"
    )
    assert lines[1].startswith("configuration: FDPUSH_ENCRYPTION: Input should be 'required'")
    assert len(lines) == 2
    # fixed values, the next problems show: auth and the master key
    config.write_text("FDPUSH_AUTH_MODE=jwt\n")
    result = run("config", "check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[1].split()[0] for line in lines] == [
        "FDPUSH_AUTH_MODE=jwt",
        "FDPUSH_MASTER_KEY",
    ]
    assert "Traceback" not in result.stderr


def test_config_after_the_command_is_read(tmp_path: Path) -> None:
    """``fdpush serve --config X`` uses X (here: its bad value stops serve)."""
    config = tmp_path / "fdpush.env"
    config.write_text(f"FDPUSH_AUTH_MODE=dev\nFDPUSH_AUTH_DEV_SECRET={DEV_SECRET}\nFDPUSH_PORT=x\n")
    result = run("serve", "--config", str(config), cwd=tmp_path)
    assert_one_clear_error(result, "FDPUSH_PORT")


def test_relative_database_path_follows_the_config_file(tmp_path: Path) -> None:
    """Run from another folder, ``migrate --config`` uses the database beside the file."""
    folder = tmp_path / "etc"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = folder / "fdpush.env"
    config.write_text("FDPUSH_DATABASE_URL=sqlite:///./fdpush.db\n")
    result = run("migrate", "--config", str(config), cwd=elsewhere, FDPUSH_MASTER_KEY=MASTER_KEY)
    assert result.returncode == 0, result.stderr
    assert (folder / "fdpush.db").is_file()
    assert list(elsewhere.iterdir()) == []


def test_a_misspelt_environment_setting_is_reported_at_start_up(tmp_path: Path) -> None:
    result = run(
        "migrate",
        cwd=tmp_path,
        FDPUSH_DATABASE_URL=f"sqlite:///{tmp_path / 'a.db'}",
        FDPUSH_MASTER_KEY=MASTER_KEY,
        FDPUSH_MASTERKEY="x",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "FDPUSH_MASTERKEY (in the environment): not a setting; did you mean FDPUSH_MASTER_KEY?"
        in result.stderr
    )


def test_production_without_a_master_key_refuses_to_start(tmp_path: Path) -> None:
    pem = tmp_path / "idp.pem"
    pem.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    env = {
        "FDPUSH_AUTH_MODE": "jwt",
        "FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE": str(pem),
        "FDPUSH_DATABASE_URL": f"sqlite:///{tmp_path / 'fdpush.db'}",
    }
    for command in ("serve", "worker"):
        result = run(command, cwd=tmp_path, **env)
        assert_one_clear_error(result, "FDPUSH_MASTER_KEY")
        assert "openssl rand -base64 32" in result.stderr
        assert not (tmp_path / "fdpush.master-key").exists()
    # with a key it starts (here: the worker, stopped at once)
    key = base64.b64encode(os.urandom(32)).decode()
    started = start_worker(tmp_path, {**env, "FDPUSH_MASTER_KEY": key})
    assert "FDPUSH_MASTER_KEY" not in started


def start_worker(cwd: Path, env: dict[str, str]) -> str:
    """Start ``fdpush worker``, wait until it says it started, stop it; its stderr."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FDPUSH_")}
    log = cwd / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(FDPUSH), "worker"], env={**clean, **env}, cwd=cwd, stdout=out, stderr=out
        )
        try:
            deadline = time.monotonic() + 30
            while "started" not in log.read_text() and process.poll() is None:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return log.read_text()


def test_worker_on_sqlite_warns(tmp_path: Path) -> None:
    output = start_worker(
        tmp_path,
        {
            "FDPUSH_AUTH_MODE": "dev",
            "FDPUSH_AUTH_DEV_SECRET": DEV_SECRET,
            "FDPUSH_DATABASE_URL": f"sqlite:///{tmp_path / 'fdpush.db'}",
        },
    )
    assert "fdpush worker on SQLite" in output
    assert "run the worker inside `fdpush serve`" in output


@pytest.mark.parametrize("group", [(), ("config",)], ids=["fdpush", "fdpush-config"])
def test_the_command_list_is_never_cut_mid_sentence(tmp_path: Path, group: tuple[str]) -> None:
    result = subprocess.run(
        [str(FDPUSH), *group, "--help"],
        env={**os.environ, "COLUMNS": "80"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    commands = result.stdout.split("Commands:", 1)[1]
    assert "..." not in commands
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    last_words = {(): "FDPUSH_MIGRATE_ON_START=0).", ("config",): "FDPUSH_*=value file."}
    assert last_words[group] in " ".join(commands.split())


def test_the_sqlite_file_and_its_folder_are_owner_only(tmp_path: Path) -> None:
    """Even with a permissive umask (022) the database, its journal and folder are private."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FDPUSH_")}
    database = tmp_path / "data" / "fdpush.db"
    done = subprocess.run(
        [str(FDPUSH), "migrate"],
        env={
            **clean,
            "FDPUSH_DATABASE_URL": f"sqlite:///{database}",
            "FDPUSH_MASTER_KEY": MASTER_KEY,
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        umask=0o022,
    )
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(database.parent.stat().st_mode) == 0o700
    files = list(database.parent.glob("fdpush.db*"))
    assert database in files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
