"""The Helm chart in helm/rua-sink: rendered offline, linted, and every object validated.

The chart is rendered with helm-python-sdk (Helm's Go SDK as a shared library, no helm
binary needed), the same engine as ``helm template`` and ``helm lint``. Rendered objects are
checked against the Kubernetes 1.30 OpenAPI schemas with kubernetes-validate (strict); the
ServiceMonitor and PrometheusRule are CRDs it has no schema for: they are checked here
field by field instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from .conftest import ROOT

CHART = ROOT / "helm" / "rua-sink"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
KUBERNETES = "1.30.0"
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
VALUES_FILES = (
    {"defaults": None}
    | {p.stem: p for p in sorted((CHART / "ci").glob("*-values.yaml"))}
    | {"production-example": ROOT / "deploy" / "values-production.yaml"}
)

Manifest = dict[str, Any]


def _load_values(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    loaded: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    return loaded


def _render(values: dict[str, Any]) -> dict[str, str]:
    """``helm template rua-sink helm/rua-sink -n mail -f VALUES``, schema check included."""
    chart = helm.Chart.load(CHART)
    chart.validate_schema(values)
    rendered: dict[str, str] = chart.render(
        values, name="rua-sink", namespace="mail", is_install=True
    )
    return rendered


def _objects(rendered: dict[str, str]) -> list[Manifest]:
    objects: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def _one(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and name in {None, o["metadata"]["name"]}]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in found])
    return found[0]


@pytest.fixture(scope="module", params=sorted(VALUES_FILES))
def rendered(request: pytest.FixtureRequest) -> dict[str, str]:
    return _render(_load_values(VALUES_FILES[request.param]))


@pytest.fixture(scope="module")
def full() -> list[Manifest]:
    return _objects(_render(_load_values(CHART / "ci" / "full-values.yaml")))


@pytest.fixture(scope="module")
def defaults() -> list[Manifest]:
    return _objects(_render({}))


def _pod_specs(objects: list[Manifest]) -> Iterator[Manifest]:
    """The pod spec of every workload: the Deployment, the Jobs, the CronJob's jobs."""
    for obj in objects:
        if obj["kind"] in {"Deployment", "Job"}:
            yield obj["spec"]["template"]["spec"]
        elif obj["kind"] == "CronJob":
            yield obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _containers(pod_spec: Manifest) -> Iterator[Manifest]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec["containers"]


def test_ci_values_cover_defaults_and_everything() -> None:
    assert set(VALUES_FILES) == {
        "defaults",
        "default-values",
        "full-values",
        "no-prune-values",
        "production-example",
    }


@pytest.mark.parametrize("name", sorted(VALUES_FILES))
def test_lint(name: str) -> None:
    report = helm.lint(CHART, _load_values(VALUES_FILES[name]), strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    # severity 1 is informational ("icon is recommended"); 2 and 3 are warnings and errors
    assert [m for m in report["messages"] if m["severity"] > 1] == []


def test_every_object_is_valid_kubernetes_1_30(rendered: dict[str, str]) -> None:
    objects = _objects(rendered)
    assert objects
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue  # no OpenAPI schema in kubernetes-validate: see test_crds
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "rua-sink"
        assert labels["app.kubernetes.io/version"] == "0.1.0"


def test_pod_hardening_and_probes(rendered: dict[str, str]) -> None:
    objects = _objects(rendered)
    deployment = _one(objects, "Deployment")
    pods = list(_pod_specs(objects))
    assert len(pods) >= 2  # the server and the migration, and prune unless switched off
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
        for container in _containers(pod):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # noqa: S108
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"


def test_shutdown_fits_the_grace_period(defaults: list[Manifest]) -> None:
    pod = _one(defaults, "Deployment")["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert server["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert env["RUA_SINK_SHUTDOWN_GRACE"] == "25"
    assert pod["terminationGracePeriodSeconds"] == 40 > 5 + 25


def test_smtp_service_and_ports(rendered: dict[str, str]) -> None:
    objects = _objects(rendered)
    service = _one(objects, "Service", "rua-sink")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"] == [
        {"name": "smtp", "port": 25, "targetPort": "smtp", "protocol": "TCP"}
    ]
    (server,) = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"smtp": 2525, "http": 9102}
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["RUA_SINK_SMTP_LISTEN"] == "0.0.0.0:2525"
    assert env["RUA_SINK_HTTP_LISTEN"] == "0.0.0.0:9102"
    metrics = _one(objects, "Service", "rua-sink-metrics")
    assert metrics["spec"]["type"] == "ClusterIP"
    assert metrics["spec"]["ports"][0]["port"] == 9102


