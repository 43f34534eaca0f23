"""deploy/kubernetes against trace-proxy itself: what kubernetes-validate and checkov cannot know.

Those tools (deploy/check.sh) check each manifest against the Kubernetes schemas and security rules. They do not
know that the ConfigMap's file must be a valid trace-proxy configuration, that the image's own environment
overrides that file, that the probes must reach the admin listener the configuration opens, that the application's
HTTP_PROXY must name the forward listener, or that the pod's grace period must outlast the proxy's drain. These
tests load the ConfigMap's config.toml with trace-proxy's own loader (`load_settings`), in the environment the
container gets (the Dockerfile's ENV, then the container's env, the Secret's value for SENTRY_DSN), and hold the
manifests to the settings that result.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
SIDECAR = "trace-proxy"
APP = "app"
CONFIG_DIR = "/etc/trace-proxy"

Doc = dict[str, Any]


def _load(path: Path) -> list[Doc]:
    with path.open() as file:
        return [doc for doc in yaml.safe_load_all(file) if doc]


def _manifests() -> Iterator[tuple[Path, Doc]]:
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in _load(path):
                yield path, doc


def _find(kind: str, name: str) -> Doc:
    found = [doc for _, doc in _manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in {K8S}, found {len(found)}"
    return found[0]


def _dockerfile_runtime_stage() -> list[str]:
    """The instructions of the Dockerfile's last stage, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\[ \t]*\n", " ", "\n".join(lines)).splitlines()
    stages: list[list[str]] = []
    for line in joined:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages and line.strip():
            stages[-1].append(line.strip())
    return stages[-1]


def _image_env() -> dict[str, str]:
    """The ENV of the image's runtime stage (`ENV A=1 B=2` form)."""
    env: dict[str, str] = {}
    for line in _dockerfile_runtime_stage():
        if line.upper().startswith("ENV "):
            for word in shlex.split(line[4:]):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def _image_user() -> tuple[int, int]:
    users = [line.split()[1] for line in _dockerfile_runtime_stage() if line.upper().startswith("USER ")]
    uid, _, gid = users[-1].partition(":")
    return int(uid), int(gid)


def _pod_spec() -> Doc:
    spec: Doc = _find("Deployment", "legacy-app")["spec"]["template"]["spec"]
    return spec


def _container(name: str) -> Doc:
    spec = _pod_spec()
    found = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r} in deployment legacy-app"
    return found[0]


def _env(container: Doc) -> dict[str, str]:
    """The container's environment as the kubelet would give it: values, and secretKeyRefs read from the Secret."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = _find("Secret", ref["name"])["stringData"][ref["key"]]
    return env


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The sidecar's effective settings: the ConfigMap's file, the image's ENV, then the container's env on top."""
    sidecar = _container(SIDECAR)
    mounts = [m for m in sidecar["volumeMounts"] if m["mountPath"] == CONFIG_DIR]
    assert len(mounts) == 1, f"the sidecar must mount its configuration at {CONFIG_DIR}"
    volume = next(v for v in _pod_spec()["volumes"] if v["name"] == mounts[0]["name"])
    config_map = _find("ConfigMap", volume["configMap"]["name"])
    path = tmp_path_factory.mktemp("configmap") / "config.toml"
    path.write_text(config_map["data"]["config.toml"])
    return load_settings(path, _image_env() | _env(sidecar))


