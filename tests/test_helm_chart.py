"""The Helm chart in helm/audiochat: lint, render over a matrix of values, validate every object against
Kubernetes' own schemas, and check the wiring a schema cannot see (selectors, ports, secrets, drain).

No helm binary and no cluster: helm-python-sdk runs Helm's Go library in-process, kubernetes-validate
holds the Kubernetes OpenAPI schemas.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import pytest
import redis
import yaml
from kubernetes_validate import utils as kube_schemas  # type: ignore[import-untyped]
from redis.backoff import NoBackoff
from redis.retry import Retry

from service import redis_client
from service.settings import ENVIRONMENT, from_environment
from service.upstream_registry import KINDS
from tests import chart_values_table
from tests.redis_server import REDIS_SERVER, free_port

ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = ROOT / "helm" / "audiochat"
RELEASE = "talk"
NAMESPACE = "voice"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest with schemas here.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
# Custom resources without a schema in kubernetes-validate; anything else unknown is a failure.
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}
INLINE_OPENAI_KEY = "sk-test-not-a-real-key"
MIB = 1024 * 1024

Manifest = dict[str, Any]
VALUE_FILES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
VALUE_SETS = ["default", *(path.name.removesuffix("-values.yaml") for path in VALUE_FILES)]


def values_for(name: str) -> dict[str, Any]:
    """The user values of one value set: none for "default", else ci/<name>-values.yaml."""
    if name == "default":
        return {}
    return helm.values_from_yaml((CHART_DIR / "ci" / f"{name}-values.yaml").read_text())


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def render(chart: helm.Chart) -> Callable[[dict[str, Any]], dict[str, str]]:
    def _render(values: dict[str, Any]) -> dict[str, str]:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE)

    return _render


def objects(rendered: dict[str, str]) -> list[Manifest]:
    """Every Kubernetes object in a rendering (NOTES.txt is prose, not YAML)."""
    found: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        found.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return found


@pytest.fixture(scope="module", params=VALUE_SETS)
def manifests(
    request: pytest.FixtureRequest, render: Callable[[dict[str, Any]], dict[str, str]]
) -> Rendering:
    return Rendering(objects(render(values_for(request.param))))


class Rendering:
    """One rendering's objects, with look-ups by kind and name."""

    def __init__(self, items: list[Manifest]) -> None:
        self.items = items

    def of_kind(self, kind: str) -> list[Manifest]:
        return [item for item in self.items if item["kind"] == kind]

    def one(self, kind: str, name: str) -> Manifest:
        [found] = [item for item in self.of_kind(kind) if item["metadata"]["name"] == name]
        return found

    def deployments(self) -> list[Manifest]:
        return self.of_kind("Deployment")

    def workloads(self) -> list[Manifest]:
        """Everything that runs pods: the Deployments and the in-chart Redis' StatefulSet."""
        return [*self.deployments(), *self.of_kind("StatefulSet")]

    def workload(self, name: str) -> Manifest:
        [found] = [item for item in self.workloads() if item["metadata"]["name"] == name]
        return found

    def hook_pods(self) -> list[Manifest]:
        return [
            pod for pod in self.of_kind("Pod") if pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        ]

    def pods_selected_by(self, selector: dict[str, str]) -> list[str]:
        """Names of the workloads whose pods the label selector picks."""
        return [
            workload["metadata"]["name"]
            for workload in self.workloads()
            if selector.items() <= pod_labels(workload).items()
        ]


def pod_labels(deployment: Manifest) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def pod_spec(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]
    return spec


def container(workload: Manifest) -> Manifest:
    [only] = pod_spec(workload)["containers"]
    return dict(only)


def env(workload: Manifest) -> dict[str, Manifest]:
    return {item["name"]: item for item in container(workload).get("env", [])}


def component(item: Manifest) -> str:
    return str(item["metadata"]["labels"]["app.kubernetes.io/component"])


# --- Chart metadata, lint and schema --------------------------------------------------------------


def test_app_version_is_the_package_version(chart: helm.Chart) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert chart.metadata["appVersion"] == pyproject["project"]["version"]


def test_default_image_tag_is_the_app_version(chart: helm.Chart, manifests: Rendering) -> None:
    for deployment in manifests.deployments():
        image = container(deployment)["image"]
        assert image.endswith(f":{chart.metadata['appVersion']}") or "@sha256:" in image


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lint_is_clean_in_strict_mode(value_set: str) -> None:
    # helm lint --strict fails on warnings as well as errors; the SDK returns findings as data.
    report = helm.lint(CHART_DIR, values_for(value_set), strict=True, kube_version=f"v{KUBE_VERSIONS[0]}")
    findings = [message for message in report["messages"] if message["severity"] >= 2]
    assert report["errors"] == []
    assert findings == []


def test_defaults_satisfy_the_schema(chart: helm.Chart) -> None:
    chart.validate_schema(chart.merge_values({}))


BAD_VALUES = {
    "typo at the top": ({"replicaCount": 3}, "additional properties 'replicaCount'"),
    "typo inside core": ({"core": {"replicaCont": 3}}, "additional properties 'replicaCont'"),
    "typo inside the ingress": ({"edge": {"ingress": {"enable": True}}}, "additional properties 'enable'"),
    "string for a number": ({"core": {"replicaCount": "3"}}, "/core/replicaCount"),
    "string for a port": ({"edge": {"ports": {"http": "8080"}}}, "/edge/ports/http"),
    "port out of range": ({"core": {"ports": {"grpc": 70000}}}, "/core/ports/grpc"),
    "unknown upstream": ({"config": {"upstream": "anthropic"}}, "/config/upstream"),
    "negative drain": ({"drain": {"graceSeconds": -1}}, "/drain/graceSeconds"),
    "comma inside an API key": ({"edge": {"apiKeys": ["a,b"]}}, "/edge/apiKeys/0"),
    "bad PDB percentage": ({"core": {"pdb": {"maxUnavailable": "half"}}}, "/core/pdb/maxUnavailable"),
    # The core enforces the turn-audio limit; on the edge it had no effect, so the schema no longer takes it.
    "turn-audio limit on the edge": (
        {"edge": {"maxTurnAudioSeconds": 60}},
        "additional properties 'maxTurnAudioSeconds'",
    ),
    "memory headroom in MB": ({"edge": {"memoryHeadroom": "256MB"}}, "/edge/memoryHeadroom"),
    "unknown Redis mode": ({"redis": {"mode": "redis"}}, "/redis/mode"),
    "typo inside KEDA": ({"core": {"keda": {"maxReplica": 4}}}, "additional properties 'maxReplica'"),
    # Kubernetes-shaped values are checked against Kubernetes' own fields: a typo there is not dropped.
    "typo in the security context": (
        {"securityContext": {"runAsNonroot": True}},
        "additional properties 'runAsNonroot'",
    ),
    "typo in an extra variable": (
        {"edge": {"extraEnv": [{"name": "X", "valueFom": {}}]}},
        "additional properties 'valueFom'",
    ),
    "typo deep in the affinity": (
        {"core": {"affinity": {"nodeAffinity": {"requiredDuringScheduling": {}}}}},
        "additional properties 'requiredDuringScheduling'",
    ),
    "typo in the scaling behavior": (
        {"edge": {"keda": {"behavior": {"scaleDwon": {}}}}},
        "additional properties 'scaleDwon'",
    ),
    "string for an integer in a toleration": (
        {"redis": {"internal": {"tolerations": [{"key": "k", "tolerationSeconds": "60"}]}}},
        "/redis/internal/tolerations/0/tolerationSeconds",
    ),
    "Prometheus address without a scheme": (
        {"keda": {"prometheus": {"serverAddress": "prometheus:9090"}}},
        "/keda/prometheus/serverAddress",
    ),
    "typo inside the Redis": (
        {"redis": {"internal": {"persistance": {"enabled": True}}}},
        "additional properties 'persistance'",
    ),
    "Redis URL without a scheme": (
        {"redis": {"external": {"url": "redis.example:6379"}}},
        "/redis/external/url",
    ),
    "Redis password that breaks its URL": (
        {"redis": {"internal": {"password": "p@ss:word"}}},
        "/redis/internal/password",
    ),
}