def test_default_traffic_policy_is_local(defaults: list[Manifest]) -> None:
    assert _one(defaults, "Service", "rua-sink")["spec"]["externalTrafficPolicy"] == "Local"


def test_database_secret_is_mounted_as_a_file(rendered: dict[str, str]) -> None:
    for pod in _pod_specs(_objects(rendered)):
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert "RUA_SINK_DATABASE_URL" not in env
        url_file = Path(env["RUA_SINK_DATABASE_URL_FILE"])
        mount = next(m for m in container["volumeMounts"] if m["name"] == "database")
        assert url_file.parent == Path(mount["mountPath"])
        volume = next(v for v in pod["volumes"] if v["name"] == "database")
        assert volume["secret"]["items"] == [{"key": url_file.name, "path": url_file.name}]


def test_created_secret_only_from_a_url() -> None:
    url = "postgresql://u:p@db:5432/rua"
    created = _objects(_render({"database": {"url": url}}))
    secret = _one(created, "Secret")
    assert secret["stringData"] == {"url": url}
    # the migration hook needs it before the release's own objects exist
    assert secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    existing = _objects(_render({"database": {"url": url, "existingSecret": "mine"}}))
    assert [o for o in existing if o["kind"] == "Secret"] == []


def test_full_values_wire_tls_proxy_and_extra_env(full: list[Manifest]) -> None:
    (server,) = _one(full, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["RUA_SINK_DATABASE_URL_FILE"] == "/etc/rua-sink/database/database-url"
    assert env["RUA_SINK_TLS_CERT"] == "/etc/rua-sink/tls/tls.crt"
    assert env["RUA_SINK_TLS_KEY"] == "/etc/rua-sink/tls/tls.key"
    assert env["RUA_SINK_PROXY_PROTOCOL_FROM"] == "10.0.0.0/8,fd00::/8"
    assert env["RUA_SINK_ADDRESSES"] == "dmarc@rua.example.net,*@reports.example.org"
    assert env["RUA_SINK_UNAUTHORIZED"] == "flag"
    assert env["RUA_SINK_FAILURE_ADDRESSES"] == "ruf@rua.example.net"
    kinds = {o["kind"] for o in full}
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds
    assert "replicas" not in _one(full, "Deployment")["spec"]  # the HPA owns it


IP_DATABASES = "/var/lib/rua-sink/ip-databases"


def _ip_databases(objects: list[Manifest]) -> tuple[str | None, Any, Any]:
    """RUA_SINK_IP_DATABASES, the mount and the volume of the IP databases."""
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in server["env"]}
    mounts = [m for m in server["volumeMounts"] if m["name"] == "ip-databases"]
    volumes = [v for v in pod["volumes"] if v["name"] == "ip-databases"]
    return env.get("RUA_SINK_IP_DATABASES"), mounts, volumes


def test_ip_databases_from_a_claim_or_any_volume(
    defaults: list[Manifest], full: list[Manifest]
) -> None:
    assert _ip_databases(defaults) == (None, [], [])
    setting, mounts, volumes = _ip_databases(full)
    assert setting == f"{IP_DATABASES}/GeoLite2-City.mmdb,{IP_DATABASES}/GeoLite2-ASN.mmdb"
    assert mounts == [{"name": "ip-databases", "mountPath": IP_DATABASES, "readOnly": True}]
    assert volumes == [
        {"name": "ip-databases", "persistentVolumeClaim": {"claimName": "geoip", "readOnly": True}}
    ]
    secret = {"secret": {"secretName": "dbip-lite", "defaultMode": 292}}
    objects = _objects(
        _render({"ipDatabases": {"files": ["dbip-country-lite.mmdb"], "volume": secret}})
    )
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    setting, mounts, volumes = _ip_databases(objects)
    assert setting == f"{IP_DATABASES}/dbip-country-lite.mmdb"
    assert volumes == [{"name": "ip-databases", **secret}]
    with pytest.raises(helm.HelmError, match=r"ipDatabases\.files needs"):
        _render({"ipDatabases": {"files": ["GeoLite2-ASN.mmdb"]}})


def test_network_policy(full: list[Manifest]) -> None:
    spec = _one(full, "NetworkPolicy", "rua-sink")["spec"]
    smtp, metrics = spec["ingress"]
    assert "from" not in smtp and smtp["ports"] == [{"port": 2525, "protocol": "TCP"}]
    assert metrics["ports"] == [{"port": 9102, "protocol": "TCP"}]
    assert metrics["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "observability"
    }
    egress_ports = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
    assert egress_ports == {(53, "UDP"), (53, "TCP"), (5432, "TCP")}


