"""The deployment artefacts, checked without a Docker engine or a cluster.

- Dockerfile: read with BuildKit's own parser (the `dockerfile` package wraps it), so line
  continuations, JSON forms and flags are read exactly as `docker build` reads them; its base
  tag, entrypoint, healthcheck route (against the app's real routes) and exposed port.
- docker-compose.yml: the compose-spec JSON schema (vendored in check-jsonschema, offline), then
  what the schema cannot know: profiles, GPUs, mounts, and that every mounted gateway
  configuration passes `vllm-gateway check-config`.
- Kubernetes: `kubectl kustomize` renders the kustomizations (kubectl ships on the development
  machines), every object is validated against the Kubernetes OpenAPI schemas
  (kubernetes-validate, strict: unknown fields fail), and the gateway's configuration is checked
  against the Services and workloads it names.
- RunPod: the pod body's env alone configures the same gateway as deploy/examples/l40s-embed-guard.yaml.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dockerfile
import kubernetes_validate
import pytest
import yaml

from vllm_gateway.cli import _parser
from vllm_gateway.gateway import create_app
from vllm_gateway.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PORT = Settings().port
CONFIG_IN_IMAGE = "/etc/vllm-gateway/gateway.yaml"
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())


# ---------------------------------------------------------------------------------------- helpers

def gateway_get_routes() -> set[str]:
    app = create_app(Settings())
    return {r.path for r in app.routes if "GET" in (getattr(r, "methods", None) or ())}


def check_config(path: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`vllm-gateway check-config` in a child process, as a user would run it."""
    argv = [sys.executable, "-m", "vllm_gateway", "check-config"] + (["--config", str(path)] if path else [])
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(argv, cwd=ROOT, env={**base, **(env or {})}, capture_output=True, text=True, timeout=60)


def assert_config_ok(path: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = check_config(path, env)
    assert done.returncode == 0, f"check-config failed for {path or 'the environment'}:\n{done.stdout}{done.stderr}"
    assert "configuration OK" in done.stdout
    return done.stdout


class Stage:
    def __init__(self, name: str, base: str) -> None:
        self.name, self.base = name, base
        self.commands: list[dockerfile.Command] = []

    def all(self, cmd: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == cmd]

    def last(self, cmd: str) -> dockerfile.Command:
        found = self.all(cmd)
        assert found, f"stage {self.name} has no {cmd}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for command in self.all("ENV"):
            pairs = command.value  # the parser gives key, value, key, value, ...
            values.update(dict(zip(pairs[::2], pairs[1::2], strict=False)))
        return values

    def copies(self) -> dict[str, str]:
        """Destination -> source of each plain COPY from the build context."""
        out = {}
        for command in self.all("COPY"):
            if any(f.startswith("--from") for f in command.flags):
                continue
            *sources, dest = command.value
            for source in sources:
                out[dest if not dest.endswith("/") else dest + Path(source).name] = source
        return out


def dockerfile_stages() -> dict[str, Stage]:
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for command in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if command.cmd == "ARG" and current is None:
            name, _, default = command.value[0].partition("=")
            args[name] = default
        elif command.cmd == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], command.value[0])
            name = command.value[2] if len(command.value) == 3 and command.value[1].upper() == "AS" else str(len(stages))
            current = stages[name] = Stage(name, image)
        elif current is not None:
            current.commands.append(command)
    return stages


