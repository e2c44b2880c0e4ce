"""Real Prometheus scrapes a real ``sesame up``; every dashboard and alert query works.

Debian's Prometheus is found on PATH, in ``loadtest/bin/prometheus/``, or unpacked
there from its package (``apt-get download prometheus`` + ``dpkg -x``: no service
is installed or started). Traffic goes through boto3, SMTP submission and the
inbound MX; then every expression of every Grafana panel and every alert rule is
evaluated through Prometheus's HTTP API and must return data. An alert's
expression is normally empty, so its operands are evaluated without the
threshold comparisons.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import smtplib
import ssl
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.config import Config

from tests.ops.conftest import (
    REPO,
    Process,
    Processes,
    port,
    sesame,
    sesame_env,
    verify_domain,
    wait_until_http,
    wait_until_listening,
)
from tests.support.smtp_sink import SmtpSink

DEPLOY = REPO / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
CACHE = REPO / "loadtest" / "bin" / "prometheus"
CORPUS = REPO / "tests" / "mta" / "feedback_corpus"
VERP_DOMAIN = "bounces.example.test"
PLACEHOLDER = b"b-aaaa-bbbb@bounces.example.test"
# Grafana's built-in variables, as Grafana would fill them for a short range.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


# -- finding Prometheus -----------------------------------------------------------


def prometheus_binary() -> Path:
    """Return Debian's prometheus binary, unpacking the package if needed."""
    found = shutil.which("prometheus")
    if found:
        return Path(found)
    cached = CACHE / "usr" / "bin" / "prometheus"
    if cached.exists():
        return cached
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        pytest.skip("no prometheus binary, and no apt-get/dpkg to fetch Debian's")
    with tempfile.TemporaryDirectory() as tmp:
        debs = glob.glob("/var/cache/apt/archives/prometheus_*.deb")
        if not debs:
            if _download(tmp).returncode != 0:
                # An empty or stale package list: refresh it once and retry.
                subprocess.run(["apt-get", "update"], capture_output=True, timeout=300)
                result = _download(tmp)
                if result.returncode != 0:
                    pytest.skip(
                        "cannot fetch Debian's prometheus package: "
                        + result.stderr.decode(errors="replace").strip()[-300:]
                    )
            debs = glob.glob(f"{tmp}/prometheus_*.deb")
        unpacked = Path(tmp) / "root"
        subprocess.run(["dpkg", "-x", debs[0], str(unpacked)], check=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        target = CACHE / "usr" / "bin"
        target.mkdir(parents=True, exist_ok=True)
        for tool in ("prometheus", "promtool"):
            shutil.copy2(unpacked / "usr" / "bin" / tool, target / tool)
    return cached


def _download(directory: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["apt-get", "download", "prometheus"],
        cwd=directory,
        capture_output=True,
        timeout=300,
    )


# -- expressions ------------------------------------------------------------------

_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
_SET_OPERATOR = re.compile(r"(and|or|unless)\b")
_MODIFIER = re.compile(
    r"^\s*(?:bool\b|(?:on|ignoring|group_left|group_right)\s*(?:\([^)]*\))?)\s*"
)
_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


def operands(expr: str) -> list[str]:
    """Split an expression at its top-level comparisons and set operators.

    ``a / b > 0.2 and on (x) c >= 5`` gives ``a / b`` and ``c``: the quantities
    an alert compares, which return data even while the alert is quiet.
    """
    parts: list[str] = []
    depth = 0
    quote: str | None = None
    start = i = 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            width = next((len(op) for op in _COMPARISONS if expr.startswith(op, i)), 0)
            if not width and (
                i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] == "_")
            ):
                match = _SET_OPERATOR.match(expr, i)
                width = len(match.group(0)) if match else 0
            if width:
                parts.append(expr[start:i])
                i += width
                start = i
                continue
        i += 1
    parts.append(expr[start:])
    cleaned = []
    for part in parts:
        while (stripped := _MODIFIER.sub("", part, count=1)) != part:
            part = stripped
        if part.strip() and not _NUMBER.match(part):
            cleaned.append(part.strip())
    return cleaned


def dashboard_queries(account_id: str) -> list[tuple[str, str]]:
    """Every (where, expression) of every panel and variable, variables filled."""
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(
                r"label_values\((.+),\s*(\w+)\)", variable["definition"]
            )
            assert match, (
                f"{path.name}: variable {variable['name']} is not label_values()"
            )
            found.append((f"{path.name} variable {variable['name']}", match.group(1)))
        for panel in _panels(board["panels"]):
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$account_id", account_id)
                expr = expr.replace("${account_id}", account_id)
                for name, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(name, value)
                assert "$" not in expr, f"{path.name}: unknown variable in {expr}"
                found.append((f"{path.name} / {panel['title']}", expr))
    return found


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def alert_rules() -> list[dict[str, Any]]:
    config = yaml.safe_load(ALERTS.read_text())
    return [rule for group in config["groups"] for rule in group["rules"]]