def _port(container: Doc, port: int | str) -> int:
    """A probe's or monitor's port, by number or by the container's port name."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert len(named) == 1, f"container {container['name']!r} has no port named {port!r}"
    return int(named[0])


def test_configmap_is_what_the_image_reads(tmp_path: Path) -> None:
    # The image runs `trace-proxy --config /etc/trace-proxy/config.toml`: the ConfigMap's key must land there, as a
    # directory mount (a subPath mount is never updated in a running pod).
    cmd = next(line for line in _dockerfile_runtime_stage() if line.upper().startswith("CMD "))
    assert f"{CONFIG_DIR}/config.toml" in cmd
    mount = next(m for m in _container(SIDECAR)["volumeMounts"] if m["mountPath"] == CONFIG_DIR)
    assert "subPath" not in mount and mount.get("readOnly") is True
    assert "config.toml" in _find("ConfigMap", "trace-proxy-config")["data"]
    # The file is valid on its own too (trace-proxy --check-config would accept it without the pod's environment).
    path = tmp_path / "config.toml"
    path.write_text(_find("ConfigMap", "trace-proxy-config")["data"]["config.toml"])
    load_settings(path, {})


def test_image_environment_is_read() -> None:
    # The image's own ENV listens on 0.0.0.0 and wins over the ConfigMap's file: that is why the Deployment sets the
    # listen addresses as env. (Guards the Dockerfile parsing that the settings fixture relies on.)
    env = _image_env()
    assert env["TRACE_PROXY_FORWARD__LISTEN"].startswith("0.0.0.0:")
    assert {"TRACE_PROXY_FORWARD__LISTEN", "TRACE_PROXY_ADMIN__LISTEN"} <= _env(_container(SIDECAR)).keys()


def test_sidecar_settings(settings: Settings) -> None:
    # The DSN arrives from the Secret through SENTRY_DSN (the placeholder, which must still be a valid DSN).
    assert settings.sentry.dsn == _find("Secret", "trace-proxy-sentry")["stringData"]["dsn"]
    # Pod-local forward listener, serving loopback clients only: nothing outside the pod can use the proxy.
    host = ipaddress.ip_address(settings.forward.listen.host)
    assert host.is_loopback
    assert any(host in net for net in settings.forward.allow_clients)
    assert all(
        net.network_address.is_loopback and net.broadcast_address.is_loopback for net in settings.forward.allow_clients
    )


def test_native_sidecar() -> None:
    spec = _pod_spec()
    assert [c["name"] for c in spec["initContainers"]] == [SIDECAR]
    assert _container(SIDECAR)["restartPolicy"] == "Always"
    assert _container(SIDECAR)["image"] == "trace-proxy:0.1.0"


def test_grace_period_outlasts_the_drain(settings: Settings) -> None:
    # The sidecar gets SIGTERM only after the application exits; its drain (shutdown_grace) must then still fit in
    # what is left of the pod's grace period, after any preStop sleep of the main containers.
    spec = _pod_spec()
    sleeps = 0
    for container in spec["containers"]:
        pre_stop = container.get("lifecycle", {}).get("preStop", {})
        if "sleep" in pre_stop:
            sleeps += int(pre_stop["sleep"]["seconds"])
        elif "exec" in pre_stop:
            command = pre_stop["exec"]["command"]
            assert command[0].endswith("sleep"), f"cannot tell how long preStop {command} takes"
            sleeps += int(command[1])
    assert spec["terminationGracePeriodSeconds"] > settings.forward.shutdown_grace + sleeps


@pytest.mark.parametrize(
    ("probe", "path"), [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/readyz")]
)
def test_probes_reach_the_admin_listener(settings: Settings, probe: str, path: str) -> None:
    sidecar = _container(SIDECAR)
    get = sidecar[probe]["httpGet"]
    assert get["path"] == path
    admin = settings.admin.listen
    assert admin is not None, "the probes need the admin listener"
    assert _port(sidecar, get["port"]) == admin.port
    # The kubelet connects to the pod's IP, not to its loopback.
    assert admin.host in ("0.0.0.0", "::"), f"admin.listen {admin} is not reachable from the kubelet"
    assert get.get("scheme", "HTTP") == "HTTP"


def test_application_proxy_variables(settings: Settings) -> None:
    env = _env(_container(APP))
    url = f"http://{settings.forward.listen}"
    # Both spellings: curl/libcurl read only http_proxy, the JVM neither, most others either.
    assert env["http_proxy"] == url
    assert env["HTTP_PROXY"] == url
    for name in ("no_proxy", "NO_PROXY"):
        entries = env[name].split(",")
        assert {"localhost", "127.0.0.1", "::1"} <= set(entries), f"{name} must keep loopback (the admin port) direct"
    assert env["no_proxy"] == env["NO_PROXY"]
    # The proxy cannot trace inside TLS: HTTPS stays direct.
    assert not {"https_proxy", "HTTPS_PROXY"} & env.keys()


def test_metrics_scraping_targets_the_admin_port(settings: Settings) -> None:
    deployment = _find("Deployment", "legacy-app")
    admin = settings.admin.listen
    assert admin is not None
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == admin.port
    assert annotations["prometheus.io/path"] == "/metrics"

    monitor = _find("PodMonitor", "trace-proxy")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert _port(_container(SIDECAR), endpoint["port"]) == admin.port
    assert endpoint["path"] == "/metrics"


def test_every_container_is_locked_down() -> None:
    uid, gid = _image_user()
    workloads = [doc for _, doc in _manifests() if doc["kind"] == "Deployment"]
    assert workloads
    for deployment in workloads:
        spec = deployment["spec"]["template"]["spec"]
        pod = spec["securityContext"]
        assert (pod["runAsNonRoot"], pod["runAsUser"], pod["runAsGroup"]) == (True, uid, gid)
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{deployment['metadata']['name']}/{container['name']}"
            context = container["securityContext"]
            assert (context["runAsNonRoot"], context["runAsUser"], context["runAsGroup"]) == (True, uid, gid), where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"], where
            assert context["seccompProfile"]["type"] == "RuntimeDefault", where
            limits, requests = container["resources"]["limits"], container["resources"]["requests"]
            assert {"cpu", "memory"} <= limits.keys() & requests.keys(), where


def test_kustomization_and_namespace() -> None:
    # Every manifest but the PodMonitor (which needs the Prometheus Operator's CRD) is in the kustomization, and
    # every object is in the example's namespace.
    (namespace,) = [doc for _, doc in _manifests() if doc["kind"] == "Namespace"]
    name = namespace["metadata"]["name"]
    (kustomization,) = _load(K8S / "kustomization.yaml")
    files = {path.relative_to(K8S).as_posix() for path in K8S.rglob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files - {"monitoring/podmonitor.yaml"}
    for path, doc in _manifests():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == name, f"{path.name}: {doc['kind']} {doc['metadata']['name']}"
