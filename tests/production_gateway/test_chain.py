"""The whole chain for real: ``fdpush demo --once --production-gateway``.

Apps register, the service seals and sends over mTLS to the production gateway, which forwards
to the mock APNs and FCM; each simulated app takes its push from the mock provider and decrypts
it; a token that dies at its provider is rejected, reported by the gateway, and its pusher
deleted by the service. The test recomputes from the report which device must have opened
which payload, rather than taking the demo's word for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_through_the_production_gateway_and_mock_providers(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FDPUSH_")}
    env["COLUMNS"] = "120"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "fdpush",
            "demo",
            "--once",
            "--production-gateway",
            "--report",
            str(report_path),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(report_path.read_text())
    assert report["ok"] is True and report["problems"] == []
    catalog = report["catalog"]
    total = 0
    for device in report["devices"]:
        expected = [
            event["payload"]
            for event in report["events"]
            if event["user"] == device["user"]
            and device["choices"].get(event["channel"], catalog[event["channel"]]) == "enabled"
        ]
        total += len(expected)
        received = report["received"][device["label"]]
        assert sorted(map(json.dumps, received)) == sorted(map(json.dumps, expected)), device
    assert total == 5
    shown = " ".join(run.stdout.split())
    assert "production gateway" in shown and "mock APNs" in shown
    assert "rejected by the provider, reported by the gateway, and the service deleted" in shown