# -- Prometheus -------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as r:
            answer = json.loads(r.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[Any]:
        """Evaluate expr now; return its samples (a scalar counts as one)."""
        data = self.get("/api/v1/query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [data["result"]]
        return list(data["result"])

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        sample = result[0]
        return float(sample["value"][1] if isinstance(sample, dict) else sample[1])

    def wait_for(self, expr: str, check: Any, timeout: float = 60.0) -> float:
        """Wait until the single value of expr passes check; return it."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.value(expr)
                if check(last):
                    return last
            except AssertionError as exc:
                last = exc
            time.sleep(0.5)
        raise AssertionError(f"{expr}: last {last!r}")


@pytest.fixture
def prometheus_for(processes: Processes, tmp_path: Path) -> Any:
    """Start Prometheus scraping the given API port with the shipped alert rules."""
    binary = prometheus_binary()

    def start(api_port: int) -> Prometheus:
        shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        config = {
            **shipped,
            # Scrape and evaluate every second, so rate() has samples in seconds.
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "sesame-api",
                    "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}],
                }
            ],
        }
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        web = port()
        log = tmp_path / "prometheus.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [
                    str(binary),
                    f"--config.file={path}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{web}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        processes.running.append(Process("prometheus", popen, log))
        wait_until_http(f"http://127.0.0.1:{web}/-/ready", processes)
        return Prometheus(f"http://127.0.0.1:{web}")

    return start


# -- the test ---------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_every_dashboard_and_alert_query_returns_data(
    ops_database: str,
    ops_redis: str,
    processes: Processes,
    prometheus_for: Any,
    delivery_port: int,
    tmp_path: Path,
) -> None:
    sink = SmtpSink(
        "127.0.0.2",
        delivery_port,
        rcpt_replies={
            "hard@dest.test": "550 5.1.1 No such user",
            "soft@dest.test": "451 4.2.0 Try again later",
        },
    )
    sink.start()
    try:
        _run(ops_database, ops_redis, processes, prometheus_for, sink, tmp_path)
    finally:
        sink.stop()


def _run(
    database_url: str,
    redis_url: str,
    processes: Processes,
    prometheus_for: Any,
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    api, smtp_port, smtps_port, mx_port = port(), port(), port(), port()
    env = sesame_env(
        database_url,
        redis_url,
        tmp_path / "data",
        api_port=api,
        api_workers=2,  # two uvicorn processes: /metrics must sum them
        smtp_port=smtp_port,
        smtps_port=smtps_port,
        mx_port=mx_port,
        workers=2,
        smarthost=f"{sink.host}:{sink.port}",
        hostname="mx.sesame.test",
        mail_from_domain=VERP_DOMAIN,
        sweep_seconds=1,
        metrics_account_seconds=1,
        reputation_evaluate_seconds=2,
    )
    processes.start("sesame-up", env, "up")
    base = f"http://127.0.0.1:{api}"
    wait_until_http(f"{base}/readyz", processes)
    wait_until_listening("127.0.0.1", smtp_port, processes)
    wait_until_listening("127.0.0.1", mx_port, processes)
    prometheus = prometheus_for(api)

    created = sesame(env, "account", "create", "ops", "--production")
    account = created["AccountId"]
    sesame(env, "account", "set-quota", account, "--max-send-rate", "100")
    ses = boto3.client(
        "ses",
        endpoint_url=base,
        region_name="us-east-1",
        aws_access_key_id=created["AccessKeyId"],
        aws_secret_access_key=created["SecretAccessKey"],
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    ses.verify_domain_identity(Domain="example.com")
    ses.verify_domain_dkim(Domain="example.com")
    verify_domain(database_url, account, "example.com")

    # API traffic: delivered, hard-bounced, deferred; and refusals.
    delivered = 6
    for i in range(delivered):
        _send(ses, f"ok{i}@dest.test")
    _send(ses, "hard@dest.test")
    _send(ses, "soft@dest.test")
    with pytest.raises(ses.exceptions.MessageRejected):
        ses.send_email(**_message("someone@unverified.test", "ok@dest.test"))
    ses.get_send_quota()

    # SMTP submission: one refused AUTH, one message accepted.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
        client.starttls(context=context)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login(created["SmtpUsername"], "wrong-password")
    with smtplib.SMTP_SSL(
        "127.0.0.1", smtps_port, timeout=10, context=context
    ) as client:
        client.login(created["SmtpUsername"], created["SmtpPassword"])
        mail = EmailMessage()
        mail["From"] = "shop@example.com"
        mail["To"] = "smtp@dest.test"
        mail["Subject"] = "Over SMTP"
        mail.set_content("Sent over SMTP submission.")
        client.send_message(mail)
    delivered += 1

    # hard@ and soft@ are refused at RCPT, so only the deliveries arrive.
    received = sink.wait_for(delivered, timeout=60)
    assert all(b"DKIM-Signature:" in m.data for m in received), "not DKIM-signed"

    # A complaint about one delivered message, through the inbound MX.
    token = received[0].mail_from
    assert token.endswith("@" + VERP_DOMAIN)
    report = (
        (CORPUS / "arf_abuse.eml").read_bytes().replace(PLACEHOLDER, token.encode())
    )
    with smtplib.SMTP("127.0.0.1", mx_port, timeout=10) as client:
        client.sendmail("", [token], re.sub(rb"\r?\n", b"\r\n", report))

    # Wait for the scrapes to show it all, summed over every process.
    ok = 'outcome="Success"'
    prometheus.wait_for(
        f'sum(sesame_api_requests_total{{action="SendEmail",{ok}}})',
        lambda v: v == 8,
    )
    prometheus.wait_for(
        'sum(sesame_recipients_total{outcome="delivered"})', lambda v: v == delivered
    )
    prometheus.wait_for(
        'sum(sesame_delivery_attempts_total{outcome="failed",status_class="5"})',
        lambda v: v == 1,
    )
    prometheus.wait_for(
        'sum(sesame_delivery_attempts_total{outcome="deferred",status_class="4"})',
        lambda v: v == 1,
    )
    prometheus.wait_for(
        f'sum(sesame_events_total{{account_id="{account}",type="complaint"}})',
        lambda v: v == 1,
    )
    prometheus.wait_for(
        f'sum(sesame_events_total{{account_id="{account}",type="send"}})',
        lambda v: v == delivered + 2,
    )
    prometheus.wait_for(
        f'max(sesame_account_quota_sent_recipients{{account_id="{account}"}})',
        lambda v: v == delivered + 2,
    )
    prometheus.wait_for("sum(sesame_dkim_sign_seconds_count)", lambda v: v >= delivered)
    # smtplib tries each mechanism the server offers before giving up.
    prometheus.wait_for(
        'sum(sesame_smtp_auth_total{result="invalid"})', lambda v: v >= 1
    )
    prometheus.wait_for(
        'sum(sesame_messages_accepted_total{interface="smtp"})', lambda v: v == 1
    )
    prometheus.wait_for(
        'sum(sesame_mx_reports_total{kind="arf",result="attributed"})', lambda v: v == 1
    )
    prometheus.wait_for(
        'max(sesame_queue_recipients{state="deferred"})', lambda v: v == 1
    )
    components = {
        s["metric"]["component"]
        for s in prometheus.query("sesame_component_heartbeat_timestamp_seconds")
    }
    assert components == {"api", "smtp", "mx", "worker", "scheduler"}
    # rate() needs two samples inside its window after the last change.
    time.sleep(3)

    names = set(prometheus.get("/api/v1/label/__name__/values"))
    empty = []
    queries = dashboard_queries(account)
    for rule in alert_rules():
        queries += [(f"alert {rule['alert']}", part) for part in operands(rule["expr"])]
    assert len(queries) > 40
    for where, expr in queries:
        for name in set(re.findall(r"\bsesame_\w+", expr)):
            assert name in names, f"{where}: no metric {name} in {expr}"
        if not prometheus.query(expr):
            empty.append(f"{where}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)

    # Prometheus itself evaluated every rule without error.
    groups = prometheus.get("/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
    assert all(r["health"] == "ok" for r in rules), [
        (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
    ]
    version = prometheus.get("/api/v1/status/buildinfo")["version"]
    print(f"evaluated {len(queries)} queries on Prometheus {version}")


def _message(source: str, to: str) -> dict[str, Any]:
    return {
        "Source": source,
        "Destination": {"ToAddresses": [to]},
        "Message": {
            "Subject": {"Data": "Hello"},
            "Body": {"Text": {"Data": "Metrics test."}},
        },
    }


def _send(ses: Any, to: str) -> None:
    ses.send_email(**_message("shop@example.com", to))


def test_operands_split_at_top_level_comparisons_only() -> None:
    expr = (
        'sum(rate(x{a!="b",c=~"d|e"}[5m])) / sum(rate(x[5m])) > 0.2\n'
        "and on (account_id) max by (account_id) (y) >= 500"
    )
    assert operands(expr) == [
        'sum(rate(x{a!="b",c=~"d|e"}[5m])) / sum(rate(x[5m]))',
        "max by (account_id) (y)",
    ]
    assert operands("time() - max(z) > 60") == ["time() - max(z)"]
    assert operands('up{job=~"sesame.*"} == 0') == ['up{job=~"sesame.*"}']
    assert operands("sum by (operand) (x)") == ["sum by (operand) (x)"]


# -- the deployment files, parsed -------------------------------------------------

COMPONENTS = {"api", "smtp", "mx", "worker", "scheduler"}


def _setting_names() -> set[str]:
    from sesame.settings import Settings

    return {"SESAME_" + name.upper() for name in Settings.model_fields}


def test_dashboards_parse_and_show_the_policy_thresholds() -> None:
    assert {p.name for p in DASHBOARDS} == {
        "sesame-overview.json",
        "sesame-account.json",
    }
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
        panels = list(_panels(board["panels"]))
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in panels:
            if panel["type"] == "row":
                continue
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["type"] == "prometheus"
                assert target["expr"].strip()
    account = json.loads(
        (DEPLOY / "grafana/dashboards/sesame-account.json").read_text()
    )
    variables = {v["name"]: v for v in account["templating"]["list"]}
    assert variables["account_id"]["type"] == "query"
    lines = {}
    for panel in _panels(account["panels"]):
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        style = defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode")
        if style == "line":
            steps = defaults["thresholds"]["steps"]
            lines[panel["title"]] = [
                s["value"] for s in steps if s["value"] is not None
            ]
        for target in panel.get("targets", []):
            assert "$account_id" in target["expr"], panel["title"]
    assert lines["Bounce rate"] == [0.05, 0.10]
    assert lines["Complaint rate"] == [0.001, 0.005]


def test_grafana_provisioning_and_prometheus_config_parse(tmp_path: Path) -> None:
    grafana = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((grafana / "datasources" / "prometheus.yaml").read_text())
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http://")
    providers = yaml.safe_load((grafana / "dashboards" / "sesame.yaml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"

    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {f"sesame-{c}" for c in COMPONENTS} <= jobs
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert alert_rules(), "no alert rules"
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"]

    promtool = prometheus_binary().parent / "promtool"
    if not promtool.exists():
        promtool = Path(shutil.which("promtool") or "/nonexistent")
    if promtool.exists():
        checked = subprocess.run(
            [str(promtool), "check", "rules", str(ALERTS)], capture_output=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        local = tmp_path / "prometheus.yml"
        local.write_text(yaml.safe_dump({**config, "rule_files": [str(ALERTS)]}))
        checked = subprocess.run(
            [str(promtool), "check", "config", str(local)], capture_output=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_compose_file_parses_and_runs_every_component() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert COMPONENTS | {"postgres", "redis", "prometheus", "grafana"} <= set(services)
    settings = _setting_names()
    for name in COMPONENTS:
        service = services[name]
        assert service["command"] == [name]
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert (DEPLOY / service["build"]["context"] / "Dockerfile").exists()
        unknown = set(service["environment"]) - settings
        assert not unknown, f"{name}: not settings: {unknown}"
        assert "SESAME_SECRET_KEY" in service["environment"]
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name}: {source} is missing"


def test_kubernetes_manifests_parse_with_probes_config_and_secret() -> None:
    documents = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                assert document["apiVersion"] and document["metadata"]["name"]
                documents.append(document)
    kinds: dict[str, dict[str, Any]] = {}
    for document in documents:
        kinds.setdefault(document["kind"], {})[document["metadata"]["name"]] = document
    config = kinds["ConfigMap"]["sesame-config"]
    unknown = set(config["data"]) - _setting_names()
    assert not unknown, f"ConfigMap keys that are not settings: {unknown}"
    assert "SESAME_SECRET_KEY" in kinds["Secret"]["sesame-secret"]["stringData"]
    deployments = kinds["Deployment"]
    assert {f"sesame-{c}" for c in COMPONENTS} == set(deployments)
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        [container] = spec["template"]["spec"]["containers"]
        assert container["args"] == [name.removeprefix("sesame-")]
        refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {"sesame-config", "sesame-secret"}
        ports = {p["name"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            check = container[probe]
            named = (check.get("httpGet") or check.get("tcpSocket"))["port"]
            assert named in ports, f"{name} {probe}: no port {named}"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    api = deployments["sesame-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for service in kinds["Service"].values():
        selector = service["spec"]["selector"]
        assert any(
            selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            for d in deployments.values()
        ), service["metadata"]["name"]


def test_dockerfile_runs_sesame_as_a_non_root_user() -> None:
    lines = [
        line.strip()
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["sesame"]' in lines
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"COPY {source}: missing"