def test_toggles_are_off_by_default(defaults: list[Manifest]) -> None:
    kinds = {o["kind"] for o in defaults}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "HorizontalPodAutoscaler"}
    assert "NetworkPolicy" not in kinds
    assert "PodDisruptionBudget" in kinds  # two replicas by default
    single = _objects(_render({"replicaCount": 1}))
    assert "PodDisruptionBudget" not in {o["kind"] for o in single}


def test_migration_job_is_a_hook(rendered: dict[str, str]) -> None:
    job = _one(_objects(rendered), "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(annotations["helm.sh/hook-weight"]) < 0
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    # During an upgrade its pod runs beside the servers: no Service may send it mail or
    # scrapes, and the server's NetworkPolicy is not its.
    objects = _objects(rendered)
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "migrate"
    for service in (o for o in objects if o["kind"] == "Service"):
        assert not _selects(service["spec"]["selector"], labels), service["metadata"]["name"]
    assert not _selects(_one(objects, "Deployment")["spec"]["selector"]["matchLabels"], labels)


def test_jobs_network_policy_covers_migrate(full: list[Manifest]) -> None:
    job = _one(full, "Job")["spec"]["template"]["metadata"]["labels"]
    policy = _one(full, "NetworkPolicy", "rua-sink-jobs")["spec"]
    assert _selects(policy["podSelector"]["matchLabels"], job)
    server_policy = _one(full, "NetworkPolicy", "rua-sink")["spec"]["podSelector"]
    assert not _selects(server_policy["matchLabels"], job)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_prune_cronjob_by_default(defaults: list[Manifest]) -> None:
    cron = _one(defaults, "CronJob", "rua-sink-prune")
    spec = cron["spec"]
    assert spec["schedule"] == "30 4 * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert "timeZone" not in spec
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["args"] == ["prune", "--older-than", "400d", "--failure-older-than", "30d"]
    assert container["resources"]["limits"]["memory"] == "256Mi"
    # The same hardening and database wiring as the server's, from the same helpers.
    server_pod = _one(defaults, "Deployment")["spec"]["template"]["spec"]
    (server,) = server_pod["containers"]
    assert pod["securityContext"] == server_pod["securityContext"]
    assert container["securityContext"] == server["securityContext"]
    url_file = [e for e in server["env"] if e["name"] == "RUA_SINK_DATABASE_URL_FILE"]
    assert container["env"] == url_file
    assert container["volumeMounts"] == [
        m for m in server["volumeMounts"] if m["name"] in {"tmp", "database"}
    ]
    database = next(v for v in server_pod["volumes"] if v["name"] == "database")
    assert database in pod["volumes"]
    # Its pods are nobody's endpoints: the Services must not send them mail or scrapes.
    labels = spec["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    for service in (o for o in defaults if o["kind"] == "Service"):
        assert not _selects(service["spec"]["selector"], labels), service["metadata"]["name"]
    selector = _one(defaults, "Deployment")["spec"]["selector"]["matchLabels"]
    assert not _selects(selector, labels)


def test_prune_values_reach_the_cronjob(full: list[Manifest]) -> None:
    spec = _one(full, "CronJob")["spec"]
    assert (spec["schedule"], spec["timeZone"]) == ("15 2 * * *", "Europe/Paris")
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] == 7200
    job = spec["jobTemplate"]["spec"]
    assert (job["backoffLimit"], job["activeDeadlineSeconds"]) == (1, 1800)
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["prune", "--older-than", "2y", "--failure-older-than", "14d"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RUA_SINK_DATABASE_URL_FILE"] == "/etc/rua-sink/database/database-url"
    assert env["RUA_SINK_UNAUTHORIZED"] == "flag"  # extraEnv, as the server has it
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    # With the NetworkPolicy on, the jobs' pods get one of their own: out to DNS and the
    # database only, nothing in.
    policy = _one(full, "NetworkPolicy", "rua-sink-jobs")["spec"]
    assert _selects(policy["podSelector"]["matchLabels"], job["template"]["metadata"]["labels"])
    assert "ingress" not in policy and policy["policyTypes"] == ["Ingress", "Egress"]
    egress = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress == {(53, "UDP"), (53, "TCP"), (5432, "TCP")}
    server_policy = _one(full, "NetworkPolicy", "rua-sink")["spec"]["podSelector"]
    assert not _selects(server_policy["matchLabels"], job["template"]["metadata"]["labels"])


def test_prune_switched_off() -> None:
    values = _load_values(CHART / "ci" / "no-prune-values.yaml")
    assert values["prune"] == {"enabled": False}
    objects = _objects(_render(values | {"networkPolicy": {"enabled": True}}))
    assert "CronJob" not in {o["kind"] for o in objects}
    policies = [o["metadata"]["name"] for o in objects if o["kind"] == "NetworkPolicy"]
    assert policies == ["rua-sink", "rua-sink-jobs"]  # the migrate Job's remains
    both_off = values | {"networkPolicy": {"enabled": True}, "migration": {"enabled": False}}
    objects = _objects(_render(both_off))
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "NetworkPolicy"] == ["rua-sink"]


def test_dashboards_configmap(rendered: dict[str, str]) -> None:
    configmap = _one(_objects(rendered), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    sources = {p.name: p.read_text() for p in sorted(DASHBOARDS.glob("*.json"))}
    assert len(sources) == 4
    assert configmap["data"] == sources


def test_dashboard_copies_are_byte_identical() -> None:
    copies = sorted(p.name for p in (CHART / "files" / "dashboards").iterdir())
    assert copies == sorted(p.name for p in DASHBOARDS.iterdir())
    for name in copies:
        assert (CHART / "files" / "dashboards" / name).read_bytes() == (
            DASHBOARDS / name
        ).read_bytes(), name


def test_rules_copy_is_byte_identical() -> None:
    assert (CHART / "files" / "rules.yaml").read_bytes() == RULES.read_bytes()


def test_crds(full: list[Manifest]) -> None:
    rule = _one(full, "PrometheusRule")
    assert rule["spec"] == {"groups": yaml.safe_load(RULES.read_text())["groups"]}
    monitor = _one(full, "ServiceMonitor")
    metrics_service = _one(full, "Service", "rua-sink-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= metrics_service["metadata"]["labels"].items()
    assert not selector.items() <= _one(full, "Service", "rua-sink")["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == metrics_service["spec"]["ports"][0]["name"]
    # the alert rules select job="rua-sink": the job label comes from the service's name label
    assert metrics_service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "rua-sink"


def test_notes_print_the_dns_records() -> None:
    values = _load_values(CHART / "ci" / "full-values.yaml")
    notes = _render(values)["rua-sink/templates/NOTES.txt"]
    for domain in ("rua.example.net", "reports.example.org"):
        assert f"{domain}.  MX  10 LB_HOST." in notes
        assert f'*._report._dmarc.{domain}.  TXT  "v=DMARC1;"' in notes
        assert f'example.com._report._dmarc.{domain}.  TXT  "v=DMARC1;"' in notes
    notes = _render({})["rua-sink/templates/NOTES.txt"]
    assert '<policy-domain>._report._dmarc.rua.example.net.  TXT  "v=DMARC1;"' in notes


@pytest.mark.parametrize(
    "values",
    [
        {"bogus": 1},
        {"service": {"bogus": 1}},
        {"metrics": {"serviceMonitor": {"enabled": True, "bogus": 1}}},
        {"database": {"url": "mysql://nope"}},
        {"service": {"externalTrafficPolicy": "Nearest"}},
        {"prune": {"bogus": 1}},
        {"prune": {"retention": "400 days"}},
        {"prune": {"failureRetention": "1h"}},
        {"prune": {"schedule": "daily"}},
        {"prune": {"enabled": "yes"}},
        {"ipDatabases": {"bogus": 1}},
        {"ipDatabases": {"files": ["a.mmdb,b.mmdb"]}},
        {"ipDatabases": {"files": ["/etc/passwd"]}},
    ],
)
def test_schema_rejects_unknown_keys_and_bad_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError, match="rua-sink"):
        helm.Chart.load(CHART).validate_schema(values)
    with pytest.raises(helm.HelmError, match="schema"):  # helm template --set bogus=1
        helm.Chart.load(CHART).render(values, name="rua-sink", namespace="mail")
    # the same verdict as helm lint's (and helm install's) schema check
    assert any("schema" in error for error in helm.lint(CHART, values)["errors"])


def test_values_files_match_the_schema_and_it_is_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    validator.validate(defaults)
    assert set(schema["properties"]) == set(defaults)
    for path in VALUES_FILES.values():
        if path is not None:
            merged = _merge(defaults, _load_values(path))
            validator.validate(merged)
    assert not validator.is_valid(defaults | {"bogus": 1})

    def closed(node: dict[str, Any], where: str) -> Iterator[str]:
        if "properties" in node and node.get("additionalProperties") is not False:
            yield where
        for key, child in node.get("properties", {}).items():
            yield from closed(child, f"{where}.{key}")

    assert list(closed(schema, "values")) == []


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["appVersion"] == "0.1.0"