def dockerignore_includes(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents wins."""
    included = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.compile("^" + re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
                           .replace(r"\*", "[^/]*").replace(r"\?", "[^/]") + "$")
        parts = path.split("/")
        if any(regex.match("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            included = negate
    return included


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source, for every `./host:container[:ro]` volume."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        mounts[target] = source
    return mounts


def wants_gpu(service: dict[str, Any]) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any("gpu" in d.get("capabilities", []) for d in devices)


def kustomize(directory: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (which renders kustomizations offline) is not installed")
    done = subprocess.run([kubectl, "kustomize", str(ROOT / directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def arg_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return None


# --------------------------------------------------------------------------------------- Dockerfile

def test_dockerfile_has_the_two_targets_with_pinned_bases() -> None:
    stages = dockerfile_stages()
    assert list(stages)[-1] == "vllm", "the default target (last stage) is the vLLM image"
    assert "slim" in stages
    vllm_base = stages["vllm"].base
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", vllm_base), f"vLLM base not pinned to a release: {vllm_base}"
    assert re.fullmatch(r"python:3\.1[1-9][\w.-]*-slim[\w.-]*", stages["slim"].base), stages["slim"].base


@pytest.mark.parametrize("target", ["vllm", "slim"])
def test_image_runs_vllm_gateway_serve_through_the_entrypoint(target: str) -> None:
    stage = dockerfile_stages()[target]
    entrypoint, cmd = stage.last("ENTRYPOINT"), stage.last("CMD")
    assert entrypoint.json and cmd.json, "exec form, so tini is PID 1 and signals reach the gateway"
    assert entrypoint.value[0].endswith("/tini") and entrypoint.value[1] == "--"
    script = entrypoint.value[-1]
    assert stage.copies().get(script) == "deploy/docker/entrypoint.sh"
    assert list(cmd.value) == ["vllm-gateway", "serve"]


@pytest.mark.parametrize("target", ["vllm", "slim"])
def test_healthcheck_probes_a_real_gateway_route(target: str) -> None:
    stage = dockerfile_stages()[target]
    check = stage.last("HEALTHCHECK")
    assert check.value[0] == "CMD"
    python, script, path = check.value[1:]
    assert python.startswith("/opt/vllm-gateway/bin/python")
    assert stage.copies().get(script) == "deploy/docker/healthcheck.py"
    assert path in gateway_get_routes(), f"HEALTHCHECK probes {path}, which the gateway does not serve"
    assert path == "/health", "liveness is /health: /ready fails while a backend loads, which is no reason to restart"
    assert any(f.startswith("--start-period=") for f in check.flags)


@pytest.mark.parametrize("target", ["vllm", "slim"])
def test_only_the_gateway_port_is_exposed(target: str) -> None:
    exposed = [p for c in dockerfile_stages()[target].all("EXPOSE") for p in c.value]
    assert [p.split("/")[0] for p in exposed] == [str(DEFAULT_PORT)]


def test_slim_image_runs_as_a_non_root_user() -> None:
    user = dockerfile_stages()["slim"].last("USER").value[0]
    assert user.split(":")[0] not in ("root", "0")


def test_vllm_image_drops_to_a_user_it_creates_and_caches_on_its_volume() -> None:
    stage = dockerfile_stages()["vllm"]
    env = stage.env()
    user = env.get("RUN_AS_USER")
    assert user and user != "root", "the entrypoint must drop root in the vLLM image"
    assert any(re.search(rf"useradd\b.*\b{user}\b", " ".join(c.value)) for c in stage.all("RUN"))
    volumes = [v for c in stage.all("VOLUME") for v in c.value]
    for key in ("HF_HOME", "VLLM_CACHE_ROOT"):
        assert any(env[key].startswith(v.rstrip("/") + "/") for v in volumes), f"{key}={env[key]} is not on a volume"


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    sources = {s for stage in dockerfile_stages().values() for s in stage.copies().values()}
    assert {"app", "pyproject.toml", "README.md"} <= sources
    for source in sources:
        files = [p for p in (ROOT / source).rglob("*") if p.is_file()] if (ROOT / source).is_dir() else [ROOT / source]
        assert files, f"COPY {source}: nothing there"
        for file in files:
            rel = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in rel:
                assert dockerignore_includes(rel), f".dockerignore excludes {rel}, which the Dockerfile copies"
    for rel in (".venv/bin/python", "tests/conftest.py", ".git/HEAD", "app/__pycache__/cli.cpython-311.pyc"):
        assert not dockerignore_includes(rel), f"{rel} would be sent to the builder"


def test_entrypoint_script_is_executable_posix_sh() -> None:
    script = ROOT / "deploy/docker/entrypoint.sh"
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/bin/sh\n")
    done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------- docker compose

def run_check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_compose_file_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    done = run_check_jsonschema(ROOT / "docker-compose.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    broken = compose()
    broken["services"]["gateway"]["profile"] = broken["services"]["gateway"].pop("profiles")  # a typo
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    assert run_check_jsonschema(tmp_path / "docker-compose.yml").returncode != 0, "the schema check rejects nothing"


def test_plain_compose_up_is_the_gpu_stack_and_sim_needs_no_gpu() -> None:
    env = dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines() if line and not line.startswith("#"))
    assert env["COMPOSE_PROFILES"] == "gpu"
    services = compose()["services"]
    always = {name for name, s in services.items() if not s.get("profiles")}
    assert always == {"prometheus", "grafana"}
    gpu = {name for name, s in services.items() if "gpu" in s.get("profiles", [])}
    sim = {name for name, s in services.items() if "sim" in s.get("profiles", [])}
    assert gpu == {"gateway"} and wants_gpu(services["gateway"])
    assert sim and not any(wants_gpu(services[name]) for name in sim | always)


def test_gpu_gateway_service_matches_the_image() -> None:
    service = compose()["services"]["gateway"]
    stage = dockerfile_stages()["vllm"]
    assert service["build"]["target"] == "vllm"
    assert service["ports"] == [f"{DEFAULT_PORT}:{DEFAULT_PORT}"]
    volume = [v for c in stage.all("VOLUME") for v in c.value][0]
    assert "model-cache:" + volume in service["volumes"], "the model cache volume sits on the image's VOLUME"
    assert "model-cache" in compose()["volumes"]
    config = bind_mounts(service)[CONFIG_IN_IMAGE]
    stdout = assert_config_ok(ROOT / config)
    assert "launch:" in stdout, "the compose GPU stack launches its backends"


def test_sim_stack_wires_simulators_to_its_gateway() -> None:
    services = compose()["services"]
    gateway = services["gateway-sim"]
    assert gateway["build"]["target"] == "slim"
    assert "gateway" in gateway["networks"]["default"]["aliases"], "Prometheus scrapes gateway:8080 in both stacks"
    settings = load_settings(ROOT / bind_mounts(gateway)[CONFIG_IN_IMAGE])
    assert_config_ok(ROOT / bind_mounts(gateway)[CONFIG_IN_IMAGE])
    simulators = {}
    for name in gateway["depends_on"]:
        args = _parser().parse_args(services[name]["command"][1:])
        assert services[name]["command"][0] == "vllm-gateway" and args.command == "simulate"
        assert args.host == "0.0.0.0"
        assert services[name]["environment"]["GATEWAY_PORT"] == str(args.port), "the image's healthcheck port"
        simulators[f"http://{name}:{args.port}"] = args.model
    for backend in settings.backends:
        assert backend.url in simulators, f"{backend.name}: {backend.url} is no simulator service"
        assert backend.models == simulators[backend.url]


def test_monitoring_services_mount_the_metrics_artefacts_where_they_point() -> None:
    services = compose()["services"]
    prometheus, grafana = bind_mounts(services["prometheus"]), bind_mounts(services["grafana"])
    assert prometheus["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert prometheus["/etc/prometheus/alerts.yml"] == "./deploy/prometheus/alerts.yml"
    assert grafana["/etc/grafana/provisioning/datasources/prometheus.yml"] == "./deploy/grafana/provisioning/datasources/prometheus.yml"
    assert grafana["/etc/grafana/provisioning/dashboards/vllm-gateway.yml"] == "./deploy/grafana/provisioning/dashboards/vllm-gateway.yml"
    for name in ("prometheus", "grafana"):
        for _target, source in bind_mounts(services[name]).items():
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{name} mounts {source}, which does not exist"
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert f"gateway:{DEFAULT_PORT}" in targets
    for rule_file in scrape.get("rule_files", []):
        assert f"/etc/prometheus/{rule_file}" in prometheus, f"rule file {rule_file} is not mounted beside the config"
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    url = urlsplit(datasource["datasources"][0]["url"])
    assert url.hostname in services and url.port == 9090
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/vllm-gateway.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"].rstrip("/")
    assert grafana[f"{dashboards_dir}/vllm-gateway.json"] == "./deploy/grafana/dashboards/vllm-gateway.json"


# ------------------------------------------------------------------------------------- examples

EXAMPLES = sorted((ROOT / "deploy/examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"l40s-embed-guard.yaml", "external-backends.yaml", "multi-replica.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_passes_check_config(path: Path) -> None:
    assert_config_ok(path)


def test_l40s_example_is_the_seed_pair() -> None:
    settings = load_settings(ROOT / "deploy/examples/l40s-embed-guard.yaml")
    launched = {b.launch.model: b.launch.gpu_memory_utilization for b in settings.backends if b.launch}
    assert launched == {"Qwen/Qwen3-Embedding-0.6B": 0.15, "Qwen/Qwen3Guard-Gen-8B": 0.60}
    assert [b.launch.model for b in settings.backends if b.launch][0] == "Qwen/Qwen3-Embedding-0.6B", "small model loads first"
    assert not settings.warnings() or all("api_keys" in w for w in settings.warnings())
    for backend in settings.backends:
        assert urlsplit(backend.url).hostname == "127.0.0.1", "launched backends stay off the container's network"


def test_multi_replica_example_lists_urls() -> None:
    settings = load_settings(ROOT / "deploy/examples/multi-replica.yaml")
    assert any(len(b.all_urls) > 1 for b in settings.backends)


# ---------------------------------------------------------------------------------------- RunPod

def runpod_pod() -> dict[str, Any]:
    return json.loads((ROOT / "deploy/runpod/pod.json").read_text())


def runpod_env() -> dict[str, str]:
    """The pod's variables with RunPod's secret references filled in, as RunPod does."""
    return {k: re.sub(r"\{\{\s*RUNPOD_SECRET_(\w+)\s*\}\}", r"secret-\1", v) for k, v in runpod_pod()["env"].items()}


def test_runpod_pod_asks_for_an_l40s_with_disk_volume_and_the_gateway_port() -> None:
    pod = runpod_pod()
    assert pod["gpuTypeIds"] == ["NVIDIA L40S"] and pod["gpuCount"] == 1
    assert pod["containerDiskInGb"] >= 30 and pod["volumeInGb"] >= 40
    assert pod["ports"] == [f"{DEFAULT_PORT}/http"]
    assert not pod["imageName"].endswith(":latest")
    mount = pod["volumeMountPath"].rstrip("/") + "/"
    assert pod["env"]["HF_HOME"].startswith(mount) and pod["env"]["VLLM_CACHE_ROOT"].startswith(mount)
    assert re.fullmatch(r"\{\{ RUNPOD_SECRET_\w+ \}\}", pod["env"]["GATEWAY_API_KEYS"]), "the public port needs keys"


def test_runpod_environment_alone_is_the_l40s_example() -> None:
    stdout = assert_config_ok(env=runpod_env())
    assert "Qwen/Qwen3Guard-Gen-8B" in stdout and "GPU memory: 0.75" in stdout
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("GATEWAY_")}
    try:
        os.environ.update({k: v for k, v in runpod_env().items() if k.startswith("GATEWAY_")})
        from_env = load_settings()
    finally:
        for key in [k for k in os.environ if k.startswith("GATEWAY_")]:
            del os.environ[key]
        os.environ.update(saved)
    from_file = load_settings(ROOT / "deploy/examples/l40s-embed-guard.yaml")
    assert from_env.backends == from_file.backends
    assert from_env.gpu == from_file.gpu and from_env.port == from_file.port


def test_runpod_scrape_job_is_valid_prometheus_configuration() -> None:
    job = yaml.safe_load((ROOT / "deploy/runpod/scrape-job.yml").read_text())["scrape_configs"][0]
    assert job["scheme"] == "https" and job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"POD_ID-{DEFAULT_PORT}.proxy.runpod.net"]
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is installed by scripts/test-tools.sh")
    done = subprocess.run([promtool, "check", "config", str(ROOT / "deploy/runpod/scrape-job.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------------- Kubernetes

@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    return kustomize("deploy/k8s")


def test_every_kubernetes_object_matches_its_schema(k8s: list[dict[str, Any]]) -> None:
    for version in K8S_VERSIONS:
        for doc in k8s:
            kubernetes_validate.validate(doc, version, strict=True)
    broken = copy.deepcopy(by_kind(k8s, "Deployment")["vllm-gateway"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_gateway_deployment_probes_config_and_security(k8s: list[dict[str, Any]]) -> None:
    deployment = by_kind(k8s, "Deployment")["vllm-gateway"]
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] >= 2
    container = spec["containers"][0]
    routes = gateway_get_routes()
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready" in routes
    assert container["livenessProbe"]["httpGet"]["path"] == "/health" in routes
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics" in routes
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert not dockerfile_stages()["slim"].env().get("HF_HOME"), "the slim image needs no writable cache"
    assert container["image"].split(":")[-1].endswith("slim")

    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_volume = next(name for name, v in volumes.items() if "configMap" in v)
    config_map = by_kind(k8s, "ConfigMap")[volumes[config_volume]["configMap"]["name"]]
    key = Path(env["GATEWAY_CONFIG"]).relative_to(mounts[config_volume]).as_posix()
    assert key in config_map["data"]
    settings = Settings(**yaml.safe_load(config_map["data"][key]))
    assert settings.port == ports["http"]
    service = by_kind(k8s, "Service")["vllm-gateway"]
    assert selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert service["spec"]["ports"][0]["targetPort"] in ("http", ports["http"])


def test_gateway_configuration_in_kubernetes_passes_check_config() -> None:
    assert_config_ok(ROOT / "deploy/k8s/base/gateway/gateway.yaml")


def test_every_backend_url_names_a_gpu_backed_vllm_service(k8s: list[dict[str, Any]]) -> None:
    config_map = next(d for d in k8s if d["kind"] == "ConfigMap")
    settings = Settings(**yaml.safe_load(config_map["data"]["gateway.yaml"]))
    services = by_kind(k8s, "Service")
    workloads = {**by_kind(k8s, "Deployment"), **by_kind(k8s, "StatefulSet")}
    statefulsets = by_kind(k8s, "StatefulSet")
    assert any(len(b.all_urls) > 1 for b in settings.backends), "the example shows one model with several replicas"
    for backend in settings.backends:
        for url in backend.all_urls:
            host, port = urlsplit(url).hostname, urlsplit(url).port
            assert host is not None
            if "." in host:  # <statefulset>-<ordinal>.<headless service>
                pod, service_name = host.split(".", 1)
                sts_name, ordinal = pod.rsplit("-", 1)
                sts = statefulsets[sts_name]
                assert sts["spec"]["serviceName"] == service_name
                assert int(ordinal) < sts["spec"]["replicas"], f"{url}: no such replica at the shipped scale"
                assert services[service_name]["spec"].get("clusterIP") == "None", "per-pod names need a headless Service"
            else:
                service_name = host
                assert services[service_name]["spec"].get("clusterIP") != "None"
            service = services[service_name]
            service_port = next(p for p in service["spec"]["ports"] if p["port"] == port)
            workload = next(w for w in workloads.values()
                            if selects(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"]))
            container = workload["spec"]["template"]["spec"]["containers"][0]
            assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"] == 1
            named = {p["name"]: p["containerPort"] for p in container["ports"]}
            target = service_port["targetPort"]
            listen = named[target] if isinstance(target, str) else target
            args = container["command"] + container["args"]
            assert arg_value(args, "--port") == str(listen)
            assert args[2] == backend.models[0], f"{backend.name}: vLLM serves {args[2]}, the gateway expects {backend.models[0]}"
            probes = {container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
            assert probes == {"/health"}


def test_monitoring_overlay_adds_a_service_monitor_for_the_gateway() -> None:
    docs = kustomize("deploy/k8s/monitoring")
    monitor = by_kind(docs, "ServiceMonitor")["vllm-gateway"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = by_kind(docs, "Service")["vllm-gateway"]
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert service["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" in gateway_get_routes()
    for doc in docs:
        if doc["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)


# ----------------------------------------------------------------------------------------- README

@pytest.mark.parametrize("doc", ["README.md", "deploy/runpod/README.md", "deploy/k8s/README.md"])
def test_deploy_docs_link_to_files_that_exist(doc: str) -> None:
    text = (ROOT / doc).read_text()
    if doc == "README.md":
        start = text.index("## Deploy")
        text = text[start:text.index("\n## ", start + 1)]
    links = [link for link in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in link]
    assert links, f"{doc}: no links to the artefacts"
    for link in links:
        assert ((ROOT / doc).parent / link).exists(), f"{doc} links to {link}, which does not exist"


def test_readme_deploy_section_has_the_commands() -> None:
    text = (ROOT / "README.md").read_text()
    for command in ("docker build --target slim", "docker compose up", "docker compose --profile sim up",
                    "kubectl apply -k deploy/k8s", "proxy.runpod.net"):
        assert command in text, f"README lacks `{command}`"
