"""The ``fdpush gateway`` command: its options, and what it does with them."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from fdpush.gateway.core import DevGateway
from fdpush.gateway.runner import TlsFiles, check_tls_files, serve
from fdpush.gateway.trouble import DelayPoint, Limits, ResultOrder, Trouble
from fdpush.logs import configure_logging, set_reference_key

__all__ = ["gateway", "run_from_config", "run_gateway"]

log = logging.getLogger("fdpush.gateway")


def run_gateway(
    *,
    host: str,
    port: int,
    cert: Path | None,
    key: Path | None,
    client_ca: Path | None,
    record: Path | None,
    inbox_per_device: int,
    inbox_total: int,
    max_batch_size: int,
    max_notification_size_kb: int,
    max_request_size_kb: int,
    reject_pushkeys: tuple[str, ...],
    fail_fraction: float,
    fail_seed: int | None,
    status: int | None,
    status_count: int | None,
    retry_after: int | None,
    delay_ms: int,
    delay_count: int | None,
    delay_point: DelayPoint,
    result_order: ResultOrder,
    log_level: str,
) -> None:
    """Build the gateway from the command's options and serve it until interrupted.

    Bad option combinations and unusable files end the command with a one-line error.
    """
    configure_logging(log_level, "text")
    if (cert is None) != (key is None):
        raise click.UsageError("--cert and --key go together")
    if client_ca is not None and cert is None:
        raise click.UsageError("--client-ca needs --cert and --key (mutual TLS is TLS)")
    tls = None
    if cert is not None and key is not None:
        tls = TlsFiles(cert, key, client_ca)
        try:
            check_tls_files(tls)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        gateway = DevGateway(
            limits=Limits(max_batch_size, max_notification_size_kb, max_request_size_kb),
            trouble=Trouble(
                reject_pushkeys=set(reject_pushkeys),
                fail_fraction=fail_fraction,
                status=status,
                status_count=status_count,
                retry_after=retry_after,
                delay_ms=delay_ms,
                delay_count=delay_count,
                delay_point=delay_point,
                result_order=result_order,
            ),
            inbox_per_device=inbox_per_device,
            inbox_total=inbox_total,
            record_file=record,
            fail_seed=fail_seed,
        )
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None

    def listening(url: str) -> None:
        if tls is None:
            log.warning("plain HTTP without TLS: for tests and development only")
        elif client_ca is None:
            log.warning("no --client-ca: client certificates are not checked")
        click.echo(f"fdpush gateway: listening on {url} (pushers' data.url: {url}/push/v1/)")
        sys.stdout.flush()

    try:
        started = serve(gateway, host=host, port=port, tls=tls, on_listening=listening)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    if not started:
        sys.exit(3)


def run_from_config(path: Path) -> None:
    """Serve the gateway the configuration file describes (either mode) until interrupted."""
    from fdpush.gateway.production import load_config, serve_production
    from fdpush.gateway.production.dispatch import check_credentials

    try:
        config = load_config(path)
        check_credentials(config)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(config.log_level, config.log_format)
    if config.log_reference_key_file is not None:
        set_reference_key(config.log_reference_key_file.read_bytes())
    listen = config.listen
    tls = None
    if listen.cert is not None and listen.key is not None:
        tls = TlsFiles(listen.cert, listen.key, listen.client_ca)
        try:
            check_tls_files(tls)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None

    def listening(url: str) -> None:
        click.echo(f"fdpush gateway: listening on {url} (pushers' data.url: {url}/push/v1/)")
        sys.stdout.flush()

    try:
        if config.mode == "production":
            log.info("production mode: %d apps configured", len(config.apps()))
            started = serve_production(config, on_listening=listening)
        else:
            gateway = DevGateway(limits=config.limits.as_limits())
            started = serve(
                gateway, host=listen.host, port=listen.port, tls=tls, on_listening=listening
            )
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen.host}:{listen.port}: {exc}") from None
    if not started:
        sys.exit(3)


@click.command("gateway", context_settings={"max_content_width": 100})
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Configuration file (TOML; docs/gateway.md). Its 'mode' chooses the development or "
    "the production gateway; listen address, TLS and limits then come from the file and the "
    "options below are ignored.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address.")
@click.option("--port", default=8443, show_default=True, help="Listen port (0: any free one).")
@click.option(
    "--cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Server certificate (PEM). Without it: plain HTTP, for tests only.",
)
@click.option(
    "--key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The server certificate's private key (PEM).",
)
@click.option(
    "--client-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Require client certificates issued by this CA (mutual TLS).",
)
@click.option(
    "--record",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also append every received notification to this JSON-lines file.",
)
@click.option(
    "--inbox-per-device",
    default=1000,
    show_default=True,
    help="Notifications kept per device (oldest dropped first).",
)
@click.option(
    "--inbox-total",
    default=100_000,
    show_default=True,
    help="Notifications kept in all (oldest dropped first).",
)
@click.option(
    "--max-batch-size",
    default=100,
    show_default=True,
    help="Items per batch before 400 'Batch size exceeds maximum limit'.",
)
@click.option(
    "--max-notification-size-kb",
    default=64,
    show_default=True,
    help="Size of one notification before 400 'Individual notification too large'.",
)
@click.option(
    "--max-request-size-kb",
    default=1024,
    show_default=True,
    help="Request body size before 413 (at least 256).",
)
@click.option(
    "--reject",
    "reject_pushkeys",
    multiple=True,
    metavar="PUSHKEY",
    help="Report PUSHKEY in 'rejected' once, on the next request naming it. Repeatable.",
)
@click.option(
    "--fail-fraction",
    default=0.0,
    show_default=True,
    help="Share of items (0..1) answered 'failed' and not delivered.",
)
@click.option("--fail-seed", type=int, help="Seed for --fail-fraction (reproducible runs).")
@click.option(
    "--status",
    type=click.IntRange(400, 599),
    help="Answer every request with this status (e.g. 500, 503, 429) ...",
)
@click.option(
    "--status-count",
    type=click.IntRange(min=1),
    help="... for this many requests only (default: until cleared).",
)
@click.option(
    "--retry-after",
    type=click.IntRange(min=0),
    help="Send 'Retry-After: SECONDS' with --status answers.",
)
@click.option(
    "--delay-ms",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Stall every answer by this many milliseconds ...",
)
@click.option(
    "--delay-count",
    type=click.IntRange(min=1),
    help="... for this many requests only (default: all).",
)
@click.option(
    "--delay-point",
    type=click.Choice(["before", "after"]),
    default="before",
    show_default=True,
    help="Stall before reading the request (a sender that gives up delivered nothing) or "
    "after delivering it (a sender that gives up delivered anyway).",
)
@click.option(
    "--result-order",
    type=click.Choice(["request", "sorted", "reversed"]),
    default="request",
    show_default=True,
    help="Order of batch results: as requested (the spec), sorted by id (the "
    "reference gateway), or reversed.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="info: one line per request (no pushkeys); warning: problems only.",
)
def gateway(**options: Any) -> None:
    """Run the Push Gateway: with --config in the mode the file names, else the development
    gateway (records pushes instead of calling APNs/FCM).

    \b
    Serves the Push Gateway API with the spec's validation and error bodies:
      POST /push/v1/notify, /push/v1/notify/batch, /push/v1/notifyEncrypted/batch
      POST /_matrix/push/v1/notify (seed-era senders)
    A pusher's data.url is https://HOST:PORT/push/v1/ .

    \b
    Each accepted notification is kept per device (app_id + pushkey) with the message the
    app would get from APNs (app_id ending .apns) or FCM (.firebase). To look inside:
      GET    /_dev/inbox?app_id=A&pushkey=P   one device's notifications, oldest first
      GET    /_dev/notifications?since=SEQ    all devices, with a 'next' cursor
      DELETE /_dev/inbox                      forget them
      GET    /_dev/stats                      requests and items counted
      GET    /_dev/trouble                    the trouble switches
      POST   /_dev/trouble                    change them, e.g. {"status": 503, "status_count": 3}
    The options --reject ... --result-order set the same switches at start.
    See docs/dev-gateway.md.
    """
    config = options.pop("config")
    if config is not None:
        run_from_config(config)
    else:
        run_gateway(**options)
