"""infra/: the manifests parse, have the expected kinds, inline no secrets, and run valid configs."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

from hashing.config import load_config
from hashing.serving_app import APP_NAME, parse_app_args

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
IMAGE_APP = "/app/"  # where infra/Dockerfile puts the repository

EXPECTED_KINDS = {
    "raycluster.yaml": [("v1", "ConfigMap"), ("ray.io/v1", "RayCluster")],
    "rayjob-train.yaml": [("ray.io/v1", "RayJob")],
    "rayservice.yaml": [("ray.io/v1", "RayService")],
    "cronjob-nightly-encode.yaml": [
        ("v1", "ServiceAccount"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("v1", "ConfigMap"),
        ("batch/v1", "CronJob"),
    ],
    "mlflow.yaml": [
        ("v1", "Service"),
        ("apps/v1", "StatefulSet"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
    ],
}
SECRET_NAMES = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", re.IGNORECASE)


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((INFRA / name).read_text()) if d is not None]


def _walk(node, path=""):
    """Yield (path, dict) for every mapping in a parsed manifest."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _containers(doc: dict) -> list[dict]:
    return [c for _, node in _walk(doc) for c in node.get("containers", [])]


def _rayjobs() -> list[dict]:
    jobs = [d for d in _docs("rayjob-train.yaml") if d["kind"] == "RayJob"]
    for doc in _docs("cronjob-nightly-encode.yaml"):
        if doc["kind"] == "ConfigMap":
            jobs += [yaml.safe_load(text) for text in doc["data"].values()]
    return jobs


def _commands(entrypoint: str) -> list[list[str]]:
    """A RayJob entrypoint (one shell line, steps joined by ``&&``) -> each step's argv."""
    args = shlex.split(entrypoint)
    steps, step = [], []
    for arg in args:
        if arg == "&&":
            steps.append(step)
            step = []
        else:
            step.append(arg)
    return [*steps, step]


def _rayservice() -> dict:
    (service,) = _docs("rayservice.yaml")
    return service


