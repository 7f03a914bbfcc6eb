"""``python -m fdpush.testing --dir DIR``: the mock APNs and mock FCM as a standalone server.

Makes (or reuses) a throwaway PKI in ``DIR/pki``, an APNs signing key and an FCM service
account, writes ``DIR/gateway.toml`` — a production configuration of ``fdpush gateway`` in
front of these mocks — prints where everything is, and serves until Ctrl-C. Switch the mocks
and read what they received over their ``/_mock/…`` control API (``docs/gateway.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path

from fdpush.gateway.certs import TestPki, make_test_pki
from fdpush.testing.mock_apns import MockApns, make_apns_key
from fdpush.testing.mock_fcm import MockFcm

TEAM_ID = "TEAM000001"
KEY_ID = "KEY0000001"


def _pki(directory: Path) -> TestPki:
    if (directory / "ca.pem").exists():
        names = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")
        return TestPki(directory.resolve(), *(directory.resolve() / n for n in names))
    return make_test_pki(directory)


def _config(
    pki: TestPki, apns: MockApns, fcm: MockFcm, key: Path, account: Path, args: argparse.Namespace
) -> str:
    return f"""# fdpush gateway --config {args.dir / "gateway.toml"}
mode = "production"
log_format = "text"

[listen]
host = "{args.host}"
port = {args.gateway_port}
cert = "{pki.server_cert}"
key = "{pki.server_key}"
client_ca = "{pki.ca_cert}"   # Fachdienste present {pki.client_cert}

[apns]
url = "{apns.url}"
ca_file = "{pki.ca_cert}"

[fcm]
url = "{fcm.url}"
ca_file = "{pki.ca_cert}"

[[apns_apps]]
app_id = "{args.apns_app}"
key_file = "{key}"
key_id = "{KEY_ID}"
team_id = "{TEAM_ID}"

[[fcm_apps]]
app_id = "{args.fcm_app}"
service_account = "{account}"
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fdpush.testing",
        description="Serve the mock APNs and mock FCM and write a gateway configuration for them.",
    )
    parser.add_argument("--dir", type=Path, required=True, help="where keys and config go")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--apns-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--fcm-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--gateway-port", type=int, default=8443, help="for gateway.toml")
    parser.add_argument("--apns-app", default="de.example.erezept.apns")
    parser.add_argument("--fcm-app", default="example-project.erezept.firebase")
    args = parser.parse_args(argv)
    if not args.apns_app.endswith(".apns") or args.fcm_app.count(".") < 2:
        parser.error("--apns-app must end in .apns, --fcm-app be <project>.<app>.firebase")
    args.dir.mkdir(parents=True, exist_ok=True)
    pki = _pki(args.dir / "pki")
    key = make_apns_key(args.dir, team_id=TEAM_ID, key_id=KEY_ID)
    with (
        MockApns(pki, host=args.host, port=args.apns_port) as apns,
        MockFcm(pki, host=args.host, port=args.fcm_port) as fcm,
    ):
        apns.add_key(key, topics=[args.apns_app.removesuffix(".apns")])
        account = fcm.add_service_account(args.dir, args.fcm_app.split(".", 1)[0])
        config = args.dir / "gateway.toml"
        config.write_text(_config(pki, apns, fcm, key.path, account, args))
        print(f"fdpush mock providers: APNs {apns.url}  FCM {fcm.url}")
        print(f"  trust {pki.ca_cert}; gateway configuration: {config}")
        print(f"  control: curl --http2 --cacert {pki.ca_cert} {apns.url}/_mock/received")
        sys.stdout.flush()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
