"""The Grafana dashboards and the Prometheus rules: valid, and about metrics fdpush exports.

Every metric and label the dashboards and the alerts query must exist in the code's metric
registries (``DeliveryMetrics``, ``HttpMetrics`` for the service; ``GatewayMetrics`` for the
production Push Gateway), so a renamed metric fails here instead of leaving an empty panel or an
alert that can never fire. ``promtool`` (Debian's ``prometheus``
package; ``./dev test`` installs it) checks the PromQL, the rules and their unit tests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from conftest import ON_CI
from fdpush.delivery.worker import DeliveryMetrics
from fdpush.gateway.production.metrics import GatewayMetrics
from fdpush.web.middleware import HttpMetrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "fdpush.json"
GATEWAY_DASHBOARD = REPO / "deploy" / "grafana" / "fdpush-gateway.json"
PROMETHEUS = REPO / "deploy" / "prometheus"
# Labels Prometheus adds to every scraped series, and the series it makes for every target.
TARGET_LABELS = {"job", "instance"}
PROMETHEUS_SERIES = {"up": TARGET_LABELS}
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "histogram_quantile", "absent",
    "by", "without", "on", "ignoring", "and", "or", "unless", "bool", "offset",
}  # fmt: skip


def exported_series() -> dict[str, set[str]]:
    """Every series name the service exports → its label names (``le`` for histogram buckets)."""
    registry = CollectorRegistry()
    DeliveryMetrics(registry)
    HttpMetrics(registry)
    return series_in(registry)


def gateway_series() -> dict[str, set[str]]:
    """Every series name the production Push Gateway exports → its label names."""
    return series_in(GatewayMetrics().registry)


def series_in(registry: CollectorRegistry) -> dict[str, set[str]]:
    series: dict[str, set[str]] = {}
    for collector in list(registry._collector_to_names):
        for family in collector.describe():
            labels = set(getattr(collector, "_labelnames", ()))
            if family.type == "counter":
                series[family.name + "_total"] = labels
            elif family.type == "histogram":
                series[family.name + "_bucket"] = labels | {"le"}
                series[family.name + "_sum"] = labels
                series[family.name + "_count"] = labels
            else:
                series[family.name] = labels
    return series


def dashboard_queries(path: Path = DASHBOARD) -> list[str]:
    dashboard = json.loads(path.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def alert_rules(name: str = "alerts.yaml") -> list[dict[str, Any]]:
    document = yaml.safe_load((PROMETHEUS / name).read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def check_query(expr: str, known: dict[str, set[str]]) -> list[str]:
    """Problems of one PromQL expression: unknown series, or labels no series of it has."""
    problems: list[str] = []
    text = re.sub(r'"[^"]*"', '""', expr)  # no words from inside strings
    # Metric names: identifiers that are not functions, keywords, label lists, or selectors.
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)|\{[^}]*\}|\[[^\]]*\]", " ", text)
    used = {
        name
        for name in re.findall(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()", bare)
        if name not in PROMQL_WORDS
    }
    labels_there: set[str] = set(TARGET_LABELS)
    for name in sorted(used):
        if name not in known:
            problems.append(f"{name}: not a series fdpush exports")
        else:
            labels_there |= known[name]
    for matchers in re.findall(r"\{([^}]*)\}", text):
        for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers):
            if label not in labels_there:
                problems.append(f"label {label!r} in {expr!r}: no such label")
    for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", text):
        for label in (part.strip() for part in grouping.split(",")):
            if label and label not in labels_there:
                problems.append(f"label {label!r} in {expr!r}: no such label")
    return problems


def test_the_series_table_is_real() -> None:
    known = exported_series()
    assert known["fdpush_notifications_total"] == {"outcome"}
    assert "le" in known["fdpush_http_request_duration_seconds_bucket"]


def test_check_query_notices_unknown_names_and_labels() -> None:
    known = {**exported_series(), **PROMETHEUS_SERIES}
    assert check_query("sum by (outcome) (rate(fdpush_notifications_total[5m]))", known) == []
    assert check_query("max(fdpush_outbox_pendng)", known) != []
    assert check_query('fdpush_notifications_total{result="failed"}', known) != []
    assert check_query("sum by (gateway) (rate(fdpush_notifications_total[5m]))", known) != []


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_queries_name_only_exported_series(source: str) -> None:
    known = {**exported_series(), **PROMETHEUS_SERIES}
    queries = dashboard_queries() if source == "dashboard" else [r["expr"] for r in alert_rules()]
    assert queries
    problems = [problem for query in queries for problem in check_query(query, known)]
    assert problems == []


@pytest.mark.parametrize(
    ("path", "uid", "needed_titles"),
    [
        (DASHBOARD, "fdpush", ("Notifications by outcome", "Outbox depth", "Circuit state")),
        (GATEWAY_DASHBOARD, "fdpush-gateway", ("Deliveries by outcome", "Rejection memory")),
    ],
)
def test_dashboard_shape(path: Path, uid: str, needed_titles: tuple[str, ...]) -> None:
    """Importable by Grafana: unique panel ids, a Prometheus data-source variable, no overlap."""
    dashboard = json.loads(path.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == uid
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    cells: set[tuple[int, int]] = set()
    titles = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            titles.add(panel["title"])
    for needed in needed_titles:
        assert needed in titles


# --- promtool ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not found (Debian: apt-get install prometheus; ./dev test does)"
        if ON_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_promtool(promtool: str, *args: str, cwd: Path = PROMETHEUS) -> str:
    done = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_alert_rules_are_valid_and_their_unit_tests_pass(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", "alerts.yaml")
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", "alerts_test.yaml")


def test_prometheus_config_is_valid(promtool: str) -> None:
    run_promtool(promtool, "check", "config", "prometheus.yml")


@pytest.mark.parametrize("path", [DASHBOARD, GATEWAY_DASHBOARD], ids=lambda p: p.name)
def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path, path: Path) -> None:
    """promtool parses each dashboard query as a recording rule (Grafana's interval → 5m)."""
    rules = [
        {"record": f"fdpush:dashboard_query_{n}", "expr": expr.replace("$__rate_interval", "5m")}
        for n, expr in enumerate(dashboard_queries(path))
    ]
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    run_promtool(promtool, "check", "rules", "dashboard.yaml", cwd=tmp_path)


def test_promtool_rejects_bad_promql(promtool: str, tmp_path: Path) -> None:
    bad = {"groups": [{"name": "bad", "rules": [{"record": "x:y", "expr": "sum by (a (b)"}]}]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(AssertionError):
        run_promtool(promtool, "check", "rules", "bad.yaml", cwd=tmp_path)


def test_operations_guide_explains_every_metric() -> None:
    """docs/operations.md's table names each metric fdpush exports (the docs cannot drift)."""
    guide = (REPO / "docs" / "operations.md").read_text()
    registry = CollectorRegistry()
    DeliveryMetrics(registry)
    HttpMetrics(registry)
    families = {
        family.name + ("_total" if family.type == "counter" else "")
        for collector in list(registry._collector_to_names)
        for family in collector.describe()
    }
    assert families
    missing = sorted(name for name in families if f"`{name}" not in guide)
    assert missing == []


# --- the production Push Gateway --------------------------------------------------------------


def test_the_gateway_series_table_is_real() -> None:
    known = gateway_series()
    assert known["fdpush_gateway_deliveries_total"] == {"provider", "outcome"}
    assert "le" in known["fdpush_gateway_provider_latency_seconds_bucket"]
    assert "fdpush_notifications_total" not in known  # the service's, not the gateway's


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_gateway_queries_name_only_gateway_series(source: str) -> None:
    known = {**gateway_series(), **PROMETHEUS_SERIES}
    if source == "dashboard":
        queries = dashboard_queries(GATEWAY_DASHBOARD)
    else:
        queries = [r["expr"] for r in alert_rules("gateway-alerts.yaml")]
    assert queries
    problems = [problem for query in queries for problem in check_query(query, known)]
    assert problems == []


def test_every_gateway_alert_has_a_unit_test_that_fires_it() -> None:
    tests = yaml.safe_load((PROMETHEUS / "gateway-alerts_test.yaml").read_text())
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == {rule["alert"] for rule in alert_rules("gateway-alerts.yaml")}


def test_gateway_alert_rules_are_valid_and_their_unit_tests_pass(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", "gateway-alerts.yaml")
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", "gateway-alerts_test.yaml")


def test_gateway_guide_explains_every_metric() -> None:
    """docs/gateway.md's metrics table names each metric the gateway exports."""
    guide = (REPO / "docs" / "gateway.md").read_text()
    families = {
        family.name + ("_total" if family.type == "counter" else "")
        for collector in list(GatewayMetrics().registry._collector_to_names)
        for family in collector.describe()
    }
    assert families
    missing = sorted(name for name in families if f"`{name}`" not in guide)
    assert missing == []
