"""The ``fdpush`` command: serve, worker, migrate, failed, audit, token, config, demo, and the
development ``gateway``."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from fdpush import __version__
from fdpush.config import (
    ConfigError,
    Settings,
    config_problems,
    example_config,
    load_settings,
    resolve_master_key,
    unknown_settings,
)
from fdpush.logs import configure_logging

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from fdpush.domain.keys import KeyVault
    from fdpush.services import Services

__all__ = ["config_option", "main"]


class _Context:
    def __init__(self, config_file: Path | None) -> None:
        self.config_file = config_file

    def settings(self, *, for_serving: bool = True) -> Settings:
        try:
            settings = load_settings(self.config_file, for_serving=for_serving)
        except ConfigError as exc:
            raise click.ClickException(f"configuration: {exc}") from None
        configure_logging(settings.log_level, settings.log_format)
        for problem in unknown_settings(os.environ):  # a misspelt name is otherwise ignored
            logging.getLogger("fdpush.config").warning("%s", problem)
        return settings


_F = TypeVar("_F", bound=Callable[..., Any] | click.Command)
_T = TypeVar("_T")


class _Commands(click.Group):
    """Lists each command with its whole first sentence, wrapped, never cut off mid-sentence.

    ``lazy`` names commands by module: the module is imported only when the command is looked
    up (run, or listed in ``--help``), so the other commands, and every serving process they
    start, do not carry it.
    """

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self._lazy:
            module = importlib.import_module(self._lazy[cmd_name])
            self.add_command(getattr(module, cmd_name))
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        commands = [self.get_command(ctx, name) for name in self.list_commands(ctx)]
        rows = [
            (command.name or "", _summary(command))
            for command in commands
            if command is not None and not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _summary(command: click.Command) -> str:
    """A command's first paragraph, whole: click's own short help ends at the first full stop,
    also one of an abbreviation ("Art. 15")."""
    if command.short_help:
        return command.short_help
    first = inspect.cleandoc(command.help or "").split("\n\n", 1)[0]
    return " ".join(first.split())


_CONFIG_HELP = (
    "A file of FDPUSH_*=value lines (the environment wins over it). Also: FDPUSH_CONFIG_FILE."
)


def _remember_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(_Context).config_file = value


def config_option(command: _F) -> _F:
    """``--config FILE`` accepted after the subcommand too (``fdpush serve --config X``)."""
    return click.option(
        "--config",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        expose_value=False,
        callback=_remember_config,
        help=_CONFIG_HELP,
    )(command)


@click.group(
    cls=_Commands,
    # The development gateway's module brings its HTTP client and TLS tooling: about 14 MB
    # that no serving process needs.
    lazy={"gateway": "fdpush.gateway.cli"},
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="fdpush")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=_CONFIG_HELP,
)
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None) -> None:
    """fdpush: the push part of a Fachdienst (Client-FD Push API, encrypted delivery).

    Every setting is an FDPUSH_* environment variable: `fdpush config example` lists them,
    `fdpush config check` checks them.
    """
    ctx.obj = _Context(config_file)


@cli.command()
@click.option("--host", help="Listen address (default FDPUSH_HOST, 127.0.0.1).")
@click.option("--port", type=int, help="Listen port (default FDPUSH_PORT, 8080).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="API processes on the one port (default FDPUSH_WORKERS, 1; above 1 needs PostgreSQL).",
)
@click.option("--no-access-log", is_flag=True, help="Do not log one line per request.")
@click.pass_obj
def serve(
    obj: _Context, host: str | None, port: int | None, workers: int | None, no_access_log: bool
) -> None:
    """Run the service (applies migrations first unless FDPUSH_MIGRATE_ON_START=0)."""
    from fdpush.web import server

    settings = obj.settings()
    workers = workers or settings.workers
    if workers > 1 and settings.database_url.startswith("sqlite"):
        raise click.ClickException(
            "configuration: FDPUSH_WORKERS / --workers above 1 needs PostgreSQL: SQLite has one "
            "writer at a time, so several processes would only queue on its file lock; with "
            "SQLite run one process"
        )
    host = host or settings.host
    port = settings.port if port is None else port
    try:  # first: a busy port stops it before anything is touched
        sockets = server.bind_listeners(settings, host, port)
    except server.ListenError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        _check_database(settings.database_url)
        if workers == 1:
            started = server.serve(
                settings, host=host, port=port, access_log=not no_access_log, sockets=sockets
            )
            if not started:
                sys.exit(server.EXIT_NOT_STARTED)
            return
        # Once here, not racing in each process: the migrations and data steps, the key file.
        _prepare(settings, migrate=settings.migrate_on_start)
        sys.exit(
            server.serve_processes(
                settings, workers=workers, host=host, access_log=not no_access_log, sockets=sockets
            )
        )
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    finally:
        for sock in sockets:
            if sock is not None:
                sock.close()


def _check_database(url: str) -> None:
    """Stop with one line naming FDPUSH_DATABASE_URL when the database does not answer.

    Otherwise the failure would surface inside the server's start-up as a page of traceback.
    """
    from fdpush.storage.database import Database

    async def ping() -> None:
        db = Database(url)
        try:
            await db.ping()
        finally:
            await db.close()

    try:
        asyncio.run(ping())
    except Exception as exc:  # noqa: BLE001 - whatever it is, the operator must fix the URL
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise click.ClickException(
            f"configuration: FDPUSH_DATABASE_URL: the database does not answer "
            f"({type(exc).__name__}: {reason})"
        ) from None


@cli.command()
@click.pass_obj
def migrate(obj: _Context) -> None:
    """Bring the database to this version: the schema, then the steps on the stored data that
    need the master key (user ids to pseudonyms, pushkeys sealed)."""
    try:
        revision = _prepare(obj.settings(for_serving=False), migrate=True)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    click.echo(f"database schema is at revision {revision}")


def _prepare(settings: Settings, *, migrate: bool) -> str | None:
    """Migrate (when ``migrate``) and run the pending data steps (:meth:`Services.prepare`); a
    failure is one line and a non-zero exit. Raises ``ConfigError`` when there is no master
    key."""
    from fdpush.domain.keyring import KeyringError
    from fdpush.services import Services

    services = Services.build(settings, tool=True)

    async def run() -> str | None:
        try:
            return await services.prepare(migrate=migrate)
        finally:
            await services.close()

    try:
        return asyncio.run(run())
    except KeyringError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - say what failed, in one line, and exit non-zero
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise click.ClickException(f"migration failed: {type(exc).__name__}: {reason}") from None


@cli.command()
@click.argument("user_id")
@click.option("--ttl", default=86400, show_default=True, help="Lifetime in seconds.")
@click.pass_obj
def token(obj: _Context, user_id: str, ttl: int) -> None:
    """Print a dev-authentication token for USER_ID (FDPUSH_AUTH_MODE=dev only)."""
    from fdpush.web.auth import issue_dev_token

    settings = obj.settings()
    if settings.auth_mode != "dev" or settings.auth_dev_secret is None:
        raise click.ClickException("tokens can only be issued with FDPUSH_AUTH_MODE=dev")
    click.echo(
        issue_dev_token(
            settings.auth_dev_secret.get_secret_value(),
            user_id,
            ttl_seconds=ttl,
            claim=settings.auth_user_claim,
        )
    )


@cli.command()
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    help="Delivery processes to run (default FDPUSH_WORKER_PROCESSES, 1).",
)
@click.pass_obj
def worker(obj: _Context, processes: int | None) -> None:
    """Run only delivery workers, so API and delivery scale apart.

    Any number of `fdpush worker` processes, on any number of machines, may share one
    PostgreSQL: they never claim the same notification. Serves /metrics (all its processes
    in one scrape), /health/live and /health/ready on FDPUSH_WORKER_METRICS_PORT (9101). With
    SQLite, run the worker inside `fdpush serve` (the default) instead.
    """
    from fdpush.delivery.processes import run_worker_processes

    settings = obj.settings(for_serving=False)
    try:
        settings.check_delivery()
        master_key = resolve_master_key(settings)  # once, for every worker process
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    _warn_worker_on_sqlite(settings)
    _prepare_apart(settings)  # once here, not in each process
    sys.exit(
        run_worker_processes(
            settings, processes or settings.worker_processes, master_key=master_key
        )
    )


def _prepare_apart(settings: Settings) -> None:
    """Check the database and prepare it (:func:`_prepare`) in a process of its own, which
    exits when done: the supervisor that stays never loads the database layer or the
    migrations."""
    import multiprocessing

    # A process and a pipe, as for the workers themselves: nothing that needs POSIX semaphores.
    context = multiprocessing.get_context("spawn")
    answers, answer = context.Pipe(duplex=False)
    process = context.Process(
        target=_prepare_for_workers, args=(settings, answer), name="fdpush-prepare"
    )
    process.start()
    answer.close()
    try:
        failure: str | None = answers.recv()
    except EOFError:  # it died before it could say
        process.join()
        failure = f"preparing the database failed: the process exited with {process.exitcode}"
    process.join()
    if failure is not None:
        raise click.ClickException(failure)


def _prepare_for_workers(settings: Settings, answer: Connection) -> None:
    """In the preparing process: send what went wrong, in one line, or None."""
    configure_logging(settings.log_level, settings.log_format)
    try:
        _check_database(settings.database_url)
        _prepare(settings, migrate=settings.migrate_on_start)
    except click.ClickException as exc:
        answer.send(exc.message)
    else:
        answer.send(None)
    finally:
        answer.close()


def _warn_worker_on_sqlite(settings: Settings) -> None:
    if settings.database_url.startswith("sqlite"):
        logging.getLogger("fdpush.worker").warning(
            "fdpush worker on SQLite: a worker in its own process is woken only by polling "
            "(every few seconds; PostgreSQL NOTIFY wakes it at once) and competes for SQLite's "
            "one writer. With SQLite run the worker inside `fdpush serve` (the default)."
        )


@cli.command()
@click.option("--limit", default=50, show_default=True, help="How many, newest first.")
@click.pass_obj
def failed(obj: _Context, limit: int) -> None:
    """List notifications that were given up on, with their reasons."""
    from datetime import UTC, datetime

    from fdpush.crypto import CryptoError
    from fdpush.logs import pushkey_ref
    from fdpush.storage import outbox

    def device(vault: KeyVault, row: Any) -> str:
        if row.pushkey is None:
            return "(deregistered)"
        if row.pushkey_sealed is None:
            return "(unreadable)"
        try:  # the reference the logs use: of the pushkey, which is stored sealed
            return pushkey_ref(
                vault.open_pushkey(row.user_id, row.app_id, row.pushkey, bytes(row.pushkey_sealed))
            )
        except CryptoError:
            return "(unreadable)"

    async def work(services: Services) -> list[tuple[Any, str]]:
        async with services.db.read() as conn:
            rows = await outbox.failed(conn, limit)
        return [(row, device(services.vault, row)) for row in rows]

    rows = _with_services(obj, work)
    if not rows:
        click.echo("no failed deliveries")
        return
    click.echo(f"{'when (UTC)':<20} {'event':<32} {'device':<19} {'gateway':<28} tries  reason")
    for r, shown in rows:
        when = datetime.fromtimestamp((r.finished_at or r.created_at) / 1000, UTC)
        gateway = r.gateway.split("://", 1)[-1].split("/", 1)[0]
        click.echo(
            f"{when:%Y-%m-%d %H:%M:%S}  {r.event_id:<32} {shown:<19} "
            f"{gateway:<28} {r.attempts:>5}  {r.last_error or ''}"
        )


@cli.command()
@click.option("--user", "user_id", required=True, help="The user id (KVNR, Telematik-ID, …).")
@click.pass_obj
def audit(obj: _Context, user_id: str) -> None:
    """List a user's audit records (pushers registered, replaced, removed).

    The database holds only the user's pseudonym; this computes it with the master key.
    """
    from fdpush.storage import queries

    async def work(services: Services) -> tuple[str, list[Any]]:
        pseudonym = services.vault.pseudonym(user_id)
        async with services.db.read() as conn:
            return pseudonym, list(await queries.audit_records(conn, pseudonym))

    pseudonym, rows = _with_services(obj, work)
    click.echo(f"pseudonym {pseudonym}: {len(rows)} audit record(s)")
    for r in rows:
        actor = "user" if r.actor == pseudonym else r.actor
        click.echo(
            f"{r.at:%Y-%m-%d %H:%M:%S}  {r.action:<20} by {actor:<8} {r.app_id}  "
            f"device {r.pushkey_hash[:16]}…"
        )


@cli.command()
@click.option("--once", is_flag=True, help="Stop after showing the outcome (else: until Ctrl-C).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="The service's loopback port (default: a free one).",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the outcome as JSON to this file (no keys in it).",
)
@click.option(
    "--production-gateway",
    is_flag=True,
    help="Use the production gateway in front of mock APNs and FCM, and let one token die.",
)
def demo(once: bool, port: int, report: Path | None, production_gateway: bool) -> None:
    """The whole chain on this machine, with nothing to configure.

    Starts the service (throwaway SQLite, dev authentication, a local CA) and the development
    Push Gateway with mutual TLS, registers four simulated apps with their own keys and
    channel choices, emits six events, and shows which device received and decrypted which
    notification and which correctly got nothing. Exit status 0 when every device got exactly
    what its choices promise, 1 otherwise. Ignores FDPUSH_* settings.
    """
    from fdpush.demo import run_demo

    try:
        outcome = run_demo(
            once=once, port=port, report=report, production_gateway=production_gateway
        )
    except OSError as exc:
        raise click.ClickException(f"demo: {exc}") from None
    sys.exit(0 if outcome.ok else 1)


@cli.group("config", cls=_Commands)
def config_group() -> None:
    """Print an example configuration, or check one without starting anything."""


@config_group.command("example")
def config_example() -> None:
    """Print every setting with its meaning and default, as a commented FDPUSH_*=value file.

    Redirect it into a file and uncomment what you set: fdpush config example > fdpush.env
    """
    click.echo(example_config(), nl=False)


@config_group.command("check")
@click.pass_obj
def config_check(obj: _Context) -> None:
    """Check the configuration (environment and --config file) as `serve` would read it.

    Prints one line per problem and exits 1, or says it is fine and exits 0. Starts nothing,
    creates nothing (no key file, no database) and does not connect to the database.
    """
    problems = config_problems(obj.config_file, os.environ)
    for problem in problems:
        click.echo(f"configuration: {problem}", err=True)
    if problems:
        sys.exit(1)
    source = f"{obj.config_file} and the environment" if obj.config_file else "the environment"
    click.echo(f"configuration OK ({source})")


@cli.group("user", cls=_Commands)
def user_group() -> None:
    """Data-subject requests: show, export (Art. 15) or erase (Art. 17) one user's data."""