@pytest.mark.parametrize(("values", "complaint"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_are_rejected(
    chart: helm.Chart,
    render: Callable[[dict[str, Any]], dict[str, str]],
    values: dict[str, Any],
    complaint: str,
) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
        chart.validate_schema(chart.merge_values(values))
    # What `helm install -f` does: the schema check runs before any template renders.
    with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
        render(values)
    report = helm.lint(CHART_DIR, values, strict=True)
    assert any(complaint in error for error in report["errors"])


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"openai": {"apiKey": "k", "existingSecret": "s"}}, "openai.apiKey or openai.existingSecret"),
        (
            {"edge": {"apiKeys": ["k"], "existingApiKeysSecret": "s"}},
            "edge.apiKeys or edge.existingApiKeysSecret",
        ),
        (
            {"core": {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}}},
            "core.autoscaling needs a CPU target",
        ),
        (
            {"core": {"autoscaling": {"enabled": True}, "keda": {"enabled": True}}},
            "core.autoscaling.enabled and core.keda.enabled are both on",
        ),
        (
            {"edge": {"autoscaling": {"enabled": True}, "keda": {"enabled": True}}},
            "edge.autoscaling.enabled and edge.keda.enabled are both on",
        ),
        (
            {"edge": {"keda": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}}},
            "edge.keda.minReplicas (5) is over edge.keda.maxReplicas (3)",
        ),
        (
            {"core": {"autoscaling": {"enabled": True, "minReplicas": 12}}},
            "core.autoscaling.minReplicas (12) is over core.autoscaling.maxReplicas (10)",
        ),
        (
            # 5/4 of 210 MiB is 262.5 MiB: with the 256Mi headroom, over the 512Mi limit.
            {"edge": {"resumeBufferBytes": 210 * MIB}},
            "5/4 of edge.resumeBufferBytes (220200960; buffers take about 1.2 times what they count) + "
            "edge.memoryHeadroom (256Mi) exceed edge.resources.limits.memory (512Mi)",
        ),
        (
            {"edge": {"resources": {"limits": {"memory": "200Mi"}}}},
            "edge.resources.limits.memory (200Mi) leaves nothing for resume buffers",
        ),
        (
            {"edge": {"resources": {"limits": {"memory": "1e9"}}}},
            'edge.resources.limits.memory: cannot read "1e9"',
        ),
        ({"redis": {"mode": "external"}}, "redis.mode=external needs redis.external.existingSecret"),
        (
            {"redis": {"mode": "external", "external": {"url": "redis://r:6379/0", "existingSecret": "s"}}},
            "redis.external.url or redis.external.existingSecret, not both",
        ),
        (
            {"redis": {"external": {"url": "redis://r:6379/0"}}},
            'redis.external.* is set but redis.mode is "none"',
        ),
        (
            {"redis": {"mode": "internal", "internal": {"maxMemory": "200Mi"}}},
            "redis.internal.maxMemory (200Mi) is over 3/4 of redis.internal.resources.limits.memory (192Mi)",
        ),
        (
            {"redis": {"mode": "internal", "internal": {"resources": {"limits": {"memory": None}}}}},
            "redis.internal.resources.limits.memory is required",
        ),
    ],
)
def test_contradictory_values_fail_the_render(
    render: Callable[[dict[str, Any]], dict[str, str]], values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(complaint)):
        render(values)


# Definitions shaped like Kubernetes fields (resources, probe timings, and the k8s.* copies of Kubernetes
# types): documented as a whole, not per key.
KUBERNETES_SHAPED = {"#/definitions/resources", "#/definitions/probeTiming"}
KUBERNETES_DEFINITIONS = "#/definitions/k8s."


