"""The chart's dashboards and alert rules as data, and a local Prometheus that scrapes the platform:
what the observability tests (and an SRE trying a query locally) need."""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from emr_devstack.processes import ManagedProcess, free_port, wait_until

CHART = Path(__file__).resolve().parents[3] / "charts" / "emr-platform"
DASHBOARDS = CHART / "dashboards"
RULES = CHART / "rules"

# PromQL words that look like metric names but are not.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACES = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Names of the series a PromQL expression selects (functions, keywords, labels left out)."""
    bare = _GROUPING.sub(" ", _RANGES.sub(" ", _BRACES.sub(" ", _STRINGS.sub(" ", expr))))
    return {
        match.group(1)
        for match in _IDENTIFIER.finditer(bare)
        if not match.group(2) and match.group(1) not in _KEYWORDS and not match.group(1).isdigit()
    }


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard of the chart, by file name."""
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def _panels(panels: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", ()))


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) of every panel query and query variable of every dashboard."""
    found = []
    for name, dashboard in dashboards().items():
        for panel in _panels(dashboard["panels"]):
            found += [(f"{name}: {panel['title']}", t["expr"]) for t in panel.get("targets", ())]
        for variable in dashboard.get("templating", {}).get("list", ()):
            query = variable.get("query")
            if isinstance(query, dict):
                label_values = re.fullmatch(r"label_values\((.+),\s*\w+\)", query["query"])
                found.append(
                    (
                        f"{name}: ${variable['name']}",
                        label_values.group(1) if label_values else query["query"],
                    )
                )
    return found


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in sorted(RULES.glob("*.yaml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    return groups


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def rule_queries() -> list[tuple[str, str]]:
    return [(rule.get("alert") or rule["record"], rule["expr"]) for rule in rules()]


def recorded_names() -> set[str]:
    """Series the rules themselves record (not exported by any service)."""
    return {rule["record"] for rule in rules() if "record" in rule}


def exported_names(exposition: str) -> set[str]:
    """Sample names in a /metrics page (``_total``, ``_bucket``, ... included)."""
    return {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


@dataclass
class LocalPrometheus:
    """Debian's Prometheus on 127.0.0.1, storing in ``run_dir``, scraping ``targets`` (job -> port)
    and evaluating ``rule_files``."""

    run_dir: Path
    targets: Mapping[str, int]
    rule_files: Sequence[Path] = ()
    scrape_interval: str = "1s"
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    def start(self) -> LocalPrometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus is missing: run scripts/bootstrap.sh (make bootstrap)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                for job, port in self.targets.items()
            ],
        }
        config_path = self.run_dir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.process = ManagedProcess(
            "prometheus",
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.run_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            {},
            self.run_dir / "prometheus.log",
        ).start()
        wait_until(self.process, self._ready, 60, "ready")
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns its ``data``."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def series(self, match: str) -> list[dict[str, str]]:
        found: list[dict[str, str]] = self.api("series", **{"match[]": match})
        return found

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