def _with_services(obj: _Context, work: Callable[[Services], Awaitable[_T]]) -> _T:
    """``work(services)`` with the configured settings, on a database another process prepared
    (these commands read and erase, they never migrate); one line and a non-zero exit when the
    master key cannot work on the database."""
    from fdpush.domain.keyring import KeyringError
    from fdpush.services import Services

    settings = obj.settings(for_serving=False)

    async def run() -> _T:
        async with Services.open(settings, prepare=False, tool=True) as services:
            return await work(services)

    try:
        return asyncio.run(run())
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    except KeyringError as exc:
        raise click.ClickException(str(exc)) from None


def _echo_json(value: Any) -> None:
    import orjson

    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


@user_group.command("show")
@click.argument("user_id")
@click.pass_obj
def user_show(obj: _Context, user_id: str) -> None:
    """Print a user's devices, channel states and recent notification outcomes as JSON.

    What a support desk needs: devices appear as references (pk:...), never with key material.
    """
    _echo_json(_with_services(obj, lambda services: services.users.show(user_id)))


@user_group.command("export")
@click.argument("user_id")
@click.pass_obj
def user_export(obj: _Context, user_id: str) -> None:
    """Print everything stored about a user as JSON (GDPR Art. 15), key material excluded."""
    _echo_json(_with_services(obj, lambda services: services.users.export(user_id)))