def schema_keys(schema: dict[str, Any], definitions: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of the chart-owned keys: those of objects whose schema lists their properties."""
    reference = schema.get("$ref", "")
    if reference in KUBERNETES_SHAPED or reference.startswith(KUBERNETES_DEFINITIONS):
        return set()
    if "$ref" in schema:
        schema = definitions[schema["$ref"].rsplit("/", 1)[-1]]
    keys: set[str] = set()
    for name, sub in schema.get("properties", {}).items():
        keys.add(prefix + name)
        keys |= schema_keys(sub, definitions, f"{prefix}{name}.")
    return keys


def values_keys(values: dict[str, Any], owned: set[str], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, sub in values.items():
        path = prefix + name
        keys.add(path)
        if isinstance(sub, dict) and any(key.startswith(path + ".") for key in owned):
            keys |= values_keys(sub, owned, path + ".")
    return keys


def test_schema_and_values_yaml_declare_the_same_keys(chart: helm.Chart) -> None:
    schema = chart.schema
    assert schema is not None
    owned = schema_keys(schema, schema["definitions"])
    # values.yaml leaves out the keys whose default is null (`minAvailable: null` is in it, but Helm drops
    # nulls), so compare with the file as YAML rather than with chart.values.
    in_file = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values_keys(in_file, owned) == owned


def test_every_chart_owned_value_is_commented(chart: helm.Chart) -> None:
    schema = chart.schema
    assert schema is not None
    owned = schema_keys(schema, schema["definitions"])
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    uncommented = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([\w.-]+):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(name for _, name in stack), key])
        stack.append((indent, key))
        previous = lines[number - 1].strip() if number else ""
        if path in owned and not previous.startswith("#"):
            uncommented.append(path)
    assert uncommented == []


# --- Every object is a valid Kubernetes object ----------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _cached_kubernetes_schemas() -> Iterator[None]:
    # kubernetes-validate re-reads a 1.5 MB definitions file per object; read each file once.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kube_schemas, "schema_contents", functools.cache(kube_schemas.schema_contents))
        yield


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_object_is_valid_for_kubernetes(manifests: Rendering, kube_version: str) -> None:
    unchecked = set()
    for item in manifests.items:
        try:
            kube_schemas.validate(item, kube_version, strict=True)
        except kube_schemas.SchemaNotFoundError:
            unchecked.add(item["kind"])
        except kube_schemas.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            pytest.fail(f"{item['kind']}/{item['metadata']['name']} at {where}: {error.message}")
    assert unchecked <= CRD_KINDS


def test_objects_live_in_the_release_namespace(manifests: Rendering) -> None:
    assert {item["metadata"]["namespace"] for item in manifests.items} == {NAMESPACE}


# --- Wiring: selectors, ports, the edge's way to the core -----------------------------------------


def test_each_workload_selects_its_own_pods_only(manifests: Rendering) -> None:
    for workload in manifests.workloads():
        selector = workload["spec"]["selector"]["matchLabels"]
        assert manifests.pods_selected_by(selector) == [workload["metadata"]["name"]]


def test_services_select_their_component_and_target_named_container_ports(manifests: Rendering) -> None:
    for service in manifests.of_kind("Service"):
        [workload] = [
            manifests.workload(name) for name in manifests.pods_selected_by(service["spec"]["selector"])
        ]
        assert component(workload) == component(service)
        container_ports = {port["name"]: port["containerPort"] for port in container(workload)["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports


def test_disruption_budgets_and_autoscalers_point_at_deployments(manifests: Rendering) -> None:
    for budget in manifests.of_kind("PodDisruptionBudget"):
        selected = manifests.pods_selected_by(budget["spec"]["selector"]["matchLabels"])
        assert selected == [f"{budget['metadata']['name']}"]
    for autoscaler in [*manifests.of_kind("HorizontalPodAutoscaler"), *manifests.of_kind("ScaledObject")]:
        target = autoscaler["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        manifests.one("Deployment", target["name"])


def test_replicas_are_left_to_the_autoscaler(manifests: Rendering) -> None:
    autoscalers = [*manifests.of_kind("HorizontalPodAutoscaler"), *manifests.of_kind("ScaledObject")]
    scaled = [autoscaler["spec"]["scaleTargetRef"]["name"] for autoscaler in autoscalers]
    # One autoscaler per Deployment at most: KEDA's own HPA and the chart's would fight over replicas.
    assert len(scaled) == len(set(scaled))
    for deployment in manifests.deployments():
        assert ("replicas" in deployment["spec"]) == (deployment["metadata"]["name"] not in scaled)


def test_probes_hit_the_container_ports(manifests: Rendering) -> None:
    for deployment in manifests.deployments():
        spec = container(deployment)
        by_name = {port["name"]: port["containerPort"] for port in spec["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            handler = spec[probe]
            if component(deployment) == "core":
                assert handler["grpc"]["port"] == by_name["grpc"]
            else:
                assert handler["httpGet"]["port"] in by_name
        if component(deployment) == "core":
            assert spec["readinessProbe"]["grpc"]["service"] == "audiochat.v1.AudioChatService"
        else:
            assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_ports_reach_the_application_environment(manifests: Rendering) -> None:
    for deployment in manifests.deployments():
        ports = {port["name"]: str(port["containerPort"]) for port in container(deployment)["ports"]}
        variables = env(deployment)
        for name, variable in [
            ("grpc", "AUDIOCHAT_GRPC_PORT"),
            ("metrics", "AUDIOCHAT_METRICS_PORT"),
            ("http", "AUDIOCHAT_HTTP_PORT"),
        ]:
            if name in ports:
                assert variables[variable]["value"] == ports[name]


def core_target(manifests: Rendering) -> str:
    [core] = [service for service in manifests.of_kind("Service") if component(service) == "core"]
    [grpc] = [port for port in core["spec"]["ports"] if port["name"] == "grpc"]
    return f"{core['metadata']['name']}:{grpc['port']}"


def test_edge_reaches_the_core_through_its_service(manifests: Rendering) -> None:
    for deployment in manifests.deployments():
        args = container(deployment)["args"]
        if component(deployment) == "edge":
            assert args[:3] == ["serve", "--role", "edge"]
            assert args[args.index("--target") + 1] == core_target(manifests)
        else:
            assert args == ["serve", "--role", "core"]


def test_both_workloads_listen_on_every_interface_explicitly(manifests: Rendering) -> None:
    # audiochat binds loopback by default; a pod reached through its Service must listen on all.
    for deployment in manifests.deployments():
        assert env(deployment)["AUDIOCHAT_BIND"]["value"] == "0.0.0.0", component(deployment)


def test_helm_test_hooks_call_the_health_checks(manifests: Rendering) -> None:
    pods = {pod["metadata"]["name"].rsplit("-test-", 1)[1]: pod for pod in manifests.hook_pods()}
    edge_on = any(component(deployment) == "edge" for deployment in manifests.deployments())
    redis_on = any("AUDIOCHAT_REDIS_URL" in env(deployment) for deployment in manifests.deployments())
    expected = {"core-health"} | ({"edge-ready"} if edge_on else set()) | ({"redis"} if redis_on else set())
    assert set(pods) == expected
    if redis_on:
        # The same Secret and key as the workloads: a wrong one fails `helm test`, not the first resume.
        [source] = {
            secret_reference(deployment, "AUDIOCHAT_REDIS_URL") for deployment in manifests.deployments()
        }
        assert secret_reference(pods["redis"], "AUDIOCHAT_REDIS_URL") == source
    core_check = container(pods["core-health"])["command"]
    assert core_check[-2:] == [core_target(manifests), "audiochat.v1.AudioChatService"]
    assert "grpc_health.v1" in core_check[2]
    if edge_on:
        [edge] = [service for service in manifests.of_kind("Service") if component(service) == "edge"]
        url = f"http://{edge['metadata']['name']}:{edge['spec']['ports'][0]['port']}/readyz"
        assert container(pods["edge-ready"])["command"][-1] == url


# --- Draining, security, secrets ------------------------------------------------------------------


def test_grace_period_outlasts_the_pause_and_the_drain(manifests: Rendering) -> None:
    for deployment in manifests.deployments():
        spec = container(deployment)
        drain = int(env(deployment)["AUDIOCHAT_DRAIN_SECONDS"]["value"])
        sleep, seconds = spec["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep == "sleep"
        assert int(seconds) > 0
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain + int(seconds)


def test_rolling_updates_never_remove_a_pod_before_its_successor_is_ready(manifests: Rendering) -> None:
    for deployment in manifests.deployments():
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_max_connection_age_is_on_by_default_and_settable(
    render: Callable[[dict[str, Any]], dict[str, str]],
) -> None:
    def age(values: dict[str, Any]) -> str:
        core = Rendering(objects(render(values))).one("Deployment", f"{RELEASE}-audiochat-core")
        return str(env(core)["AUDIOCHAT_MAX_CONNECTION_AGE_SECONDS"]["value"])

    assert int(age({})) > 0
    assert age({"core": {"maxConnectionAgeSeconds": 0}}) == "0"
    assert age({"core": {"maxConnectionAgeSeconds": 1800}}) == "1800"


def test_pods_run_locked_down(manifests: Rendering) -> None:
    for workload in [*manifests.workloads(), *manifests.hook_pods()]:
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        security = container(workload)["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
    for deployment in manifests.deployments():
        # A read-only root: the one writable place the application uses is an emptyDir on /tmp.
        [mount] = container(deployment)["volumeMounts"]
        [volume] = deployment["spec"]["template"]["spec"]["volumes"]
        assert (mount["mountPath"], mount["name"], "emptyDir" in volume) == ("/tmp", volume["name"], True)


def secret_reference(workload: Manifest, variable: str) -> tuple[str, str] | None:
    found = env(workload).get(variable)
    if found is None:
        return None
    assert "value" not in found, f"{variable} is inlined"
    reference = found["valueFrom"]["secretKeyRef"]
    return reference["name"], reference["key"]


def workload_named(manifests: Rendering, part: str) -> Manifest:
    [found] = [deployment for deployment in manifests.deployments() if component(deployment) == part]
    return found


def test_inline_keys_go_into_the_charts_secret_and_are_referenced(
    render: Callable[[dict[str, Any]], dict[str, str]],
) -> None:
    rendered = render(values_for("inline-secret"))
    assert INLINE_OPENAI_KEY not in "".join(rendered.values())
    manifests = Rendering(objects(rendered))
    [secret] = manifests.of_kind("Secret")
    data = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    name = secret["metadata"]["name"]
    assert data["openai-api-key"] == INLINE_OPENAI_KEY
    assert secret_reference(workload_named(manifests, "core"), "OPENAI_API_KEY") == (name, "openai-api-key")
    assert secret_reference(workload_named(manifests, "edge"), "AUDIOCHAT_API_KEYS") == (name, "api-keys")
    assert data["api-keys"] == "edge-key-one,edge-key-two"
    # The edge never needs the model's key.
    assert secret_reference(workload_named(manifests, "edge"), "OPENAI_API_KEY") is None
    assert manifests.of_kind("ConfigMap") == []
    # A changed key rolls the pods.
    assert all(
        "checksum/secret" in d["spec"]["template"]["metadata"]["annotations"] for d in manifests.deployments()
    )


def test_existing_secrets_are_referenced_and_none_is_created(
    render: Callable[[dict[str, Any]], dict[str, str]],
) -> None:
    manifests = Rendering(objects(render(values_for("existing-secret"))))
    core_key = secret_reference(workload_named(manifests, "core"), "OPENAI_API_KEY")
    assert core_key == ("openai-credentials", "api-key")
    edge_keys = secret_reference(workload_named(manifests, "edge"), "AUDIOCHAT_API_KEYS")
    assert edge_keys == ("audiochat-edge-keys", "keys")
    assert manifests.of_kind("Secret") == []


def test_every_variable_set_is_one_the_application_reads(manifests: Rendering) -> None:
    # A misspelt or retired AUDIOCHAT_* name would be ignored by the pods, and the value silently lost.
    known = set(ENVIRONMENT.values())
    for deployment in manifests.deployments():
        ours = {name for name in env(deployment) if name.startswith(("AUDIOCHAT_", "OPENAI_"))}
        assert ours - {"EXTRA"} <= known, component(deployment)


def test_upstream_choices_are_the_applications(chart: helm.Chart) -> None:
    schema = chart.schema
    assert schema is not None
    choices = set(schema["properties"]["config"]["properties"]["upstream"]["enum"]) - {""}
    assert choices == set(KINDS), (
        "config.upstream's enum in values.schema.json must list service.upstream_registry.KINDS"
    )


@pytest.mark.parametrize("upstream", sorted(KINDS))
def test_an_upstream_that_needs_a_key_fails_the_install_without_one(
    render: Callable[[dict[str, Any]], dict[str, str]], upstream: str
) -> None:
    values = {"config": {"upstream": upstream}}
    if KINDS[upstream].needs_key:
        # Without the check the pods would render, then crash at start on the missing key.
        with pytest.raises(helm.HelmRenderError, match=re.escape(f"config.upstream={upstream} needs a key")):
            render(values)
        values["openai"] = {"existingSecret": "openai"}
    core = workload_named(Rendering(objects(render(values))), "core")
    assert env(core)["AUDIOCHAT_UPSTREAM"]["value"] == upstream


def test_model_is_the_applications_unless_set(render: Callable[[dict[str, Any]], dict[str, str]]) -> None:
    # The application's default follows the upstream; a chart default would pin one upstream's model.
    for deployment in Rendering(objects(render({}))).deployments():
        assert "AUDIOCHAT_MODEL" not in env(deployment)
    for deployment in Rendering(objects(render({"config": {"model": "gpt-audio"}}))).deployments():
        assert env(deployment)["AUDIOCHAT_MODEL"]["value"] == "gpt-audio"


def test_without_a_key_there_is_no_secret(render: Callable[[dict[str, Any]], dict[str, str]]) -> None:
    manifests = Rendering(objects(render({})))
    assert manifests.of_kind("Secret") == []
    for deployment in manifests.deployments():
        assert {"OPENAI_API_KEY", "AUDIOCHAT_API_KEYS", "AUDIOCHAT_UPSTREAM"}.isdisjoint(env(deployment))
    assert "offline voice" in render({})["audiochat/templates/NOTES.txt"]


# --- Optional objects -----------------------------------------------------------------------------


def test_edge_off_leaves_only_the_core(render: Callable[[dict[str, Any]], dict[str, str]]) -> None:
    rendered = render(values_for("edge-off"))
    manifests = Rendering(objects(rendered))
    labelled = [
        item
        for item in manifests.items
        if item["metadata"].get("labels", {}).get("app.kubernetes.io/component")
    ]
    assert {component(item) for item in labelled} == {"core", "test"}
    assert manifests.of_kind("Ingress") == []
    assert "edge.enabled=false" in rendered["audiochat/templates/NOTES.txt"]


def test_ingress_keeps_streams_open_and_routes_to_the_edge(
    render: Callable[[dict[str, Any]], dict[str, str]],
) -> None:
    manifests = Rendering(objects(render(values_for("ingress"))))
    [ingress] = manifests.of_kind("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    [edge] = [service for service in manifests.of_kind("Service") if component(service) == "edge"]
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"] == {"name": edge["metadata"]["name"], "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "audiochat-tls"
    origins = env(workload_named(manifests, "edge"))["AUDIOCHAT_ALLOWED_ORIGINS"]["value"]
    assert origins == "https://app.example.com,https://www.example.com"


def test_service_monitors_scrape_each_service_metrics_port(
    render: Callable[[dict[str, Any]], dict[str, str]],
) -> None:
    manifests = Rendering(objects(render(values_for("servicemonitor"))))
    monitors = manifests.of_kind("ServiceMonitor")
    assert {component(monitor) for monitor in monitors} == {"core", "edge"}
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        selector = monitor["spec"]["selector"]["matchLabels"]
        [service] = [
            s for s in manifests.of_kind("Service") if selector.items() <= s["metadata"]["labels"].items()
        ]
        [endpoint] = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"
    for deployment in manifests.deployments():
        assert "prometheus.io/scrape" not in (
            deployment["spec"]["template"]["metadata"].get("annotations", {})
        )


def test_hpa_scales_on_cpu_and_active_streams(render: Callable[[dict[str, Any]], dict[str, str]]) -> None:
    manifests = Rendering(objects(render(values_for("hpa"))))
    metrics = {component(hpa): hpa["spec"]["metrics"] for hpa in manifests.of_kind("HorizontalPodAutoscaler")}
    assert [metric["type"] for metric in metrics["core"]] == ["Resource", "Pods"]
    assert metrics["core"][1]["pods"]["metric"]["name"] == "audiochat_active_streams"
    assert metrics["core"][1]["pods"]["target"]["averageValue"] == "150"
    # An edge pod exports its own gauge, not the core's.
    assert [metric["type"] for metric in metrics["edge"]] == ["Resource", "Pods"]
    assert metrics["edge"][1]["pods"]["metric"]["name"] == "audiochat_edge_active_streams"


def test_network_policy_admits_only_the_edge_tests_and_listed_namespaces(
    render: Callable[[dict[str, Any]], dict[str, str]],
) -> None:
    manifests = Rendering(objects(render(values_for("networkpolicy"))))
    [policy] = manifests.of_kind("NetworkPolicy")
    assert manifests.pods_selected_by(policy["spec"]["podSelector"]["matchLabels"]) == [
        f"{RELEASE}-audiochat-core"
    ]
    grpc_rule, metrics_rule = policy["spec"]["ingress"]
    peers = grpc_rule["from"]
    clients = peers[0]["podSelector"]["matchLabels"]
    assert manifests.pods_selected_by(clients) == [f"{RELEASE}-audiochat-edge"]
    assert all(clients.items() <= pod["metadata"]["labels"].items() for pod in manifests.hook_pods())
    assert [
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in peers[1:]
    ] == ["apps"]
    assert grpc_rule["ports"] == [{"port": 50051, "protocol": "TCP"}]
    assert metrics_rule["ports"] == [{"port": 9090, "protocol": "TCP"}]


def test_tuned_values_reach_the_pods(render: Callable[[dict[str, Any]], dict[str, str]]) -> None:
    manifests = Rendering(objects(render(values_for("tuned"))))
    core, edge = env(workload_named(manifests, "core")), env(workload_named(manifests, "edge"))
    expected_core = {
        "AUDIOCHAT_UPSTREAM": "openai-realtime",
        "AUDIOCHAT_REALTIME_MODELS": "gpt-realtime,my-voice-model",
        "AUDIOCHAT_CHAT_COMPLETIONS_MODELS": "gpt-audio",
        "AUDIOCHAT_MODEL": "gpt-audio",
        "AUDIOCHAT_VOICE": "verse",
        "AUDIOCHAT_LOG_LEVEL": "debug",
        "AUDIOCHAT_MAX_STREAMS": "250",
        "AUDIOCHAT_MAX_CONVERSATIONS": "4000",
        "AUDIOCHAT_MAX_MESSAGE_BYTES": "33554432",
        "AUDIOCHAT_DRAIN_SECONDS": "120",
        "AUDIOCHAT_MAX_CONNECTION_AGE_SECONDS": "900",
        "AUDIOCHAT_UPSTREAM_TIMEOUT_SECONDS": "90",
        "AUDIOCHAT_MAX_TURN_AUDIO_SECONDS": "120",
        "AUDIOCHAT_CONVERSATION_TTL_SECONDS": "900",
        "AUDIOCHAT_CONVERSATION_ORPHAN_SECONDS": "0",
        "AUDIOCHAT_CONVERSATION_TURN_LOG_BYTES": "2097152",
        "AUDIOCHAT_MAX_STORED_CONVERSATIONS": "500",
        "AUDIOCHAT_MAX_STORED_CONVERSATION_BYTES": "67108864",
        "EXTRA": "1",
    }
    expected_edge = {
        "AUDIOCHAT_MAX_BODY_BYTES": "10485760",
        "AUDIOCHAT_RESUME_SECONDS": "30",
        "AUDIOCHAT_RESUME_BUFFER_BYTES": "4194304",
        "AUDIOCHAT_SSE_TURN_BUFFER_BYTES": "1048576",
        "AUDIOCHAT_SSE_ORPHAN_SECONDS": "30",
        "AUDIOCHAT_HTTP_PORT": "9000",
    }
    assert {name: core[name]["value"] for name in expected_core} == expected_core
    assert {name: edge[name]["value"] for name in expected_edge} == expected_edge
    assert core_target(manifests) == "voice-core:443"
    assert (
        workload_named(manifests, "core")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 145
    )
    [budget] = manifests.of_kind("PodDisruptionBudget")
    assert budget["spec"] == {**budget["spec"], "minAvailable": "50%"}
    assert manifests.of_kind("ServiceAccount") == []


def test_notes_tell_how_to_reach_both_services(render: Callable[[dict[str, Any]], dict[str, str]]) -> None:
    notes = render({"edge": {"ingress": {"enabled": True}}})["audiochat/templates/NOTES.txt"]
    assert f"port-forward svc/{RELEASE}-audiochat-core 50051:50051" in notes
    assert f"port-forward svc/{RELEASE}-audiochat-edge 8080:8080" in notes
    assert "http://audiochat.example.com/" in notes
    assert f"helm test {RELEASE}" in notes


# --- Limits sized consistently ---------------------------------------------------------------------

QUANTITY_FACTORS = {"": 1, "Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB, "k": 1000, "M": 1000**2, "G": 1000**3}


def quantity_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity in bytes, read independently of the chart's own helper."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity))
    assert match, quantity
    return int(float(match.group(1)) * QUANTITY_FACTORS[match.group(2)])


def test_turn_audio_limit_goes_to_the_core_that_enforces_it(
    render: Callable[[dict[str, Any]], dict[str, str]],
) -> None:
    manifests = Rendering(objects(render({"core": {"maxTurnAudioSeconds": 45}})))
    assert env(workload_named(manifests, "core"))["AUDIOCHAT_MAX_TURN_AUDIO_SECONDS"]["value"] == "45"
    assert "AUDIOCHAT_MAX_TURN_AUDIO_SECONDS" not in env(workload_named(manifests, "edge"))
    # The reason it moved: the edge relays audio and never reads the setting; the core's decoder does.
    edge_code = "".join(path.read_text() for path in (ROOT / "adapters").glob("*.py"))
    assert "max_turn_audio_seconds" not in edge_code
    assert "max_turn_audio_seconds" in (ROOT / "service" / "turn_input.py").read_text()


def test_resume_buffers_fit_under_the_edge_memory_limit(chart: helm.Chart, manifests: Rendering) -> None:
    for deployment in manifests.deployments():
        if component(deployment) != "edge":
            continue
        limit = quantity_bytes(container(deployment)["resources"]["limits"]["memory"])
        cap = int(env(deployment)["AUDIOCHAT_RESUME_BUFFER_BYTES"]["value"])
        headroom = quantity_bytes(chart.values["edge"]["memoryHeadroom"])
        # Full buffers took 1.18-1.21 times their bytes in the process (python -m benchmarks.edge_memory).
        assert 0 < cap * 1.25 <= limit - headroom


@pytest.mark.parametrize(
    ("edge", "cap"),
    [
        ({}, 256 * MIB * 4 // 5),  # (512Mi - 256Mi) * 4/5
        ({"resources": {"limits": {"memory": "1Gi"}}}, 768 * MIB * 4 // 5),
        ({"resources": {"limits": {"memory": "0.75Gi"}}, "memoryHeadroom": "128Mi"}, 512 * MIB),
        ({"resources": {"limits": {"memory": "600M"}}}, (600_000_000 - 256 * MIB) * 4 // 5),
        ({"resumeBufferBytes": 64 * MIB}, 64 * MIB),
        ({"resumeBufferBytes": 204 * MIB}, 204 * MIB),  # 5/4 of it is 255 MiB: fits
        ({"resources": {"limits": {"memory": None}}}, None),  # no limit: the application's default
    ],
)
def test_resume_cap_is_derived_from_the_memory_limit(
    render: Callable[[dict[str, Any]], dict[str, str]], edge: dict[str, Any], cap: int | None
) -> None:
    manifests = Rendering(objects(render({"edge": edge})))
    found = env(workload_named(manifests, "edge")).get("AUDIOCHAT_RESUME_BUFFER_BYTES")
    assert (found and int(found["value"])) == cap


# --- The shared store: Redis ----------------------------------------------------------------------


def redis_url_source(manifests: Rendering) -> tuple[str, str]:
    """The Secret and key both workloads read AUDIOCHAT_REDIS_URL from (the same for both)."""
    sources = {secret_reference(deployment, "AUDIOCHAT_REDIS_URL") for deployment in manifests.deployments()}
    [source] = sources
    assert source is not None
    return source


def secret_data(secret: Manifest) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def test_without_a_store_nothing_redis_renders(render: Callable[[dict[str, Any]], dict[str, str]]) -> None:
    rendered = render({})
    manifests = Rendering(objects(rendered))
    assert [item for item in manifests.items if "redis" in item["metadata"]["name"]] == []
    assert "No shared store (redis.mode=none)" in rendered["audiochat/templates/NOTES.txt"]
    for deployment in manifests.deployments():
        assert "AUDIOCHAT_REDIS_URL" not in env(deployment)
        assert "checksum/redis" not in pod_template_annotations(deployment)


def test_external_redis_url_comes_from_an_existing_secret(
    render: Callable[[dict[str, Any]], dict[str, str]],
) -> None:
    manifests = Rendering(objects(render(values_for("redis-external"))))
    assert redis_url_source(manifests) == ("audiochat-redis", "url")
    for deployment in manifests.deployments():
        assert env(deployment)["AUDIOCHAT_REDIS_UNAVAILABLE"]["value"] == "fail"
        assert env(deployment)["AUDIOCHAT_REDIS_TIMEOUT_SECONDS"]["value"] == "0.5"
    assert manifests.of_kind("Secret") == manifests.of_kind("StatefulSet") == []


def test_external_redis_url_given_inline_goes_into_a_secret(
    render: Callable[[dict[str, Any]], dict[str, str]],
) -> None:
    url = "rediss://:s3cret@redis.example.net:6380/2"
    rendered = render({"redis": {"mode": "external", "external": {"url": url}}})
    assert "s3cret" not in "".join(rendered.values())
    manifests = Rendering(objects(rendered))
    [secret] = manifests.of_kind("Secret")
    assert redis_url_source(manifests) == (secret["metadata"]["name"], "redis-url")
    assert secret_data(secret) == {"redis-url": url}
    assert manifests.of_kind("StatefulSet") == []
    # A changed URL rolls both workloads.
    assert all("checksum/redis" in pod_template_annotations(d) for d in manifests.deployments())


def pod_template_annotations(workload: Manifest) -> dict[str, str]:
    annotations: dict[str, str] = workload["spec"]["template"]["metadata"].get("annotations", {})
    return annotations


def test_internal_redis_runs_password_protected_behind_its_service(
    render: Callable[[dict[str, Any]], dict[str, str]],
) -> None:
    manifests = Rendering(objects(render(values_for("redis-internal"))))
    [redis] = manifests.of_kind("StatefulSet")
    assert redis["spec"]["replicas"] == 1
    [secret] = [
        item
        for item in manifests.of_kind("Secret")
        if item["metadata"]["name"] == redis_url_source(manifests)[0]
    ]
    data = secret_data(secret)
    service, headless = (
        manifests.one("Service", redis["metadata"]["name"] + suffix) for suffix in ("", "-headless")
    )
    assert redis["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    # The URL the workloads get names the client Service, its port and the password Redis requires.
    assert redis_url_source(manifests)[1] == "redis-url"
    assert data["redis-password"] == "not-a-real-password"
    assert (
        data["redis-url"]
        == f"redis://:not-a-real-password@{service['metadata']['name']}.{NAMESPACE}.svc:6379/0"
    )
    redis_container = container(redis)
    args = redis_container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert secret_reference(redis, "REDIS_PASSWORD") == (secret["metadata"]["name"], "redis-password")
    assert secret_reference(redis, "REDISCLI_AUTH") == (secret["metadata"]["name"], "redis-password")
    # maxmemory (256Mi) below the container's limit (512Mi), in bytes as Redis takes it.
    assert int(args[args.index("--maxmemory") + 1]) == 256 * MIB
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "redis-cli -p 6379 ping" in redis_container[probe]["exec"]["command"][-1]
    # Persistence on: an append-only file on a claim of the given size and class, no emptyDir.
    assert args[args.index("--appendonly") + 1] == "yes"
    [claim] = redis["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert "volumes" not in pod_spec(redis)
    assert redis_container["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert redis_container["image"] == "redis:7-alpine"


def test_internal_redis_keeps_nothing_on_disk_by_default(
    render: Callable[[dict[str, Any]], dict[str, str]],
) -> None:
    manifests = Rendering(objects(render({"redis": {"mode": "internal"}})))
    [redis] = manifests.of_kind("StatefulSet")
    args = container(redis)["args"]
    assert args[args.index("--appendonly") + 1] == "no"
    assert args[args.index("--save") + 1] == ""
    assert "volumeClaimTemplates" not in redis["spec"]
    [volume] = pod_spec(redis)["volumes"]
    assert volume == {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}}
    # No password given: a generated one, the same in the password and the URL.
    [secret] = manifests.of_kind("Secret")
    data = secret_data(secret)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", data["redis-password"])
    assert f":{data['redis-password']}@" in data["redis-url"]
    limit = quantity_bytes(container(redis)["resources"]["limits"]["memory"])
    assert int(args[args.index("--maxmemory") + 1]) * 4 <= limit * 3


def test_internal_redis_is_reached_only_by_the_release(
    render: Callable[[dict[str, Any]], dict[str, str]],
) -> None:
    manifests = Rendering(objects(render(values_for("redis-internal"))))
    policy = manifests.one("NetworkPolicy", f"{RELEASE}-audiochat-redis")
    assert manifests.pods_selected_by(policy["spec"]["podSelector"]["matchLabels"]) == [
        f"{RELEASE}-audiochat-redis"
    ]
    [rule] = policy["spec"]["ingress"]
    [peer] = rule["from"]
    clients = manifests.pods_selected_by(peer["podSelector"]["matchLabels"])
    assert {f"{RELEASE}-audiochat-core", f"{RELEASE}-audiochat-edge"} <= set(clients)
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]


# --- Scaling on open streams with KEDA -------------------------------------------------------------

SCALED_OBJECT_SPEC_KEYS = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
    "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
}  # fmt: skip
TRIGGER_KEYS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}


def check_scaled_object(item: Manifest, kube_version: str) -> None:
    """KEDA's ScaledObject (keda.sh/v1alpha1) checked by hand: kubernetes-validate has no CRD schemas."""
    assert item["apiVersion"] == "keda.sh/v1alpha1"
    spec = item["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC_KEYS
    target = spec["scaleTargetRef"]
    assert set(target) <= {"apiVersion", "kind", "name", "envSourceContainerName"}
    assert isinstance(target["name"], str) and target["name"]
    for field in ("pollingInterval", "minReplicaCount", "maxReplicaCount"):
        assert isinstance(spec[field], int) and spec[field] >= 1, field
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    hpa_config = spec["advanced"]["horizontalPodAutoscalerConfig"]
    assert set(spec["advanced"]) <= {
        "horizontalPodAutoscalerConfig",
        "restoreToOriginalReplicaCount",
        "scalingModifiers",
    }
    assert set(hpa_config) <= {"name", "behavior"}
    # The behavior is the HPA's own type: check it with Kubernetes' schema for the HPA KEDA will create.
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": hpa_config["name"]},
        "spec": {
            "scaleTargetRef": target,
            "maxReplicas": spec["maxReplicaCount"],
            "behavior": hpa_config["behavior"],
        },
    }
    kube_schemas.validate(hpa, kube_version, strict=True)
    assert spec["triggers"]
    for trigger in spec["triggers"]:
        assert set(trigger) <= TRIGGER_KEYS
        assert trigger["type"] in {"prometheus", "cpu"}
        # KEDA reads every trigger setting as a string; a YAML number or boolean fails its decoding.
        assert all(isinstance(value, str) for value in trigger["metadata"].values()), trigger["metadata"]
        if "authenticationRef" in trigger:
            assert set(trigger["authenticationRef"]) <= {"name", "kind"}
        if trigger["type"] == "prometheus":
            assert trigger["metricType"] == "AverageValue"
            assert {"serverAddress", "query", "threshold"} <= set(trigger["metadata"])
            assert re.fullmatch(r"https?://\S+", trigger["metadata"]["serverAddress"])
            assert int(trigger["metadata"]["threshold"]) > 0
        else:
            assert trigger["metricType"] == "Utilization"
            assert set(trigger["metadata"]) == {"value"} and int(trigger["metadata"]["value"]) > 0


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_scaled_objects_are_well_formed(manifests: Rendering, kube_version: str) -> None:
    for item in manifests.of_kind("ScaledObject"):
        check_scaled_object(item, kube_version)


def test_keda_scales_each_workload_on_its_own_streams(
    render: Callable[[dict[str, Any]], dict[str, str]],
) -> None:
    manifests = Rendering(objects(render(values_for("keda"))))
    assert manifests.of_kind("HorizontalPodAutoscaler") == []
    scaled = {component(item): item["spec"] for item in manifests.of_kind("ScaledObject")}
    assert set(scaled) == {"core", "edge"}
    core, edge = scaled["core"], scaled["edge"]
    assert (core["minReplicaCount"], core["maxReplicaCount"], core["pollingInterval"]) == (3, 30, 10)
    streams, cpu = core["triggers"]
    assert streams["metadata"]["serverAddress"] == "http://prometheus.monitoring.svc:9090"
    assert streams["metadata"]["threshold"] == "150"
    assert streams["authenticationRef"] == {"name": "prometheus-credentials"}
    assert cpu == {"type": "cpu", "name": "cpu", "metricType": "Utilization", "metadata": {"value": "80"}}
    # The default query sums the core's gauge over the core's pods of this release, and only those.
    query = streams["metadata"]["query"]
    match = re.fullmatch(r'sum\(audiochat_active_streams\{namespace="(.+)",pod=~"(.+)"\}\)', query)
    assert match and match.group(1) == NAMESPACE
    pod_pattern = re.compile(match.group(2))
    assert pod_pattern.fullmatch(f"{RELEASE}-audiochat-core-7d9f8b6c5d-x2x4z")
    assert not pod_pattern.fullmatch(f"{RELEASE}-audiochat-edge-7d9f8b6c5d-x2x4z")
    assert not pod_pattern.fullmatch(f"{RELEASE}-audiochat-redis-0")
    # The edge: its own gauge through the given query, no CPU trigger.
    [edge_streams] = edge["triggers"]
    assert edge_streams["metadata"]["query"] == 'sum(audiochat_edge_active_streams{job="audiochat-edge"})'
    assert edge_streams["metadata"]["threshold"] == "400"


def test_keda_default_query_names_the_edge_gauge(render: Callable[[dict[str, Any]], dict[str, str]]) -> None:
    manifests = Rendering(objects(render({"edge": {"keda": {"enabled": True}}})))
    [scaled] = manifests.of_kind("ScaledObject")
    assert component(scaled) == "edge"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["metadata"]["query"].startswith("sum(audiochat_edge_active_streams{")
    assert "authenticationRef" not in trigger
    # Only the edge is KEDA's: the core keeps its fixed replica count.
    assert "replicas" in workload_named(manifests, "core")["spec"]
    assert "replicas" not in workload_named(manifests, "edge")["spec"]


# --- The chart's README -----------------------------------------------------------------------------


def test_readme_values_table_is_the_one_values_yaml_generates() -> None:
    generated = chart_values_table.table((CHART_DIR / "values.yaml").read_text())
    in_readme = chart_values_table.in_readme(chart_values_table.README.read_text())
    assert in_readme == generated, "run: .venv/bin/python -m tests.chart_values_table"


def test_readme_values_table_covers_every_value(chart: helm.Chart) -> None:
    schema = chart.schema
    assert schema is not None
    owned = schema_keys(schema, schema["definitions"])
    rows = {row.path for row in chart_values_table.leaf_rows(chart_values_table.commented_keys(
        (CHART_DIR / "values.yaml").read_text()
    ))}  # fmt: skip
    # A value is covered by its own row, or by the row of a Kubernetes-shaped block it sits in, or it is a
    # parent whose every documented child has a row.
    uncovered = [
        key
        for key in owned
        if key not in rows
        and not any(key.startswith(row + ".") for row in rows)
        and not any(row.startswith(key + ".") for row in rows)
    ]
    assert uncovered == []
    assert len(rows) > 100


def test_helm_show_readme_prints_the_charts_readme() -> None:
    shown = helm.show(str(CHART_DIR), output_format="readme")
    assert shown.startswith("# audiochat Helm chart")
    for section in (
        "## Install",
        "## Shared state: Redis",
        "## Scaling",
        "## Drain and rolling updates",
        "## Values",
    ):
        assert section in shown
    assert '| `redis.mode` | `"none"` |' in shown


def test_readme_adapter_rules_serve_both_gauges_per_pod() -> None:
    readme = chart_values_table.README.read_text()
    # The block sits in a numbered list, indented with it.
    [block] = re.findall(r"```yaml\n(.*?) *```", readme, flags=re.S)
    rules = yaml.safe_load(textwrap.dedent(block))["rules"]["custom"]
    assert [rule["name"]["as"] for rule in rules] == [
        "audiochat_active_streams",
        "audiochat_edge_active_streams",
    ]
    for rule in rules:
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


# --- The in-chart Redis, run as rendered -------------------------------------------------------------


def resolved_env(manifests: Rendering, workload: Manifest) -> dict[str, str]:
    """The container's environment as the kubelet builds it: values, and Secret keys looked up."""
    secrets = {secret["metadata"]["name"]: secret_data(secret) for secret in manifests.of_kind("Secret")}
    resolved = {}
    for name, item in env(workload).items():
        if "value" in item:
            resolved[name] = item["value"]
        else:
            reference = item["valueFrom"]["secretKeyRef"]
            resolved[name] = secrets[reference["name"]][reference["key"]]
    return resolved


def expand(arg: str, variables: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return re.sub(r"\$\((\w+)\)", lambda match: variables[match.group(1)], arg)


@pytest.mark.parametrize("value_set", ["redis-internal", "redis-generated-password"])
def test_internal_redis_runs_as_rendered_and_the_workloads_url_reaches_it(
    render: Callable[[dict[str, Any]], dict[str, str]], value_set: str, tmp_path: Path
) -> None:
    # The StatefulSet's own command, args and probe, run with Debian's redis-server on a free loopback
    # port (the chart's port value) and a temporary /data; only --bind 127.0.0.1 is added (loopback only).
    port = free_port()
    values: dict[str, Any] = {"redis": {"mode": "internal"}}
    if value_set == "redis-internal":
        values = values_for("redis-internal")
    values["redis"].setdefault("internal", {})["port"] = port
    manifests = Rendering(objects(render(values)))
    [statefulset] = manifests.of_kind("StatefulSet")
    redis_container = container(statefulset)
    variables = resolved_env(manifests, statefulset)
    args = [expand(arg, variables) for arg in redis_container["args"]]
    args[args.index("--dir") + 1] = str(tmp_path)
    command = [shutil.which(redis_container["command"][0]) or REDIS_SERVER, *args, "--bind", "127.0.0.1"]
    probe = redis_container["readinessProbe"]["exec"]["command"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(probe, env={"PATH": os.environ["PATH"], **variables}).returncode != 0:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the readiness probe never passed"
            time.sleep(0.05)
        # The probe fails when the password is wrong, so it is not a probe that always passes.
        wrong = {"PATH": os.environ["PATH"], "REDISCLI_AUTH": "wrong"}
        assert subprocess.run(probe, env=wrong, stderr=subprocess.DEVNULL).returncode != 0
        # Both workloads' AUDIOCHAT_REDIS_URL, with the Service's DNS name pointed at loopback.
        urls = {resolved_env(manifests, d)["AUDIOCHAT_REDIS_URL"] for d in manifests.deployments()}
        [url] = urls
        parsed = urlsplit(url)
        assert parsed.port == port
        local_url = parsed._replace(netloc=f":{parsed.password}@127.0.0.1:{port}").geturl()
        settings = from_environment({"AUDIOCHAT_REDIS_URL": local_url})
        assert settings.redis_url == local_url
        asyncio.run(check_redis(local_url, persistent=value_set == "redis-internal"))
        # The `helm test` hook's script, with the same URL, writes and reads a key.
        hook = container(manifests.one("Pod", f"{RELEASE}-audiochat-test-redis"))
        [python, flag, script] = hook["command"]
        assert (python, flag) == ("python", "-c")
        checked = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "AUDIOCHAT_REDIS_URL": local_url},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (checked.returncode, checked.stdout) == (0, "redis ok\n"), checked.stderr
        wrong_url = local_url.replace(f":{parsed.password}@", ":wrong@")
        refused = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "AUDIOCHAT_REDIS_URL": wrong_url},
            capture_output=True,
            timeout=30,
        )
        assert refused.returncode != 0
        with pytest.raises(redis.AuthenticationError):
            # No retries: redis-py retries a refused login (a ConnectionError) with back-off by default.
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, retry=Retry(NoBackoff(), 0)).ping()
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()


