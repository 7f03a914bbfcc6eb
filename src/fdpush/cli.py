"""The ``fdpush`` command: serve, migrate, token, and the development ``gateway``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from fdpush import __version__
from fdpush.config import ConfigError, Settings, load_settings
from fdpush.logs import configure_logging

__all__ = ["main"]


class _Context:
    def __init__(self, config_file: Path | None) -> None:
        self.config_file = config_file

    def settings(self, *, for_serving: bool = True) -> Settings:
        try:
            settings = load_settings(self.config_file, for_serving=for_serving)
        except ConfigError as exc:
            raise click.ClickException(f"configuration: {exc}") from None
        configure_logging(settings.log_level, settings.log_format)
        return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fdpush")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file of FDPUSH_*=value lines (the environment wins over it). Also: FDPUSH_CONFIG_FILE.",
)
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None) -> None:
    """fdpush: the push part of a Fachdienst (Client-FD Push API, encrypted delivery).

    Every setting is an FDPUSH_* environment variable; see the README's configuration
    reference.
    """
    ctx.obj = _Context(config_file)


@cli.command()
@click.option("--host", help="Listen address (default FDPUSH_HOST, 127.0.0.1).")
@click.option("--port", type=int, help="Listen port (default FDPUSH_PORT, 8080).")
@click.option("--no-access-log", is_flag=True, help="Do not log one line per request.")
@click.pass_obj
def serve(obj: _Context, host: str | None, port: int | None, no_access_log: bool) -> None:
    """Run the service (applies migrations first unless FDPUSH_MIGRATE_ON_START=0)."""
    import uvicorn

    from fdpush.web.app import create_app

    settings = obj.settings()
    _check_database(settings.database_url)
    try:
        app = create_app(settings, access_log=not no_access_log)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    config = uvicorn.Config(
        app,
        host=host or settings.host,
        port=settings.port if port is None else port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(3)


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
    """Bring the database schema to the newest version."""
    from fdpush.storage.database import Database

    settings = obj.settings(for_serving=False)

    async def run() -> str | None:
        db = Database(settings.database_url)
        try:
            return await db.migrate()
        finally:
            await db.close()

    try:
        revision = asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - say what failed, in one line, and exit non-zero
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise click.ClickException(f"migration failed: {type(exc).__name__}: {reason}") from None
    click.echo(f"database schema is at revision {revision}")


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


def _add_gateway_command() -> None:
    from fdpush.gateway.cli import gateway

    cli.add_command(gateway)


_add_gateway_command()


def main() -> None:
    cli()