def _serve_app() -> dict:
    serve_config = yaml.safe_load(_rayservice()["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    return app


def _cpus(quantity) -> float:
    """A Kubernetes CPU quantity ("4", 4, "500m") in CPUs."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


@pytest.mark.parametrize("name", sorted(EXPECTED_KINDS))
def test_manifest_parses_with_expected_kinds(name):
    docs = _docs(name)
    assert [(d["apiVersion"], d["kind"]) for d in docs] == EXPECTED_KINDS[name]
    for doc in docs:
        assert doc["metadata"].get("namespace") == "hashing", (name, doc["kind"])


def test_every_manifest_is_listed():
    assert {p.name for p in INFRA.glob("*.yaml")} == set(EXPECTED_KINDS)
    readme = (INFRA / "README.md").read_text()
    for name in [*EXPECTED_KINDS, "Dockerfile"]:
        assert f"`{name}`" in readme, name


@pytest.mark.parametrize("name", sorted(EXPECTED_KINDS))
def test_no_inline_secrets(name):
    for doc in _docs(name):
        for path, node in _walk(doc):
            # env entries: a secret-looking variable must come from a secretKeyRef, never a value
            if "name" in node and "value" in node and SECRET_NAMES.search(str(node["name"])):
                pytest.fail(f"{name}{path}: {node['name']} has an inline value")
            if doc["kind"] == "ConfigMap" and path.endswith(".data"):
                bad = [k for k in node if SECRET_NAMES.search(k)]
                assert not bad, f"{name}: secrets in a ConfigMap: {bad}"
        assert doc["kind"] != "Secret", f"{name}: Secrets are created out of band, not committed"
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", (INFRA / name).read_text()), (
        f"{name}: credentials in a URI"
    )


def test_raycluster_has_cpu_head_and_gpu_workers():
    cluster = next(d for d in _docs("raycluster.yaml") if d["kind"] == "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    (group,) = cluster["spec"]["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    constraints = (REPO / "constraints.txt").read_text()
    assert f"ray=={cluster['spec']['rayVersion']}" in constraints
    for container in (head, worker):
        refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {"hashing-env", "hashing-s3"}


def test_mlflow_server_settings_from_stack_notes():
    deployment = next(d for d in _docs("mlflow.yaml") if d["kind"] == "Deployment")
    (container,) = _containers(deployment)
    assert "--workers=1" in container["command"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")


def test_cronjob_submits_the_nightly_rayjob():
    cron = next(d for d in _docs("cronjob-nightly-encode.yaml") if d["kind"] == "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    script = _containers(cron)[0]["args"][0]
    assert "kubectl create -f /manifests/rayjob.yaml" in script
    (nightly,) = [j for j in _rayjobs() if j["metadata"].get("name") == "nightly-encode"]
    steps = _commands(nightly["spec"]["entrypoint"])
    scripts = [Path(step[1]).name for step in steps]
    # re-encode the champion, encode the challenger, evaluate both, then promote
    assert scripts == ["encode.py", "encode.py", "evaluate.py", "evaluate.py", "promote.py"]
    assert "--nightly" in steps[0] and "--nightly" not in steps[1]
    assert "evaluate.alias=champion" in steps[2] and "evaluate.alias=challenger" in steps[3]
    assert "--dry-run" not in steps[4]


def test_cronjob_upgrades_the_rayservice_after_a_promotion():
    cron = next(d for d in _docs("cronjob-nightly-encode.yaml") if d["kind"] == "CronJob")
    script = _containers(cron)[0]["args"][0]
    service = _rayservice()
    name = service["metadata"]["name"]
    annotations = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["annotations"]
    (key,) = annotations
    assert f"kubectl -n hashing patch rayservice {name} " in script
    assert f'\\"{key}\\":' in script  # the patch sets that annotation (a rayClusterConfig change)
    assert '= promoted ]' in script and "logs job/nightly-encode" in script
    role = next(d for d in _docs("cronjob-nightly-encode.yaml") if d["kind"] == "Role")
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert {("rayservices", "patch"), ("jobs", "get"), ("pods", "list"), ("pods/log", "get")} <= granted


@pytest.mark.parametrize(
    "job", _rayjobs(), ids=lambda j: j["metadata"].get("name") or j["metadata"]["generateName"]
)
def test_rayjob_entrypoints_are_valid_configs(job):
    """The job command lines name files that exist in the image and overrides the schema accepts."""
    for args in _commands(job["spec"]["entrypoint"]):
        assert args[0] == "python" and args[1].startswith(IMAGE_APP)
        assert (REPO / args[1].removeprefix(IMAGE_APP)).is_file()
        config_path = REPO / args[args.index("--config") + 1].removeprefix(IMAGE_APP)
        overrides = [a for a in args[2:] if "=" in a and not a.startswith("-")]
        config = load_config(config_path, overrides)
        assert config.dataset.uri.startswith("s3://")
        if "train.py" in args[1]:
            assert config.train.use_gpu and config.train.storage_path.startswith("s3://")
            continue
        assert config.encode.codes_root.startswith("s3://")
        if "encode.py" in args[1]:
            assert config.encode.use_gpu
            assert config.encode.alias == ("champion" if "--nightly" in args else "challenger")


def test_rayservice_serves_the_app_builder():
    app = _serve_app()
    assert app["name"] == APP_NAME and app["route_prefix"] == "/"
    module, _, attr = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attr)
    assert callable(builder) and builder.__name__ == "app_builder"
    parsed = parse_app_args(app["args"])  # the args Serve passes are ones the builder accepts
    assert parsed.config.startswith(IMAGE_APP)
    config = load_config(REPO / parsed.config.removeprefix(IMAGE_APP), parsed.overrides)
    # the same dataset and code shards as the nightly encode writes
    (nightly,) = [j for j in _rayjobs() if j["metadata"].get("name") == "nightly-encode"]
    first = _commands(nightly["spec"]["entrypoint"])[0]
    encoded = load_config(REPO / first[first.index("--config") + 1].removeprefix(IMAGE_APP),
                          [a for a in first[2:] if "=" in a])
    assert config.dataset.uri == encoded.dataset.uri and config.dataset.uri.startswith("s3://")
    assert config.encode.codes_root == encoded.encode.codes_root
    assert config.search.alias == "champion" and config.search.version is None


def test_rayservice_cluster_like_the_raycluster():
    spec = _rayservice()["spec"]
    cluster_spec = spec["rayClusterConfig"]
    raycluster = next(d for d in _docs("raycluster.yaml") if d["kind"] == "RayCluster")
    assert cluster_spec["rayVersion"] == raycluster["spec"]["rayVersion"]
    assert spec["upgradeStrategy"]["type"] == "NewCluster"  # new cluster healthy before the old one goes
    head = cluster_spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    image = raycluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    (group,) = cluster_spec["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    for container in (head, worker):
        assert container["image"] == image
        refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {"hashing-env", "hashing-s3"}
        for quantity in container["resources"]["limits"].values():
            assert re.fullmatch(r"\d+(m|Gi|Mi)?", str(quantity)), quantity
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    # every replica (a Partition each, Search in front) fits the workers' CPUs
    args = parse_app_args(_serve_app()["args"])
    assert isinstance(args.cpus_per_replica, int | float) and args.cpus_per_replica > 0
    needed = (args.partitions + 1) * args.cpus_per_replica
    assert needed <= group["minReplicas"] * _cpus(worker["resources"]["limits"]["cpu"])
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_dockerfile_installs_cuda_torch_through_constraints():
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.MULTILINE)
    assert "--index-url" in text and "download.pytorch.org/whl/cu" in text
    assert "-c /tmp/constraints-gpu.txt" in text
    assert "constraints.txt > /tmp/constraints-gpu.txt" in text
