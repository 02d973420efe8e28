"""The chart's alert rules pass promtool's checks and unit tests, every alert is unit-tested and has a
runbook section, and every dashboard is well-formed. (Whether their metric names exist is checked
against a running platform in tests/integration/test_observability.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from emr_devstack.observability import RULES, dashboard_queries, dashboards, metric_names, rules

ROOT = Path(__file__).resolve().parents[1]
RULE_TESTS = ROOT / "tests" / "prometheus" / "rules.test.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
README = ROOT / "README.md"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: run scripts/bootstrap.sh (make bootstrap)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, check=False)


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules() if "alert" in rule]


def test_promtool_check_rules() -> None:
    checked = promtool("check", "rules", *map(str, sorted(RULES.glob("*.yaml"))))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_promtool_test_rules() -> None:
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    cases = [
        case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]
    ]
    for alert in alert_names():
        own = [case for case in cases if case["alertname"] == alert]
        assert any(case["exp_alerts"] for case in own), f"{alert}: no unit test where it fires"
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert quiet >= {a for a in alert_names() if not a.endswith("Slow")}, "alerts never tested quiet"


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_names_an_existing_runbook_section() -> None:
    anchors = {
        _anchor(line.lstrip("#")) for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")
    }
    for rule in rules():
        if "alert" in rule:
            url = rule["annotations"]["runbook_url"]
            path, _, anchor = url.partition("#")
            assert path == "docs/runbook.md" and anchor in anchors, f"{rule['alert']}: {url}"
            assert rule["labels"]["severity"] in {"page", "ticket"}


def test_readme_operations_section_explains_every_alert() -> None:
    operations = README.read_text().partition("## Operations")[2].partition("\n## ")[0]
    for alert in alert_names():
        assert alert in operations, f"{alert} is not explained in the README's Operations section"


def test_dashboards_are_well_formed_and_query_metrics() -> None:
    found = dashboards()
    assert set(found) >= {"platform-overview.json", "national-sync.json", "audit.json", "identity.json"}
    assert len({d["uid"] for d in found.values()}) == len(found), "dashboard uids must be unique"
    for where, expr in dashboard_queries():
        assert metric_names(expr), f"{where}: selects no metric"


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (grpc_method, le) (rate(grpc_server_handling_seconds_bucket"
        '{grpc_service="a.B", le="0.5"}[$__rate_interval]))) / on (job) group_left up'
        " and time() - max(emr:x_ratio:rate5m offset 5m) > 14.4 * 0.001"
    )
    assert metric_names(expr) == {"grpc_server_handling_seconds_bucket", "up", "emr:x_ratio:rate5m"}
