"""Cross-checks of deploy/ that no single tool makes (run by scripts/check-deploy, in the
kubernetes-validate virtualenv for PyYAML and jsonschema).

- The Grafana dashboard and the Prometheus rules name only series that /metrics exports
  (worker/src/metrics.rs, worker/src/http/metrics.rs) (a renamed metric would leave a panel empty and an
  alert silent, and neither tool notices).
- The drain: every deployment gives a stopping worker [worker] shutdown_timeout_secs plus
  30 s before it is killed (compose stop_grace_period, systemd TimeoutStopSec, Kubernetes
  terminationGracePeriodSeconds), each against the config file it runs with.
- Probes: readiness on /readyz, liveness on /healthz; compose health checks on /readyz.
- Redis in compose keeps an append-only file fsynced every second.
- The systemd unit has the hardening the README promises.
- KEDA's ScaledObject and TriggerAuthentication against the fields KEDA documents for them
  (they are not Kubernetes kinds, so kubernetes-validate has no schema), and the scaler
  watches the queued list of the queue the workers are configured with.
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DRAIN_MARGIN_SECS = 30
problems: list[str] = []


def problem(where: str, what: str) -> None:
    problems.append(f"{where}: {what}")


METRICS_SOURCES = ("worker/src/metrics.rs", "worker/src/http/metrics.rs")


def exported_series() -> set[str]:
    """Every series name /metrics can carry: counters, gauges, and each histogram's
    _bucket, _sum and _count. The process's own are defined in worker/src/metrics.rs, the
    queue's in worker/src/http/metrics.rs."""
    source = "".join((ROOT / path).read_text() for path in METRICS_SOURCES if (ROOT / path).exists())
    names = set(re.findall(r'"(atr_dist_[a-z_]+)"', source))
    histograms = set(re.findall(r'histogram\(\s*"(atr_dist_[a-z_]+)"', source))
    for h in histograms:
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names - histograms


def check_metric_names() -> None:
    known = exported_series()
    if len(known) < 10:
        problem(" and ".join(METRICS_SOURCES), f"found only {sorted(known)}: have the files changed shape?")
    exprs: list[tuple[str, str]] = []
    dashboard = json.loads((DEPLOY / "grafana/atr-dist.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        problem("deploy/grafana/atr-dist.json", f"panel ids repeat: {ids}")
    for panel in dashboard["panels"]:
        if not panel.get("targets"):
            problem("deploy/grafana/atr-dist.json", f"panel {panel['title']!r} has no query")
        for target in panel.get("targets", []):
            exprs.append((f"deploy/grafana/atr-dist.json panel {panel['title']!r}", target["expr"]))
    for var in dashboard["templating"]["list"]:
        if "definition" in var:
            exprs.append(("deploy/grafana/atr-dist.json variable " + var["name"], var["definition"]))
    rules = yaml.safe_load((DEPLOY / "prometheus/atr-dist.rules.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            exprs.append((f"deploy/prometheus alert {rule['alert']}", rule["expr"]))
            summary = rule.get("annotations", {}).get("summary", "")
            if len(summary) < 20:
                problem(f"deploy/prometheus alert {rule['alert']}", "needs a summary an operator can act on")
    for where, expr in exprs:
        for name in set(re.findall(r"\batr_dist_[a-z_]+", expr)):
            if name not in known:
                problem(where, f"{name} is not exported (worker/src/metrics.rs, worker/src/http/metrics.rs)")


def seconds(value: str | int) -> int:
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(\d+)(s|m)?", str(value).strip())
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def expect_grace(where: str, grace: int, config: dict, config_where: str) -> None:
    drain = config.get("worker", {}).get("shutdown_timeout_secs")
    if drain is None:
        problem(config_where, "set [worker] shutdown_timeout_secs (the drain the grace period is made for)")
        return
    if grace != drain + DRAIN_MARGIN_SECS:
        problem(
            where,
            f"grace period {grace}s; the drain is {drain}s ({config_where}), so it should be "
            f"{drain + DRAIN_MARGIN_SECS}s (drain + {DRAIN_MARGIN_SECS}s to record and hand back)",
        )


def check_compose() -> None:
    where = "deploy/compose/compose.yaml"
    compose = yaml.safe_load((DEPLOY / "compose/compose.yaml").read_text())
    config = tomllib.loads((DEPLOY / "compose/atr-dist.toml").read_text())
    services = compose["services"]
    worker = services["worker"]
    expect_grace(f"{where} worker", seconds(worker["stop_grace_period"]), config, "deploy/compose/atr-dist.toml")
    for name in ("worker", "operator"):
        test = " ".join(services[name].get("healthcheck", {}).get("test", []))
        if "/readyz" not in test:
            problem(f"{where} {name}", "its health check must ask /readyz")
    redis = " ".join(services["redis"]["entrypoint"])
    for flag in ("--appendonly yes", "--appendfsync everysec"):
        if flag not in redis:
            problem(f"{where} redis", f"must run with {flag}")
    if config.get("database", {}).get("url", "").startswith("sqlite"):
        problem("deploy/compose/atr-dist.toml", "several workers need PostgreSQL, not SQLite")
    for key in ("password", "token", "admin_token"):
        for section in config.values():
            if isinstance(section, dict) and key in section:
                problem("deploy/compose/atr-dist.toml", f"secret {key} written in the file")


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def check_systemd() -> None:
    where = "deploy/systemd/atr-dist.service"
    unit = unit_settings(DEPLOY / "systemd/atr-dist.service")
    config = tomllib.loads((DEPLOY / "systemd/atr-dist.toml").read_text())
    for key, value in (
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("KillSignal", "SIGTERM"),
    ):
        if unit.get(key) != [value]:
            problem(where, f"needs {key}={value}, has {unit.get(key)}")
    if not unit.get("LoadCredential"):
        problem(where, "secrets must come through LoadCredential=")
    for env in unit.get("Environment", []):
        if re.search(r"(PASSWORD|TOKEN)=", env):
            problem(where, f"a secret's value in the environment: {env.split('=')[0]}")
    expect_grace(where, seconds(unit["TimeoutStopSec"][0]), config, "deploy/systemd/atr-dist.toml")


# KEDA's fields as its documentation describes them (ScaledObject spec, the redis and
# redis-cluster scalers, TriggerAuthentication secretTargetRef), for what these manifests use;
# additionalProperties false catches a misspelt field, which KEDA's CRD would refuse.
KEDA_SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"enum": ["redis", "redis-cluster"]},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                            },
                            "metadata": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["listName", "listLength"],
                                "properties": {
                                    key: {"type": "string"}
                                    for key in (
                                        "address", "addressFromEnv", "addresses", "addressesFromEnv",
                                        "host", "hostFromEnv", "hosts", "port", "portFromEnv", "ports",
                                        "usernameFromEnv", "passwordFromEnv", "listName", "listLength",
                                        "activationListLength", "enableTLS", "unsafeSsl", "databaseIndex",
                                    )
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}

KEDA_TRIGGER_AUTHENTICATION = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["parameter", "name", "key"],
                        "properties": {
                            "parameter": {"enum": ["username", "password", "tls", "ca", "cert", "key"]},
                            "name": {"type": "string"},
                            "key": {"type": "string"},
                        },
                    },
                },
                "env": {"type": "array"},
            },
        },
    },
}