async def check_redis(url: str, persistent: bool) -> None:
    """The application's own client reaches Redis with the URL; its settings are the chart's."""
    client = redis_client.connect(url, timeout_seconds=2.0)
    try:
        assert await client.ping()
        settings = {**await client.config_get("maxmemory*"), **await client.config_get("appendonly")}
        assert settings["maxmemory-policy"] == "noeviction"
        assert settings["maxmemory"] == str((256 if persistent else 128) * MIB)
        assert settings["appendonly"] == ("yes" if persistent else "no")
        if not persistent:
            assert (await client.config_get("save"))["save"] == ""
    finally:
        await client.aclose()


# --- Kubernetes-shaped values ----------------------------------------------------------------------


def test_kubernetes_shaped_values_have_exactly_kubernetes_fields(chart: helm.Chart) -> None:
    # values.schema.json's k8s.* definitions are copies of Kubernetes types with additionalProperties false:
    # each must list exactly the fields of the newest Kubernetes here, so a typo fails the install and no
    # real field is refused.
    schema = chart.schema
    assert schema is not None
    kubernetes = kube_schemas.schema_contents(
        f"kubernetes-json-schema/v{KUBE_VERSIONS[-1]}-local-strict/_definitions.json", KUBE_VERSIONS[-1]
    )["$defs"]
    ours = {name: item for name, item in schema["definitions"].items() if name.startswith("k8s.")}
    assert len(ours) > 30
    for name, item in ours.items():
        theirs = kubernetes[item["$comment"]]
        assert name == "k8s." + item["$comment"].rsplit(".", 1)[-1]
        assert item["additionalProperties"] is False
        assert set(item["properties"]) == set(theirs["properties"]), name
        assert set(item.get("required", [])) == set(theirs.get("required", [])), name


def test_every_object_in_the_schema_refuses_unknown_keys(chart: helm.Chart) -> None:
    schema = chart.schema
    assert schema is not None
    open_objects = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "additionalProperties" not in node:
                open_objects.append(path)
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{path}/{index}")

    walk(schema, "")
    assert open_objects == []


def test_the_readmes_production_values_render(render: Callable[[dict[str, Any]], dict[str, str]]) -> None:
    readme = (ROOT / "README.md").read_text()
    [block] = [block for block in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S) if "redis:" in block]
    manifests = Rendering(objects(render(yaml.safe_load(block))))
    assert redis_url_source(manifests) == ("redis", "redis-url")
    assert {component(item) for item in manifests.of_kind("ScaledObject")} == {"core", "edge"}
    assert manifests.of_kind("HorizontalPodAutoscaler") == []
