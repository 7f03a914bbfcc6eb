"""The Dockerfile: linted with hadolint, and its install and start steps run for real.

No container engine runs here, so the image is checked in two halves that together cover what
`docker build` and `docker run` would do: hadolint reads the file as Docker would, and the
build stage's ``RUN`` steps plus the final stage's ``ENV`` and ``ENTRYPOINT`` are carried out
in a fresh virtualenv. Whatever the Dockerfile says is what is run, so the two cannot drift.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions (keyword upper case, continuation lines joined)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        else:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def parse_env(args: str) -> dict[str, str]:
    """``ENV a=b c=d`` (the only form the Dockerfile uses) → {a: b, c: d}."""
    return dict(item.split("=", 1) for item in shlex.split(args))


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dockerfile_passes_hadolint() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter is really looking: an unpinned base and a root user are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install fdpush\nUSER root\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image
    assert "DL3002" in result.stdout  # last USER is root


def test_image_shape() -> None:
    """Two stages on one pinned base; the final one runs as a numeric non-root user."""
    build, final = parse_dockerfile(DOCKERFILE.read_text())
    assert build.base == final.base
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", final.base), final.base
    user = final.all("USER")[-1]
    assert re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", user), user
    assert final.all("ENTRYPOINT") == ['["fdpush"]']
    assert final.all("CMD") == ['["serve"]']


def test_install_and_start_as_the_image_does(tmp_path: Path) -> None:
    """The build stage's COPY and RUN steps, then ``fdpush --help`` and ``fdpush migrate``.

    ``/opt/fdpush`` (the image's virtualenv) becomes a temporary folder; the build context is
    only what the Dockerfile copies, so a file it forgets to copy breaks this test too.
    """
    build, final = parse_dockerfile(DOCKERFILE.read_text())
    venv = tmp_path / "opt-fdpush"
    context = tmp_path / "src"
    context.mkdir()
    for args in build.all("COPY"):
        *sources, dest = args.split()
        for source in sources:
            target = context / dest.removeprefix("./") if dest not in ("./", ".") else context
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(
                    origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
                )
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)
    build_env = {k: v for k, v in os.environ.items() if not k.startswith(("FDPUSH_", "VIRTUAL"))}
    for args in build.all("ENV"):
        build_env.update(parse_env(args))
    # The base image's `python` is the interpreter under these tests (outside their virtualenv).
    build_env["PATH"] = f"{Path(sys.base_prefix) / 'bin'}:{build_env['PATH']}"
    python = Path(sys.base_prefix) / "bin" / "python3"
    for step in build.all("RUN"):
        command = step.replace("/opt/fdpush", str(venv))
        command = command.replace("python -m venv", f"{python} -m venv")
        done = subprocess.run(
            ["sh", "-c", command],
            cwd=context,
            env=build_env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"RUN {step}\n{done.stdout}\n{done.stderr}"

    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("FDPUSH_", "VIRTUAL"))}
    for args in final.all("ENV"):
        for key, value in parse_env(args).items():
            run_env[key] = value.replace("/opt/fdpush", str(venv)).replace(
                "$PATH", os.environ["PATH"]
            )
    entrypoint = [part.strip('" ') for part in final.all("ENTRYPOINT")[-1].strip("[]").split(",")]
    executable = shutil.which(entrypoint[0], path=run_env["PATH"])
    assert executable == str(venv / "bin" / "fdpush"), executable
    workdir = tmp_path / "var-lib-fdpush"
    workdir.mkdir()

    def start(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [executable, *entrypoint[1:], *args],
            cwd=workdir,
            env={**run_env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    shown = start("--help")
    assert shown.returncode == 0, shown.stderr
    for command in ("serve", "worker", "migrate", "gateway"):
        assert command in shown.stdout
    # With the master key, as the migration job has it: its data steps need it.
    migrated = start("migrate", FDPUSH_MASTER_KEY=base64.b64encode(os.urandom(32)).decode())
    assert migrated.returncode == 0, migrated.stderr
    assert "database schema is at revision" in migrated.stdout
    with sqlite3.connect(workdir / "fdpush.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "alembic_version" in tables
