"""The deployment files in ``deploy/`` against the code they deploy.

Nothing here builds an image or talks to a cluster: the checks are that the files parse, and that
what they name exists — every metric a dashboard queries is one the service exports, every
``STREAM_VAE_*`` variable is a real setting (and the values validate), probes and ports are the
service's, files a Dockerfile copies are in the repository, images are pinned, and the
autoscaler never asks for more consumers than there are partitions.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from stream_vae.config import KafkaSettings, ServiceSettings, Settings, load_settings
from stream_vae.service.metrics import ServiceMetrics

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "stream-vae.json"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda"]

METRICS_PORT = 9108
# Labels Prometheus adds to every scraped series (compose's relabelling adds `service`), and the
# histogram bucket label; a `by (...)` may group on these besides the metric's own labels.
TARGET_LABELS = frozenset({"instance", "job", "service", "le"})
METRIC_REF = re.compile(r"\b(?:stream_vae|process)_[a-z0-9_]+\b")
SETTING_KEY = re.compile(r"^STREAM_VAE_[A-Z0-9_]+$")


# -- helpers -----------------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _doc(path: Path) -> Any:
    (only,) = _docs(path)
    return only


VARIANTS = ("cpu", "gpu", "cpu+strimzi", "gpu+strimzi")


def _merge(base: Any, patch: Any, path: str = "") -> Any:
    """A strategic merge patch, for what deploy/k8s patches: maps merge (``None`` deletes a key),
    lists of containers, env, volumes merge by ``name`` and volume mounts by ``mountPath``
    (Kubernetes' merge keys); any other list is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = _merge(base.get(key), value, f"{path}/{key}") if key in base else value
        return out
    key = {"containers": "name", "env": "name", "volumes": "name", "volumeMounts": "mountPath"}
    merge_key = key.get(path.rsplit("/", 1)[-1])
    if isinstance(base, list) and isinstance(patch, list) and merge_key:
        by_key = {item[merge_key]: item for item in base}
        added = []
        for item in patch:
            if item[merge_key] in by_key:
                by_key[item[merge_key]] = _merge(by_key[item[merge_key]], item, path)
            else:
                added.append(item)
        return added + list(by_key.values())  # kustomize puts new items first
    return patch


def _json_patch(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 ``replace`` and ``add``, the ops deploy/k8s uses."""
    out = json.loads(json.dumps(obj))
    for op in ops:
        *parents, last = op["path"].strip("/").split("/")
        target = out
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        assert op["op"] in ("replace", "add"), op
        if isinstance(target, list):
            target[int(last)] = op["value"]
        else:
            assert op["op"] == "add" or last in target, op["path"]
            target[last] = op["value"]
    return out


Objects = dict[tuple[str, str], dict[str, Any]]


def _kustomize(root: Path, extra_components: tuple[str, ...] = ()) -> Objects:
    """What `kubectl kustomize root` gives, for the features deploy/k8s uses: resources (files
    and directories), components, patches (strategic merge and JSON 6902), labels (metadata
    only) and images; `test_the_variants_build_as_kubectl_builds_them` holds it to kubectl."""
    kust = _doc(root / "kustomization.yaml")
    objs: Objects = {}
    for resource in kust.get("resources", []):
        path = root / resource
        docs = list(_kustomize(path).values()) if path.is_dir() else _docs(path)
        for doc in docs:
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objs, f"{key} defined twice"
            objs[key] = doc
    for component in [*kust.get("components", []), *extra_components]:
        objs = _apply(root / component, _kustomize_resources(root / component, objs))
    objs = _apply(root, objs)
    for pairs in kust.get("labels", []):
        for key, doc in objs.items():
            labels = doc["metadata"].get("labels", {})
            objs[key] = _merge(doc, {"metadata": {"labels": {**labels, **pairs["pairs"]}}})
    for image in kust.get("images", []):
        for doc in objs.values():
            if doc["kind"] in ("Deployment", "CronJob"):
                pod = _pod_spec(doc)
                for c in pod["containers"]:
                    if c["image"].split(":")[0] == image["name"]:
                        c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return objs


def _kustomize_resources(component: Path, objs: Objects) -> Objects:
    out = dict(objs)
    for resource in _doc(component / "kustomization.yaml").get("resources", []):
        for doc in _docs(component / resource):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in out, f"{key} defined twice"
            out[key] = doc
    return out


def _apply(root: Path, objs: Objects) -> Objects:
    """The patches of the kustomization (or component) in ``root``."""
    out = dict(objs)
    for patch in _doc(root / "kustomization.yaml").get("patches", []):
        body = yaml.safe_load(patch["patch"]) if "patch" in patch else _doc(root / patch["path"])
        if isinstance(body, list):  # JSON 6902, on its target
            target = patch["target"]
            key = (target["kind"], target["name"])
            out[key] = _json_patch(out[key], body)
        else:
            key = (body["kind"], body["metadata"]["name"])
            out[key] = _merge(out[key], body)
    return out


@cache
def _k8s_objects(variant: str) -> Objects:
    """Every Kubernetes object a variant applies (``cpu``, ``gpu``, ``…+strimzi``), by (kind,
    name); ``k8s/base/secret.yaml`` (a template, not applied) too, unless Strimzi replaces it."""
    name, _, component = variant.partition("+")
    objs = _kustomize(K8S / name, (f"../{component}",) if component else ())
    if not component:
        secret = _doc(K8S / "base" / "secret.yaml")
        objs[("Secret", secret["metadata"]["name"])] = secret
    return objs


def _k8s(kind: str, name: str = "stream-vae", variant: str = "gpu") -> dict[str, Any]:
    return _k8s_objects(variant)[(kind, name)]


@cache
def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = _doc(DEPLOY / "compose.yaml")
    return doc


def _exercised_metrics() -> ServiceMetrics:
    """A ServiceMetrics with every labelled metric holding a child, so each exports samples."""
    m = ServiceMetrics()
    m.add_records_in("telemetry", 3)
    m.add_dead_letters("bad_json")
    m.add_outcomes(n_scored=1, n_buffered=1, n_late=0)
    m.add_windows_scored(1)
    m.add_alerts("open")
    m.observe_batch(2, 0.01)
    m.observe_end_to_end(0.05)
    m.set_consumer_lag("telemetry", 0, 7)
    m.set_records_in_flight(2)
    m.set_event_loop_lag(0.001)
    m.set_model_version("v1")
    m.set_ready(True)
    m.add_drift_event("score")
    m.add_model_event("promoted")
    m.set_reservoir_windows(10)
    m.set_retraining(False)
    m.set_series_held(5)
    m.observe_raw_scores([0.5, 2.0])
    return m


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
}


@cache
def _exported() -> dict[str, frozenset[str]]:
    """Sample name -> its label names, for everything ServiceMetrics exports.

    Sample names come from a collect() of an exercised instance; names implied by each family's
    type are added too, so a labelled metric nobody recorded yet is still known."""
    labels: dict[str, set[str]] = {}
    for family in _exercised_metrics().registry.collect():
        for suffix in _SUFFIXES.get(family.type, ("",)):
            labels.setdefault(family.name + suffix, set())
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(ls) for name, ls in labels.items()}


def _dashboard_exprs() -> Iterator[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def _setting_field(key: str) -> tuple[str, str]:
    """``STREAM_VAE_KAFKA__GROUP_ID`` -> ("kafka", "group_id"), or ValueError if no such field."""
    if not SETTING_KEY.match(key):
        raise ValueError(f"{key}: not a STREAM_VAE_ variable")
    parts = key.removeprefix("STREAM_VAE_").lower().split("__")
    if len(parts) != 2:
        raise ValueError(f"{key}: expected STREAM_VAE_<SECTION>__<KEY>")
    section, field = parts
    if section not in Settings.model_fields:
        raise ValueError(f"{key}: no settings section {section!r}")
    model = Settings.model_fields[section].annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    if field not in model.model_fields:
        raise ValueError(f"{key}: {section} has no field {field!r}")
    return section, field


def _settings_env(env: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in env.items() if k.startswith("STREAM_VAE_")}


def _seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)s", duration)
    assert m, f"expected a duration like '75s', got {duration!r}"
    return float(m.group(1))


def _pinned(image: str) -> bool:
    """``name:tag`` with a real tag (not latest), or a digest."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


# -- every file parses -------------------------------------------------------------------------


def test_deploy_files_parse() -> None:
    files = _yaml_files()
    names = {p.relative_to(DEPLOY).as_posix() for p in files}
    assert {
        "compose.yaml",
        "prometheus/prometheus.yml",
        "k8s/base/kustomization.yaml",
        "k8s/base/deployment.yaml",
        "k8s/cpu/kustomization.yaml",
        "k8s/gpu/kustomization.yaml",
        "k8s/strimzi/kustomization.yaml",
    } <= names
    for path in files:
        assert _docs(path), f"{path} is empty"
    assert json.loads(DASHBOARD.read_text())["panels"]


def test_kustomizations_list_existing_files() -> None:
    for root in ("base", "cpu", "gpu", "strimzi"):
        kust = _doc(K8S / root / "kustomization.yaml")
        for resource in [*kust.get("resources", []), *kust.get("components", [])]:
            assert (K8S / root / resource).exists(), f"{root}: {resource}"
        for patch in kust.get("patches", []):
            assert "patch" in patch or (K8S / root / patch["path"]).is_file(), f"{root}: {patch}"
    # The Secret is a template with a placeholder: never applied by `kubectl apply -k`.
    assert "secret.yaml" not in _doc(K8S / "base" / "kustomization.yaml")["resources"]
    secret = _k8s("Secret", "stream-vae-kafka")
    assert "PLACEHOLDER" in secret["stringData"]["sasl-password"]
    for variant in ("cpu", "gpu"):  # Strimzi is opt-in: its component is commented out
        assert "components" not in _doc(K8S / variant / "kustomization.yaml")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_variants_build_as_kubectl_builds_them(variant: str, tmp_path: Path) -> None:
    """The tests read deploy/k8s through `_kustomize`; where kubectl is at hand, its build of
    each variant must be the same objects."""
    name, _, component = variant.partition("+")
    shutil.copytree(K8S, tmp_path / "k8s")
    if component:
        kust = tmp_path / "k8s" / name / "kustomization.yaml"
        kust.write_text(kust.read_text() + f"\ncomponents:\n  - ../{component}\n")
    done = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path / "k8s" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    built = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(done.stdout)}
    ours = {k: v for k, v in _k8s_objects(variant).items() if k != ("Secret", "stream-vae-kafka")}
    assert built.keys() == ours.keys()
    for key, obj in built.items():
        assert _by_name(obj) == _by_name(ours[key]), key


def _by_name(obj: Any) -> Any:
    """Lists of named items as maps, so that only what kustomize leaves unordered may differ."""
    if isinstance(obj, dict):
        return {k: _by_name(v) for k, v in obj.items()}
    dicts = isinstance(obj, list) and all(isinstance(x, dict) for x in obj)
    names = [x.get("name") for x in obj] if dicts else []
    if names and None not in names and len(set(names)) == len(obj):
        return {x["name"]: _by_name(x) for x in obj}
    if isinstance(obj, list):
        return [_by_name(x) for x in obj]
    return obj


# -- metrics: the dashboard, Prometheus and KEDA name what the service exports ------------------


def test_exported_names_include_histogram_and_counter_samples() -> None:
    names = _exported()
    assert "stream_vae_records_in_total" in names
    assert "stream_vae_end_to_end_seconds_bucket" in names
    assert "stream_vae_consumer_lag" in names
    assert names["stream_vae_dead_letters_total"] == {"reason"}
    assert "stream_vae_records_in" not in names  # a counter is only exported with _total


def test_dashboard_queries_only_exported_metrics() -> None:
    exported = _exported()
    for title, expr in _dashboard_exprs():
        refs = set(METRIC_REF.findall(expr))
        assert refs, f"panel {title!r} queries no metric of the service: {expr}"
        unknown = refs - exported.keys()
        assert not unknown, (
            f"panel {title!r} queries metrics the service does not export: {unknown}"
        )


def test_dashboard_groups_by_existing_labels() -> None:
    exported = _exported()
    for title, expr in _dashboard_exprs():
        known = set(TARGET_LABELS)
        for ref in METRIC_REF.findall(expr):
            known |= exported.get(ref, frozenset())
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            used = {g.strip() for g in group.split(",") if g.strip()}
            assert used <= known, f"panel {title!r} groups by unknown labels {used - known}"


def test_dashboard_has_the_operational_panels() -> None:
    used = {ref for _, expr in _dashboard_exprs() for ref in METRIC_REF.findall(expr)}
    for name in (
        "stream_vae_records_in_total",  # throughput
        "stream_vae_consumer_lag",
        "stream_vae_end_to_end_seconds_bucket",  # latency p50 / p99
        "stream_vae_alerts_total",
        "stream_vae_dead_letters_total",
        "stream_vae_inference_seconds_bucket",
        "stream_vae_batch_size_bucket",
        "stream_vae_records_in_flight",
        "stream_vae_event_loop_lag_seconds",
        "stream_vae_model_info",
        "stream_vae_raw_score_bucket",  # score quantiles
        "stream_vae_windows_over_threshold_total",
        "stream_vae_drift_events_total",
        "stream_vae_model_events_total",
        "stream_vae_retraining",
    ):
        assert name in used, f"no panel shows {name}"
    exprs = [expr for _, expr in _dashboard_exprs()]
    for q in ("0.5", "0.99"):
        assert any(
            f"histogram_quantile({q}," in e and "end_to_end_seconds_bucket" in e for e in exprs
        ), f"no end-to-end p{q} panel"


def test_dashboard_takes_its_datasource_replicas_and_partitions_as_variables() -> None:
    """No hard-coded datasource uid: a variable, which the provisioned one satisfies."""
    (source,) = _doc(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == source["type"] == "prometheus"
    for name, metric in (
        ("instance", "stream_vae_ready"),
        ("partition", "stream_vae_consumer_lag"),
    ):
        assert variables[name]["query"]["query"] == f"label_values({metric}, {name})"
        assert variables[name]["includeAll"] and variables[name]["multi"]
        assert name in _exported()[metric] | TARGET_LABELS
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == "${datasource}"
    # The provider's path is where compose mounts deploy/grafana/dashboards.
    (provider,) = _doc(DEPLOY / "grafana/provisioning/dashboards/stream-vae.yaml")["providers"]
    mounts = _compose()["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_dashboard_queries_follow_the_variables_and_the_scrape_interval() -> None:
    for title, expr in _dashboard_exprs():
        # every range of a rate() is Grafana's, so it holds at any scrape interval and zoom
        for window in re.findall(r"\brate\([^\[]*\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", f"{title!r}: rate over [{window}]"
        for name, selector in re.findall(
            r"\b((?:stream_vae|process)_[a-z0-9_]+)(\{[^}]*\})?", expr
        ):
            assert 'instance=~"$instance"' in selector, f"{title!r}: {name} ignores $instance"
            if name == "stream_vae_consumer_lag":
                assert 'partition=~"$partition"' in selector, title


def test_dashboard_shows_the_process_and_the_series_held() -> None:
    used = {ref for _, expr in _dashboard_exprs() for ref in METRIC_REF.findall(expr)}
    exported = _exported()
    for name in (
        "stream_vae_series_held",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert name in used, f"no panel shows {name}"
        assert name in exported, f"the service does not export {name}"


def test_prometheus_scrapes_the_service() -> None:
    config = _doc(DEPLOY / "prometheus/prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "stream-vae"]
    assert job["metrics_path"] == "/metrics"
    services = _compose()["services"]
    for sd in job["dns_sd_configs"]:
        assert sd["port"] == METRICS_PORT
        for name in sd["names"]:
            assert name in services, f"prometheus scrapes {name!r}, not a compose service"
    text = (DEPLOY / "prometheus/prometheus.yml").read_text()
    assert set(METRIC_REF.findall(text)) <= _exported().keys()


# -- settings: every STREAM_VAE_ variable is a field, and the sets of them validate --------------


@pytest.mark.parametrize(
    "key",
    ["STREAM_VAE_KAFKA__BOOTSTRAP", "STREAM_VAE_NOPE__SIZE", "STREAM_VAE_WINDOW_SIZE", "OTHER"],
)
def test_setting_check_rejects_unknown_keys(key: str) -> None:
    with pytest.raises(ValueError):
        _setting_field(key)


def _all_setting_keys() -> Iterator[tuple[str, str]]:
    """(where, key) for every STREAM_VAE_ variable set anywhere in deploy/."""
    for name, svc in _compose()["services"].items():
        for key in svc.get("environment", {}):
            yield f"compose:{name}", key
    for variant in VARIANTS:
        for key in _k8s("ConfigMap", variant=variant)["data"]:
            yield f"{variant}: configmap", key
        for kind, name in (("Deployment", "stream-vae"), ("CronJob", "stream-vae-retrain")):
            for container in _pod_spec(_k8s(kind, name, variant))["containers"]:
                for var in container.get("env", []):
                    yield f"{variant}: {kind}/{name}", var["name"]
    for dockerfile in DOCKERFILES:
        for instruction, args in _instructions(dockerfile):
            if instruction == "ENV":
                for pair in shlex.split(args):
                    yield dockerfile.name, pair.partition("=")[0]


def test_every_env_key_is_a_setting() -> None:
    keys = [(where, k) for where, k in _all_setting_keys() if k.startswith("STREAM_VAE_")]
    assert len(keys) > 20
    for where, key in keys:
        try:
            _setting_field(key)
        except ValueError as exc:
            pytest.fail(f"{where}: {exc}")


def test_compose_service_settings_validate() -> None:
    services = _compose()["services"]
    for name in ("stream-vae", "stream-vae-gpu", "replay"):
        s = load_settings(env=_settings_env(services[name]["environment"]))
        assert s.kafka.bootstrap_servers == "kafka:9092", name
    s = load_settings(env=_settings_env(services["stream-vae"]["environment"]))
    assert s.service.metrics_host == "0.0.0.0"
    assert s.service.metrics_port == METRICS_PORT


def _pod_env(variant: str) -> dict[str, str]:
    """The scorer's environment as its pod sees it: the ConfigMap, then the container's own
    variables (a Secret's value: the template's, or a stand-in for what Strimzi creates)."""
    secret = _k8s("Secret", "stream-vae-kafka")["stringData"]
    (container,) = _pod_spec(_k8s("Deployment", variant=variant))["containers"]
    env = dict(_k8s("ConfigMap", variant=variant)["data"])
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        env[var["name"]] = var["value"] if ref is None else secret.get(ref["key"], "from-strimzi")
    return env


@pytest.mark.parametrize("variant", VARIANTS)
def test_k8s_settings_validate_with_the_secret(variant: str) -> None:
    """The ConfigMap plus the pod's variables, as the pod sees them, make valid settings."""
    s = load_settings(env=_pod_env(variant))
    assert s.kafka.security_protocol == "SASL_SSL"
    assert s.kafka.sasl_password is not None and s.kafka.sasl_username
    assert s.service.metrics_host == "0.0.0.0"
    assert s.service.metrics_port == METRICS_PORT
    assert s.service.device == variant.split("+")[0].replace("gpu", "cuda")
    assert s.log.level == "INFO" and s.log.format == "json"  # lifecycle lines, for a pipeline
    if variant.endswith("+strimzi"):
        assert s.kafka.ssl_cafile is not None and not s.kafka.auto_create_topics


# -- compose ----------------------------------------------------------------------------------


def test_compose_services_and_pinned_images() -> None:
    services = _compose()["services"]
    assert {
        "kafka",
        "kafka-init",
        "model-init",
        "stream-vae",
        "stream-vae-gpu",
        "replay",
        "prometheus",
        "grafana",
    } <= services.keys()
    for name, svc in services.items():
        assert "image" in svc, f"{name}: no image (built images get a pinned tag too)"
        assert _pinned(svc["image"]), f"{name}: image {svc['image']!r} is not pinned"
        if "build" in svc:
            assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"


def test_compose_gpu_profile() -> None:
    services = _compose()["services"]
    gpu = services["stream-vae-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert "gpu" in device["capabilities"]
    assert "profiles" not in services["stream-vae"]  # the CPU service runs by default


def test_compose_topics_match_the_service() -> None:
    services = _compose()["services"]
    script = services["kafka-init"]["command"][0]
    (topics,) = re.findall(r"for topic in ([^;]+);", script)
    partitions = [int(n) for n in re.findall(r"--partitions (\d+)", script)]
    # the data topics, then the state topic: one partition, compacted
    assert partitions == [KafkaSettings().topic_partitions, 1]
    s = load_settings(env=_settings_env(services["stream-vae"]["environment"]))
    assert re.search(
        rf"--topic {re.escape(s.kafka.state_topic)} --partitions 1 .*"
        r"--config cleanup.policy=compact",
        script.replace("\\\n", " "),
        re.S,
    )
    assert set(topics.split()) == {
        *s.kafka.input_topics,
        s.kafka.alert_topic,
        s.kafka.dead_letter_topic,
        s.kafka.model_events_topic,
    }
    replay = services["replay"]["command"]
    assert replay[replay.index("--topic") + 1] in s.kafka.input_topics


def test_compose_stop_grace_covers_the_drain() -> None:
    drain_s = 2 * ServiceSettings().shutdown_timeout_s  # consumer.stop(), then producer.stop()
    for name in ("stream-vae", "stream-vae-gpu"):
        assert _seconds(_compose()["services"][name]["stop_grace_period"]) > drain_s, name


# -- Dockerfiles ------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, args = (pending + line).partition(" ")
        out.append((instruction.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path}: trailing continuation"
    return out


def _one(path: Path, instruction: str) -> str:
    found = [args for ins, args in _instructions(path) if ins == instruction]
    assert found, f"{path.name}: no {instruction}"
    return found[-1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_the_service(dockerfile: Path) -> None:
    assert json.loads(_one(dockerfile, "ENTRYPOINT")) == ["stream-vae", "run"]
    assert json.loads(_one(dockerfile, "CMD")) == ["--model", "/models/current"]
    assert _one(dockerfile, "EXPOSE") == str(METRICS_PORT)
    user = _one(dockerfile, "USER").split(":")[0]
    assert user not in ("root", "0"), f"{dockerfile.name} runs as root"
    health = _one(dockerfile, "HEALTHCHECK")
    assert "/healthz" in health and "urllib" in health
    env = dict(
        pair.partition("=")[::2]
        for ins, args in _instructions(dockerfile)
        if ins == "ENV"
        for pair in shlex.split(args)
    )
    assert env["STREAM_VAE_SERVICE__METRICS_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multistage_on_pinned_bases(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    args = {a.partition("=")[0]: a.partition("=")[2] for ins, a in instructions if ins == "ARG"}
    stages: list[str] = []
    for ins, a in instructions:
        if ins != "FROM":
            continue
        image, *rest = a.split()
        if rest:
            stages.append(rest[-1])
        if image in stages:
            continue  # FROM an earlier stage
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert _pinned(image), f"{dockerfile.name}: base {image!r} is not pinned"
    assert len([i for i, _ in instructions if i == "FROM"]) >= 2, "not multi-stage"
    assert any("--from=" in a for i, a in instructions if i == "COPY"), "runtime copies nothing"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_files_that_exist_and_are_sent(dockerfile: Path) -> None:
    ignore = (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = 0
    for ins, args in _instructions(dockerfile):
        if ins != "COPY" or "--from=" in args:
            continue
        *sources, _dest = [a for a in shlex.split(args) if not a.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name} copies missing {source}"
            assert source.rstrip("/") in allowed, f"{source} is excluded by the .dockerignore"
            copied += 1
    assert copied >= 3  # pyproject.toml, README.md (the package's readme), stream_vae/


# -- Kubernetes -------------------------------------------------------------------------------


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(match)


@pytest.mark.parametrize("variant", VARIANTS)
def test_deployment_probes_and_port(variant: str) -> None:
    pod = _pod_spec(_k8s("Deployment", variant=variant))
    (container,) = pod["containers"]
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert liveness["httpGet"]["path"] == "/healthz"
    assert readiness["httpGet"]["path"] == "/readyz"
    for probe in (liveness, readiness, container.get("startupProbe", liveness)):
        assert _port_number(container, probe["httpGet"]["port"]) == METRICS_PORT
    assert ServiceSettings().metrics_port == METRICS_PORT
    assert container["envFrom"] == [{"configMapRef": {"name": "stream-vae"}}]
    assert container["args"][0] == "--registry"


@pytest.mark.parametrize("variant", VARIANTS)
def test_deployment_device_security_and_shutdown(variant: str) -> None:
    pod = _pod_spec(_k8s("Deployment", variant=variant))
    (container,) = pod["containers"]
    limits, env = container["resources"]["limits"], _pod_env(variant)
    threads = int(env["STREAM_VAE_SERVICE__TORCH_THREADS"])
    assert threads == int(limits["cpu"])  # more threads than cores only contend
    if variant.startswith("gpu"):
        assert limits["nvidia.com/gpu"] == 1
        assert env["STREAM_VAE_SERVICE__DEVICE"] == "cuda" and "nodeSelector" in pod
        assert container["image"].endswith("-cuda")
    else:
        assert "nvidia.com/gpu" not in limits and "nodeSelector" not in pod
        assert env["STREAM_VAE_SERVICE__DEVICE"] == "cpu"
        assert env["STREAM_VAE_SERVICE__BACKEND"] == "onnx"  # the CPU image has the extra
        assert container["image"].endswith("-cpu")
        assert "onnx" in _one(DEPLOY / "Dockerfile", "ARG").split("EXTRAS=")[1]
    retrain = _pod_spec(_k8s("CronJob", "stream-vae-retrain", variant))
    assert retrain["containers"][0]["image"] == container["image"]  # one image per variant
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    timeout_s = float(
        _k8s("ConfigMap", variant=variant)["data"].get(
            "STREAM_VAE_SERVICE__SHUTDOWN_TIMEOUT_S", ServiceSettings().shutdown_timeout_s
        )
    )
    # The final drain: consumer.stop() then producer.stop(), each bounded by shutdown_timeout_s.
    assert pod["terminationGracePeriodSeconds"] > 2 * timeout_s


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_registry_volume(variant: str) -> None:
    claim = _k8s("PersistentVolumeClaim", "stream-vae-registry", variant)["metadata"]["name"]
    deployment = _pod_spec(_k8s("Deployment", variant=variant))
    (container,) = deployment["containers"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in deployment["volumes"]
        if "persistentVolumeClaim" in v
    }
    (mount,) = [m for m in container["volumeMounts"] if claims.get(m["name"]) == claim]
    # the service publishes and promotes drift-retrained versions: the registry is writable
    assert not mount.get("readOnly", False)
    root = container["args"][container["args"].index("--registry") + 1]
    assert root == mount["mountPath"]

    retrain = _pod_spec(_k8s("CronJob", "stream-vae-retrain", variant))
    (job,) = retrain["containers"]
    script = " ".join(job["command"] + job["args"])
    assert "stream-vae retrain --registry /registry" in script and "--data " in script
    (volume,) = [v for v in retrain["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    (job_mount,) = [m for m in job["volumeMounts"] if m["name"] == volume["name"]]
    assert not job_mount.get("readOnly", False)
    assert job_mount["mountPath"] == "/registry"


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_and_pdb_select_the_pods(variant: str) -> None:
    pod_labels = _k8s("Deployment", variant=variant)["spec"]["template"]["metadata"]["labels"]
    service = _k8s("Service", variant=variant)
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == METRICS_PORT
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    pdb = _k8s("PodDisruptionBudget", variant=variant)
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# What Strimzi's operators create: the KafkaUser's Secret and the cluster CA's.
STRIMZI_SECRETS = {"stream-vae": {"password"}, "kafka-cluster-ca-cert": {"ca.crt"}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_secret_refs_exist(variant: str) -> None:
    """Every Secret key a pod or KEDA reads is in the template, a Secret the variant applies,
    or (with Strimzi) one its operators create."""
    objs = _k8s_objects(variant)
    known = {n: set(o["stringData"]) for (k, n), o in objs.items() if k == "Secret"}
    if variant.endswith("+strimzi"):
        known |= STRIMZI_SECRETS
        assert ("Secret", "stream-vae-kafka") not in objs  # no hand-made password needed
    refs = []
    for kind, name in (("Deployment", "stream-vae"), ("CronJob", "stream-vae-retrain")):
        pod = _pod_spec(objs[(kind, name)])
        for container in pod["containers"]:
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append((ref["name"], ref["key"]))
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                refs += [
                    (volume["secret"]["secretName"], i["key"]) for i in volume["secret"]["items"]
                ]
    refs += [
        (r["name"], r["key"])
        for r in objs[("TriggerAuthentication", "stream-vae-kafka")]["spec"]["secretTargetRef"]
    ]
    assert refs
    for name, key in refs:
        assert key in known.get(name, set()), f"{variant}: secret {name} has no key {key}"


def test_strimzi_topics_user_and_ca_match_the_service() -> None:
    objs = _k8s_objects("gpu+strimzi")
    s = load_settings(env=_pod_env("gpu+strimzi"))
    k = s.kafka
    topics = {
        o["spec"].get("topicName", n): o for (kind, n), o in objs.items() if kind == "KafkaTopic"
    }
    service_topics = {
        *k.input_topics,
        k.alert_topic,
        k.dead_letter_topic,
        k.model_events_topic,
        k.state_topic,
    }
    assert topics.keys() == service_topics
    assert topics[k.input_topics[0]]["spec"]["partitions"] == k.topic_partitions
    assert topics[k.state_topic]["spec"]["config"]["cleanup.policy"] == "compact"
    assert topics[k.state_topic]["spec"]["partitions"] == 1
    user = objs[("KafkaUser", "stream-vae")]
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    assert k.sasl_mechanism == "SCRAM-SHA-512" and k.sasl_username == user["metadata"]["name"]
    acls = {
        (a["resource"]["type"], a["resource"]["name"]): set(a["operations"])
        for a in user["spec"]["authorization"]["acls"]
    }
    read, write = {"Describe", "Read"}, {"Describe", "Write"}
    assert acls == {  # exactly what the service does, nothing more (no Create, no Alter)
        ("topic", k.input_topics[0]): read,
        ("group", k.group_id): read,
        ("topic", k.alert_topic): write,
        ("topic", k.dead_letter_topic): write,
        ("topic", k.model_events_topic): write,
        ("topic", k.state_topic): read | write,
    }
    clusters = {
        o["metadata"]["labels"]["strimzi.io/cluster"]
        for (kind, _), o in objs.items()
        if kind.startswith("Kafka")
    }
    (cluster,) = clusters
    assert k.bootstrap_servers == f"{cluster}-kafka-bootstrap:9093"
    pod = _pod_spec(objs[("Deployment", "stream-vae")])
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "kafka-ca"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "kafka-ca"]
    assert volume["secret"]["secretName"] == f"{cluster}-cluster-ca-cert"
    assert str(k.ssl_cafile) == f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"
    trigger = objs[("ScaledObject", "stream-vae")]["spec"]["triggers"][0]["metadata"]
    assert trigger["bootstrapServers"] == k.bootstrap_servers


@pytest.mark.parametrize("variant", VARIANTS)
def test_keda_scales_on_the_group_lag_within_the_partitions(variant: str) -> None:
    scaled = _k8s("ScaledObject", variant=variant)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    deployment = _k8s("Deployment", variant=variant)
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    partitions = KafkaSettings().topic_partitions
    configured = load_settings(env=_pod_env(variant))
    assert scaled["spec"]["maxReplicaCount"] <= partitions
    assert scaled["spec"]["maxReplicaCount"] <= configured.kafka.topic_partitions
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["consumerGroup"] == configured.kafka.group_id
    assert meta["topic"] in configured.kafka.input_topics
    assert meta["bootstrapServers"] == configured.kafka.bootstrap_servers
    assert meta["offsetResetPolicy"] == "earliest"  # as the service's consumer
    assert trigger["authenticationRef"]["name"] == "stream-vae-kafka"


def test_metrics_are_published_on_loopback_only() -> None:
    """0.0.0.0 is the bind address inside a pod or an image (the container's own network);
    nothing here publishes the port on every interface of a host."""
    for name, svc in _compose()["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"compose {name} publishes {port}"
    texts = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *DOCKERFILES]
    texts += [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in (".md", ".yaml", "")]
    for path in texts:
        for published in re.findall(r"\s(?:-p|--publish)[ =]([0-9]\S*)", path.read_text()):
            assert published.startswith("127.0.0.1:"), f"{path.name}: -p {published}"
    assert ServiceSettings().metrics_host == "127.0.0.1"  # the default, outside containers
    binds_all = {
        str(p.relative_to(REPO))
        for p in (*DOCKERFILES, *_yaml_files())
        if "METRICS_HOST" in p.read_text() and "0.0.0.0" in p.read_text()
    }
    assert binds_all == {
        "deploy/Dockerfile",
        "deploy/Dockerfile.cuda",
        "deploy/compose.yaml",
        "deploy/k8s/base/configmap.yaml",
    }


def test_the_retrain_job_does_not_retry_what_would_fail_again() -> None:
    from stream_vae.cli.main import EXIT_CODES

    job = _k8s("CronJob", "stream-vae-retrain")["spec"]["jobTemplate"]["spec"]
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    codes = rule["onExitCodes"]["values"]
    assert set(codes) <= EXIT_CODES.keys() and 3 in codes  # a rejection is final
    assert 75 not in codes  # retriable
    (container,) = _pod_spec(_k8s("CronJob", "stream-vae-retrain"))["containers"]
    assert rule["onExitCodes"]["containerName"] == container["name"]
    assert _pod_spec(_k8s("CronJob", "stream-vae-retrain"))["restartPolicy"] == "Never"


def _rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = _doc(DEPLOY / "prometheus/rules.yml")["groups"]
    return groups


def test_health_rules_query_exported_metrics_and_k8s_has_the_same() -> None:
    rules = [r for g in _rule_groups() for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {
        "StreamVAEDown",
        "StreamVAEConsumerLag",
        "StreamVAEDeadLetterRate",
        "StreamVAERetrainFailed",
        "StreamVAEAlertSurge",
    } <= names
    exported = _exported()
    for rule in rules:
        refs = set(METRIC_REF.findall(rule["expr"]))
        assert refs and refs <= exported.keys(), (rule["alert"], refs - exported.keys())
        known = set(TARGET_LABELS) | {lab for ref in refs for lab in exported[ref]}
        for group in re.findall(r"\bby\s*\(([^)]*)\)", rule["expr"]):
            assert {g.strip() for g in group.split(",")} <= known, rule["alert"]
        for label, value in re.findall(r"(\w+)=\"([^\"]*)\"", rule["expr"]):
            assert label in known, (rule["alert"], label)
            if label == "event":  # a closed set the metrics export at zero
                assert value in {"open", "close", "promoted", "rejected", "failed", "swapped"}
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"]
    operator = _doc(K8S / "monitoring" / "prometheusrule.yaml")
    assert operator["kind"] == "PrometheusRule"
    assert operator["spec"]["groups"] == _rule_groups()
    # compose's Prometheus loads the file from where its config says
    config = _doc(DEPLOY / "prometheus/prometheus.yml")
    mounts = _compose()["services"]["prometheus"]["volumes"]
    (path,) = config["rule_files"]
    assert f"./prometheus/rules.yml:{path}:ro" in mounts