@user_group.command("delete")
@click.argument("user_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def user_delete(obj: _Context, user_id: str, yes: bool) -> None:
    """Erase a user completely (GDPR Art. 17): pushers, keys, channel states, notifications,
    events and the audit records about them; one audit record without personal data remains."""
    if not yes:
        click.confirm(f"Erase everything stored about {user_id!r}?", abort=True)
    actor = f"cli:{os.environ.get('USER', 'unknown')}"
    counts = _with_services(obj, lambda services: services.users.erase(user_id, actor=actor))
    click.echo("erased: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))


@cli.group("master-key", cls=_Commands)
def master_key_group() -> None:
    """Rotate the master key: seal everything stored under a new one."""


@master_key_group.command("rotate")
@click.option(
    "--new-key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The new key: Base64 of 32 random bytes (openssl rand -base64 32), owner-only.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Rows sealed anew per transaction.",
)
@click.option(
    "--ignore-connections",
    is_flag=True,
    help="Rotate although other sessions are connected to the database (PostgreSQL).",
)
@click.pass_obj
def master_key_rotate(
    obj: _Context, new_key_file: Path, chunk_size: int, ignore_connections: bool
) -> None:
    """Seal everything stored under the master key (FDPUSH_MASTER_KEY) under the new key instead.

    Stop every fdpush process first (serve, worker, Notifier) and back the database up. Safe to
    interrupt: until it has finished no fdpush process starts, and running it again with the
    same two keys finishes it. Then start everything with the new key: FDPUSH_MASTER_KEY set to
    the new key file's content. Pseudonyms and pushkey indexes stay as they are.
    """
    from fdpush.config import decode_master_key
    from fdpush.domain.keyring import KeyringError
    from fdpush.domain.keys import KeyVault
    from fdpush.domain.rotation import rotate_master_key
    from fdpush.storage.database import Database

    settings = obj.settings(for_serving=False)
    source = f"--new-key-file ({new_key_file})"
    try:
        if new_key_file.stat().st_mode & 0o077:
            raise ConfigError(f"{source}: readable by others; run: chmod 600 {new_key_file}")
        new_key = decode_master_key(new_key_file.read_text(), source)
        current_key = resolve_master_key(settings)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    if new_key == current_key:
        raise click.ClickException(f"{source}: this is the current master key already")
    bars: dict[str, Any] = {}
    new_bar: Any = click.progressbar  # its overloads do not type a bar without an iterable

    def progress(what: str, done: int, total: int) -> None:
        """One bar per kind of record, on stderr (stdout has the summary)."""
        bar = bars.get(what)
        if bar is None:
            bar = bars[what] = new_bar(length=max(total, 1), label=f"{what:<20}", file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)
        if done >= total:
            bar.__exit__(None, None, None)

    async def run() -> Any:
        db = Database(settings.database_url)
        try:
            return await rotate_master_key(
                db,
                KeyVault(current_key),
                KeyVault(new_key),
                chunk=chunk_size,
                progress=progress,
                ignore_connections=ignore_connections,
            )
        finally:
            await db.close()

    try:
        report = asyncio.run(run())
    except KeyringError as exc:
        raise click.ClickException(str(exc)) from None
    for what, count in report.resealed.items():
        click.echo(f"sealed under the new key: {count} {what}")
    for what, count in report.already.items():
        click.echo(f"under the new key already (an interrupted run): {count} {what}")
    for what, count in report.unopenable.items():
        click.echo(f"opening under neither key, left as they were: {count} {what}")
    if report.swept:
        click.echo("the database was under the new key already; leftovers swept")
    else:
        click.echo("done: the database is now sealed under the new key")
    click.echo(
        "Start fdpush with FDPUSH_MASTER_KEY set to the new key; keep the old key as long as "
        "backups made before this rotation are kept."
    )


def _accept_config_everywhere(group: click.Group) -> None:
    """Every command that reads the settings takes ``--config`` after its name, too."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            _accept_config_everywhere(command)
        elif name not in ("demo", "gateway", "example"):  # these ignore FDPUSH_* settings
            config_option(command)


_accept_config_everywhere(cli)


def main() -> None:
    # Whatever the caller's umask, what fdpush creates is owner-only: the SQLite file and its
    # journal (health data), key files, and the development gateway's private keys.
    os.umask(os.umask(0o077) | 0o077)
    cli()