def check_kubernetes() -> None:
    docs = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[(doc["kind"], doc["metadata"]["name"])] = (path.name, doc)
    configmap = docs[("ConfigMap", "atr-dist")][1]
    config = tomllib.loads(configmap["data"]["atr-dist.toml"])
    worker_file, worker = docs[("Deployment", "atr-dist-worker")]
    pod = worker["spec"]["template"]["spec"]
    where = f"deploy/kubernetes/{worker_file}"
    expect_grace(where, pod["terminationGracePeriodSeconds"], config, "deploy/kubernetes/configmap.yaml")
    for name in ("atr-dist-worker", "atr-dist-operator"):
        for container in docs[("Deployment", name)][1]["spec"]["template"]["spec"]["containers"]:
            ready = container.get("readinessProbe", {}).get("httpGet", {}).get("path")
            live = container.get("livenessProbe", {}).get("httpGet", {}).get("path")
            if (ready, live) != ("/readyz", "/healthz"):
                problem(f"deployment {name}", f"probes: readiness {ready}, liveness {live}; want /readyz and /healthz")
            if "cpu" in container.get("resources", {}).get("limits", {}):
                problem(f"deployment {name}", "a CPU limit throttles heartbeats; leave it out")
            if "memory" not in container.get("resources", {}).get("limits", {}):
                problem(f"deployment {name}", "set a memory limit")
    if ("PodDisruptionBudget", "atr-dist-worker") not in docs:
        problem("deploy/kubernetes", "no PodDisruptionBudget for the workers")
    scaled_file, scaled = docs[("ScaledObject", "atr-dist-worker")]
    auth_file, auth = docs[("TriggerAuthentication", "atr-dist-redis")]
    for schema, doc, file in (
        (KEDA_SCALED_OBJECT, scaled, scaled_file),
        (KEDA_TRIGGER_AUTHENTICATION, auth, auth_file),
    ):
        for error in jsonschema.Draft202012Validator(schema).iter_errors(doc):
            path = "/".join(str(p) for p in error.absolute_path)
            problem(f"deploy/kubernetes/{file} {doc['kind']} {path}", error.message)
    spec = scaled["spec"]
    if spec["scaleTargetRef"]["name"] != worker["metadata"]["name"]:
        problem(scaled_file, "scaleTargetRef must name the worker Deployment")
    if spec.get("minReplicaCount", 0) < 1:
        problem(scaled_file, "minReplicaCount must be at least 1: only workers move due jobs into queued")
    queue = config.get("redis", {}).get("queue", "default")
    want = f"atr-dist:{{{queue}}}:queued"
    for trigger in spec["triggers"]:
        if trigger["metadata"]["listName"] != want:
            problem(scaled_file, f"listName {trigger['metadata']['listName']!r}; the workers' queue is {want!r}")
        ref = trigger.get("authenticationRef", {}).get("name")
        if ref != auth["metadata"]["name"]:
            problem(scaled_file, f"authenticationRef {ref!r} names no TriggerAuthentication here")


def main() -> int:
    check_metric_names()
    check_compose()
    check_systemd()
    check_kubernetes()
    for p in problems:
        print(f"check-deploy: {p}", file=sys.stderr)
    if problems:
        print(f"check-deploy: {len(problems)} problem(s) in deploy/", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
