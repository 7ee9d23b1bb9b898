"""The deployment files: the Dockerfile builds what the tests install, and compose and the
Kubernetes manifests (rendered with `kubectl kustomize`) run Spool as its settings expect."""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from shared.cli import build_parser
from shared.redis.address import SentinelAddress, parse_redis_url
from shared.redis.embedded import EmbeddedRedis, free_port
from shared.settings import Settings, load_settings
from tests.processes import start_api, write_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# What a worker needs after worker_shutdown_grace_s to cancel, hand back its jobs and close
# its connections, and an API after its drain, before the SIGKILL may come.
HAND_BACK_MARGIN_S = 15
DRAIN_MARGIN_S = 5


# -- helpers ----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SPOOL_* / REDIS_URL variable from the outer environment leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("SPOOL_") or name.upper() == "REDIS_URL":
            monkeypatch.delenv(name)


def api_drain_s() -> int:
    """How long `spool api` holds its shutdown open: uvicorn's timeout_graceful_shutdown
    in shared/cli.py."""
    tree = ast.parse((REPO / "shared" / "cli.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "timeout_graceful_shutdown":
            assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, int), (
                "timeout_graceful_shutdown is no longer a number in shared/cli.py: "
                "teach this test where the API's drain time comes from"
            )
            return node.value.value
    raise AssertionError("shared/cli.py no longer sets timeout_graceful_shutdown")


def spool_command(argv: list[str]) -> argparse.Namespace:
    """`argv` (after the `spool` program) parsed by Spool's own parser."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"`spool {shlex.join(argv)}` is not a valid spool command") from None


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process gets from this environment (and the file SPOOL_CONFIG names)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def duration_s(value: str) -> int:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", value)
    assert match and value, f"not a duration: {value!r}"
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


# -- Kubernetes -------------------------------------------------------------------------


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is needed to render deploy/k8s (`kubectl kustomize`); install it "
            "(the kubectl package from the Kubernetes apt repository, or the Google Cloud SDK)"
        )
    done = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@dataclass
class Rendering:
    objects: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self.all(kind) if o["metadata"]["name"] == name), None)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = self.find(kind, name)
        assert found is not None, f"the rendering has no {kind} {name}"
        return found

    def deployment(self, component: str) -> dict[str, Any]:
        """The Deployment whose pods are this component (api, worker)."""
        matches = [
            d
            for d in self.all("Deployment")
            if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
            == component
        ]
        assert len(matches) == 1, f"expected one {component} Deployment, found {len(matches)}"
        return matches[0]

    def secret_keys(self, name: str) -> set[str]:
        secret = self.get("Secret", name)
        return set(secret.get("data") or {}) | set(secret.get("stringData") or {})

    def secret_value(self, name: str, key: str) -> str:
        secret = self.get("Secret", name)
        string_data: dict[str, str] = secret.get("stringData") or {}
        assert key in string_data, f"Secret {name} has no {key} in stringData"
        return string_data[key]


@pytest.fixture(scope="module")
def k8s() -> Rendering:
    return Rendering(kustomize(DEPLOY / "k8s"))


@pytest.fixture(scope="module")
def k8s_sentinel() -> Rendering:
    return Rendering(kustomize(DEPLOY / "k8s" / "overlays" / "sentinel"))


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one Spool container per pod"
    return containers[0]  # type: ignore[no-any-return]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are checked here"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def port_number(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    assert named, f"container {c['name']} has no port named {port!r}"
    return int(named[0])


def pod_env(rendering: Rendering, deployment: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """The environment the pod's container gets, every reference resolved against the
    rendering; SPOOL_CONFIG points at a copy of the mounted ConfigMap file."""
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        ref = source["secretRef"]["name"]
        secret = rendering.get("Secret", ref)
        env.update(secret.get("stringData") or {})
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["key"] in rendering.secret_keys(ref["name"]), (
            f"{var['name']}: Secret {ref['name']} has no key {ref['key']}"
        )
        env[var["name"]] = rendering.secret_value(ref["name"], ref["key"])
    config = PurePosixPath(env["SPOOL_CONFIG"])
    mounts = [m for m in c["volumeMounts"] if PurePosixPath(m["mountPath"]) == config.parent]
    assert mounts, f"SPOOL_CONFIG {config} is on no mounted volume"
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])
    config_map = rendering.get("ConfigMap", volume["configMap"]["name"])
    assert config.name in config_map["data"], f"ConfigMap has no {config.name}"
    local = tmp_path / f"{deployment['metadata']['name']}-{config.name}"
    local.write_text(config_map["data"][config.name])
    env["SPOOL_CONFIG"] = str(local)
    return env


def test_every_reference_resolves_to_an_object_of_the_rendering(k8s: Rendering) -> None:
    for deployment in k8s.all("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for volume in pod["volumes"]:
            if "configMap" in volume:
                k8s.get("ConfigMap", volume["configMap"]["name"])
            if "persistentVolumeClaim" in volume:
                k8s.get("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
            if "secret" in volume:
                k8s.get("Secret", volume["secret"]["secretName"])
        c = container(deployment)
        mounted = {m["name"] for m in c["volumeMounts"]}
        assert mounted <= {v["name"] for v in pod["volumes"]}
        for source in c.get("envFrom", []):
            k8s.get("Secret", source["secretRef"]["name"])
        for var in c.get("env", []):
            if "valueFrom" in var:
                ref = var["valueFrom"]["secretKeyRef"]
                assert ref["key"] in k8s.secret_keys(ref["name"]), var
    for hpa in k8s.all("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        k8s.get(target["kind"], target["name"])


def test_both_deployments_start_with_settings_that_validate(
    k8s: Rendering, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for component in ("api", "worker"):
        deployment = k8s.deployment(component)
        args = spool_command(container(deployment)["args"])
        assert args.command == component
        env = pod_env(k8s, deployment, tmp_path)
        settings = settings_from(env, monkeypatch)
        assert settings.redis_url == env["REDIS_URL"]
        assert not settings.demo_enabled, "production manifests run without the demo models"
        # Every provider key the model table names reaches the pod.
        for name, entry in settings.models.items():
            key_env = getattr(entry, "api_key_env", None)
            if key_env:
                assert key_env in env, f"model {name}: no {key_env} in its environment"
        # Spool writes task outputs under artifacts_dir: a mounted volume, shared by both.
        mounts = {m["mountPath"] for m in container(deployment)["volumeMounts"]}
        assert settings.artifacts_root.as_posix() in mounts


def test_the_api_is_probed_on_the_routes_and_port_it_serves(
    k8s: Rendering, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = k8s.deployment("api")
    c = container(deployment)
    args = spool_command(c["args"])
    settings = settings_from(pod_env(k8s, deployment, tmp_path), monkeypatch)
    served = args.port or settings.port
    ready = c["readinessProbe"]["httpGet"]
    alive = c["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz"
    assert alive["path"] == "/healthz"
    assert port_number(c, ready["port"]) == served
    assert port_number(c, alive["port"]) == served
    assert (args.host or settings.host) == "0.0.0.0", "the API must listen beyond loopback"


def test_the_api_drains_after_the_service_stops_routing_to_it(k8s: Rendering) -> None:
    deployment = k8s.deployment("api")
    pre_stop = container(deployment)["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        pause = int(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert PurePosixPath(command[0]).name == "sleep", command
        pause = int(command[1])
    assert pause >= 5, "endpoints take a few seconds to leave kube-proxy and load balancers"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pause + api_drain_s() + DRAIN_MARGIN_S, (
        f"terminationGracePeriodSeconds {grace} < preStop {pause} s + drain {api_drain_s()} s"
    )


def test_the_worker_grace_outlasts_a_jobs_hand_back(
    k8s: Rendering, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = k8s.deployment("worker")
    settings = settings_from(pod_env(k8s, deployment, tmp_path), monkeypatch)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= settings.worker_shutdown_grace_s + HAND_BACK_MARGIN_S, (
        f"terminationGracePeriodSeconds {grace} leaves no time to hand jobs back after "
        f"worker_shutdown_grace_s ({settings.worker_shutdown_grace_s} s)"
    )
    assert "lifecycle" not in container(deployment), "a worker needs no preStop: it has no port"


def test_the_worker_serves_its_metrics_where_prometheus_is_told_to_look(
    k8s: Rendering, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = k8s.deployment("worker")
    worker = container(deployment)
    args = build_parser().parse_args(worker["args"])
    settings = settings_from(pod_env(k8s, deployment, tmp_path), monkeypatch)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert args.metrics_port == int(annotations["prometheus.io/port"])
    assert {"name": "metrics", "containerPort": args.metrics_port} in worker["ports"]
    assert settings.host == "0.0.0.0", "metrics on the pod's loopback reach no scraper"


def test_the_autoscaler_scales_the_api_on_what_its_pods_request(k8s: Rendering) -> None:
    (hpa,) = k8s.all("HorizontalPodAutoscaler")
    api = k8s.deployment("api")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", api["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    for metric in hpa["spec"]["metrics"]:
        resource = metric["resource"]["name"]
        # Utilization is a share of the request: without one the autoscaler cannot work.
        assert resource in container(api)["resources"]["requests"]


def test_each_disruption_budget_covers_one_deployments_pods(k8s: Rendering) -> None:
    budgets = k8s.all("PodDisruptionBudget")
    assert len(budgets) == 2
    covered = []
    for pdb in budgets:
        matched = [
            d["metadata"]["name"]
            for d in k8s.all("Deployment")
            if selects(pdb["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(matched) == 1, f"PDB {pdb['metadata']['name']} selects {matched}"
        covered += matched
        deployment = k8s.get("Deployment", matched[0])
        # A budget that allows no disruption blocks node drains for good.
        if "minAvailable" in pdb["spec"]:
            assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
        else:
            assert pdb["spec"]["maxUnavailable"] >= 1
    assert sorted(covered) == sorted(d["metadata"]["name"] for d in k8s.all("Deployment"))


def test_the_service_routes_to_the_api_pods_only(k8s: Rendering) -> None:
    services = [s for s in k8s.all("Service") if s["spec"].get("type") != "ExternalName"]
    assert len(services) == 1
    service = services[0]
    matched = [
        d["metadata"]["name"]
        for d in k8s.all("Deployment")
        if selects({"matchLabels": service["spec"]["selector"]},
                   d["spec"]["template"]["metadata"]["labels"])
    ]  # fmt: skip
    api = k8s.deployment("api")
    assert matched == [api["metadata"]["name"]]
    assert service["spec"].get("sessionAffinity", "None") == "None", "any replica serves"
    served = spool_command(container(api)["args"]).port
    for port in service["spec"]["ports"]:
        assert port_number(container(api), port["targetPort"]) == served


def test_pods_run_unprivileged_on_a_read_only_root(k8s: Rendering) -> None:
    uid = dockerfile_user()[0]
    for deployment in k8s.all("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid, "the image's own user"
        c = container(deployment)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # Request bodies and temporary files need a writable /tmp.
        assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}
        assert "requests" in c["resources"] and "limits" in c["resources"]


def test_redis_is_external_and_the_sentinel_overlay_names_sentinels(
    k8s: Rendering, k8s_sentinel: Rendering
) -> None:
    url = k8s.secret_value("spool-secrets", "REDIS_URL")
    address = parse_redis_url(url)
    assert isinstance(address, str)
    (redis,) = [s for s in k8s.all("Service") if s["spec"].get("type") == "ExternalName"]
    assert f"@{redis['metadata']['name']}:" in url, "REDIS_URL names the ExternalName Service"

    sentinel = parse_redis_url(k8s_sentinel.secret_value("spool-secrets", "REDIS_URL"))
    assert isinstance(sentinel, SentinelAddress)
    assert len(sentinel.sentinels) >= 3 and sentinel.service
    assert k8s_sentinel.find("Service", redis["metadata"]["name"]) is None
    # The overlay changes Redis only.
    assert len(k8s_sentinel.all("Deployment")) == 2


# -- the Dockerfile ---------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    heredocs: list[str] = field(default_factory=list)

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} should use the exec (JSON) form"
        return [str(v) for v in value]


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions: continuation lines joined, comments dropped,
    heredoc bodies attached to their instruction."""
    lines = iter((REPO / "Dockerfile").read_text().splitlines())
    out: list[Instruction] = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            nxt = next(lines)
            if not nxt.lstrip().startswith("#"):
                line = line[:-1] + " " + nxt.strip()
        keyword, _, args = line.strip().partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        for marker in re.findall(r"<<-?['\"]?(\w+)['\"]?", args):
            body = []
            for body_line in lines:
                if body_line == marker:
                    break
                body.append(body_line)
            instruction.heredocs.append("\n".join(body) + "\n")
        out.append(instruction)
    return out


def stages() -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in dockerfile():
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def dockerfile_user() -> tuple[int, int]:
    users = [i.args for i in stages()[-1] if i.keyword == "USER"]
    assert users, "the final stage sets no USER: the container would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and gid.isdigit(), "a numeric USER lets runAsNonRoot verify it"
    assert int(uid) != 0 and int(gid) != 0
    return int(uid), int(gid)


def test_the_image_is_a_slim_python_the_project_supports() -> None:
    instructions = dockerfile()
    defaults = dict(
        i.args.split("=", 1) for i in instructions if i.keyword == "ARG" and "=" in i.args
    )
    bases = [i.args.split()[0] for i in instructions if i.keyword == "FROM"]
    assert len(bases) >= 2, "multi-stage: build, then a runtime without build leftovers"
    supported = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for base in bases:
        base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], base)
        match = re.fullmatch(r"python:(\d+\.\d+)[.\d]*-slim(-\w+)?", base)
        assert match, f"{base} is not a slim Python image"
        assert Version(match.group(1)) in supported, f"{base} is outside requires-python"


def test_the_image_installs_the_project_the_tests_install() -> None:
    # The tests run on `make install`: an editable install of this project with [dev].
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"pip install .*-e '\.\[dev\]'", makefile), "the tests' install changed"
    build = next(s for s in stages() if any("pip wheel" in i.args for i in s))
    runs = [i.args for i in build if i.keyword == "RUN"]
    steps = [step.strip() for run in runs for step in run.split("&&")]
    name = PYPROJECT["project"]["name"]
    wheel = [s for s in steps if re.search(r"pip wheel\b", s)]
    assert len(wheel) == 1 and shlex.split(wheel[0])[-1] == ".", "a wheel of the project"
    assert "--no-deps" in wheel[0]
    installs = [s for s in steps if re.search(r"pip install\b", s)]
    assert installs == [f"/opt/spool/bin/pip install /wheels/{name}-*.whl"], installs
    assert not any("[dev]" in s or " -e " in s for s in steps), "no dev extra, no editable"
    # The project is built where its pyproject.toml was copied.
    workdir = [i.args for i in build if i.keyword == "WORKDIR"][-1]
    copies = [i.args.split() for i in build if i.keyword == "COPY" and "--from" not in i.args]
    assert any("pyproject.toml" in c[:-1] and c[-1] in ("./", ".", workdir) for c in copies)
    # The runtime stage runs what the build stage installed.
    runtime = stages()[-1]
    assert any(
        i.keyword == "COPY" and "--from=build" in i.args and "/opt/spool" in i.args for i in runtime
    )
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    assert "PATH=/opt/spool/bin:$PATH" in env


def dockerignored(rel: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `rel` (a path in the build context) out, as Docker
    reads the patterns: in order, `!` re-includes, a matched directory takes its files."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        compiled = regex(pattern.lstrip("!").strip("/").removeprefix("./"))
        if any(compiled.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


def build_context_copy(tmp: Path) -> Path:
    """The build stage's files, as its COPY instructions lay them out from the build
    context that .dockerignore leaves; returns the directory the wheel is built in."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    build = next(s for s in stages() if any("pip wheel" in i.args for i in s))
    workdir = PurePosixPath([i.args for i in build if i.keyword == "WORKDIR"][-1])
    root = tmp / "build-stage"
    for instruction in build:
        if instruction.keyword != "COPY":
            continue
        *sources, dest = instruction.args.split()
        target = root / (workdir / dest).relative_to("/")
        for source in sources:
            path = REPO / source
            assert path.exists() and not dockerignored(source, patterns), (
                f"COPY {source}: not in the build context (missing or in .dockerignore)"
            )
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                rel = file.relative_to(REPO).as_posix()
                if dockerignored(rel, patterns):
                    continue
                into = (
                    target / file.name
                    if path.is_file()
                    else target / file.relative_to(path)
                )  # fmt: skip
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, into)
    return root / workdir.relative_to("/")


def test_the_image_holds_every_file_of_the_packages_the_tests_use(tmp_path: Path) -> None:
    """setuptools builds from what the Dockerfile copies (less .dockerignore); the result
    must hold every file of the packages the tests import from the working tree (a data
    file missing from [tool.setuptools.package-data] would be missing from the image)."""
    src = build_context_copy(tmp_path)
    lib = tmp_path / "lib"
    done = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()",
         "-q", "build_py", "--build-lib", str(lib)],
        cwd=src, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    built = {p.relative_to(lib).as_posix() for p in lib.rglob("*") if p.is_file()}
    includes = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = sorted({pattern.rstrip("*") for pattern in includes})
    expected = {
        p.relative_to(REPO).as_posix()
        for top in tops
        for p in (REPO / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    }
    missing = sorted(expected - built)
    assert not missing, (
        "the image would lack these files (a package without __init__.py, or data files "
        f"not in [tool.setuptools.package-data]): {missing}"
    )
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts["spool"] == "shared.cli:main"


def test_the_image_runs_spool_as_an_unprivileged_user() -> None:
    uid, gid = dockerfile_user()
    runtime = stages()[-1]
    creates = " ".join(i.args for i in runtime if i.keyword == "RUN")
    assert f"--uid {uid}" in creates and f"--gid {gid}" in creates, "a user of its own"
    entrypoint = next(i for i in runtime if i.keyword == "ENTRYPOINT").exec_form()
    assert entrypoint == ["spool"] and "spool" in PYPROJECT["project"]["scripts"]
    cmd = next(i for i in runtime if i.keyword == "CMD").exec_form()
    args = spool_command(cmd)
    assert args.command == "api" and args.host == "0.0.0.0"
    assert "8000" in next(i for i in runtime if i.keyword == "EXPOSE").args.split()


def healthcheck() -> tuple[str, str]:
    """The HEALTHCHECK's program and its source, which the Dockerfile writes onto PATH."""
    runtime = stages()[-1]
    check = next(i for i in runtime if i.keyword == "HEALTHCHECK")
    program = Instruction("CMD", check.args.split(" CMD ", 1)[1]).exec_form()[0]
    installs = [i for i in runtime if i.keyword == "COPY" and i.heredocs]
    (install,) = [i for i in installs if i.args.split()[-1].endswith(f"/{program}")]
    assert "--chmod=0755" in install.args
    directory = str(PurePosixPath(install.args.split()[-1]).parent)
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    assert f"PATH={directory}:" in env, "the health check's program is on PATH"
    return program, install.heredocs[0]


class HealthcheckRunner:
    """Runs the image's health check script here, against a process given by its id."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.script = tmp_path / "healthcheck.py"
        self.script.write_text(healthcheck()[1])
        self.started: list[subprocess.Popen[bytes]] = []

    def pretend(self, *argv: str) -> int:
        """A process whose command line reads `python -m shared.cli <argv>`."""
        proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)", "-m", "shared.cli", *argv]
        )
        self.started.append(proc)
        return proc.pid

    def check(self, pid: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(self.script), str(pid)],
            capture_output=True, text=True, timeout=30, cwd=self.tmp_path,
        )  # fmt: skip

    def close(self) -> None:
        for proc in self.started:
            proc.kill()
            proc.wait()


@pytest.fixture
def healthcheck_runner(tmp_path: Path) -> Iterator[HealthcheckRunner]:
    runner = HealthcheckRunner(tmp_path)
    yield runner
    runner.close()


def test_the_healthcheck_asks_a_running_api_and_passes_a_worker(
    healthcheck_runner: HealthcheckRunner, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "spool.yaml", {}, auth_enabled=False)
    api = start_api(redis_server.url, config, tmp_path)
    try:
        done = healthcheck_runner.check(api.process.pid)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"http://127.0.0.1:{api.port}/healthz: 200" in done.stdout
    finally:
        api.stop()

    # `spool api` by its command line, but nothing answers on its port: unhealthy.
    port = str(free_port())
    done = healthcheck_runner.check(
        healthcheck_runner.pretend("--config", str(config), "api", "--port", port)
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"http://127.0.0.1:{port}/healthz" in done.stdout
    # A worker has no port: the check says so and passes.
    done = healthcheck_runner.check(healthcheck_runner.pretend("worker"))
    assert done.returncode == 0 and "not `spool api`" in done.stdout, done.stdout + done.stderr


# -- compose ----------------------------------------------------------------------------


def interpolate(value: Any) -> Any:
    """Compose's variable interpolation with every variable unset: defaults apply."""
    if isinstance(value, str):
        value = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return interpolate(loaded)  # type: ignore[no-any-return]


def test_compose_runs_redis_two_apis_two_workers_and_nginx(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker", "nginx"}
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["worker"]["deploy"]["replicas"] == 2
    for name in ("api", "worker"):
        service = services[name]
        assert service["image"] == services["api"]["image"], "one image for both"
        build = service["build"]
        assert (DEPLOY / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).is_file()
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
    assert spool_command(services["api"]["command"]).command == "api"
    assert spool_command(services["worker"]["command"]).command == "worker"


def test_compose_redis_keeps_its_data_in_a_named_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction" and options["--maxmemory"]
    volumes = [v.split(":") for v in redis["volumes"]]
    assert ["redis-data", "/data"] in volumes
    assert "redis-data" in compose["volumes"]
    assert "ports" not in redis, "Redis stays on the project's network"


def test_compose_waits_on_health_and_stops_gracefully(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    assert services["redis"]["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["nginx"]["depends_on"]["api"]["condition"] == "service_healthy"
    # The API's check is the image's own (compose restates it with its own timings).
    assert services["api"]["healthcheck"]["test"] == ["CMD", healthcheck()[0]]
    assert services["worker"]["healthcheck"] == {"disable": True}

    env = {k: str(v) for k, v in services["worker"]["environment"].items()}
    settings = settings_from(env, monkeypatch)
    worker_grace = duration_s(services["worker"]["stop_grace_period"])
    assert worker_grace >= settings.worker_shutdown_grace_s + HAND_BACK_MARGIN_S, (
        "the workers' stop_grace_period must outlast worker_shutdown_grace_s and the hand-back"
    )
    assert duration_s(services["api"]["stop_grace_period"]) >= api_drain_s() + DRAIN_MARGIN_S


def test_compose_services_share_the_artifacts_volume(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("api", "worker"):
        service = compose["services"][name]
        env = {k: str(v) for k, v in service["environment"].items()}
        settings = settings_from(env, monkeypatch)
        assert f"artifacts:{settings.artifacts_root.as_posix()}" in service["volumes"]
    assert "artifacts" in compose["volumes"]


def test_compose_nginx_serves_the_repository_config(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    nginx = compose["services"]["nginx"]
    mounts = dict(volume.split(":")[:2] for volume in nginx["volumes"])
    source = next(s for s, target in mounts.items() if target == "/etc/spool/nginx.conf")
    assert (DEPLOY / source).resolve() == DEPLOY / "nginx.conf"
    assert {"80:80", "443:443"} <= set(nginx["ports"])
    # Run the service's own start script on the repository's file, without the exec.
    shell, flags, script = nginx["command"]
    assert shell == "/bin/sh"
    out = tmp_path / "default.conf"
    script = script.replace("/etc/spool/nginx.conf", str(DEPLOY / "nginx.conf"))
    script = script.replace("/etc/nginx/conf.d/default.conf", str(out))
    script = "\n".join(line for line in script.splitlines() if not line.startswith("exec "))
    done = subprocess.run([shell, flags, script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    site = out.read_text()
    upstream = re.search(r"upstream spool_api \{(.*?)\}", site, re.S)
    assert upstream
    servers = re.findall(r"^\s*server (\S+);", upstream.group(1), re.M)
    port = spool_command(compose["services"]["api"]["command"]).port
    assert servers == [f"api:{port}"]
    assert "access_log /dev/stdout spool_no_query;" in site
    # The certificate paths of the shipped file live in the mounted TLS directory.
    tls_dir = next(t for s, t in mounts.items() if t.startswith("/etc/nginx/tls"))
    for path in re.findall(r"ssl_certificate(?:_key)?\s+(\S+);", site):
        assert PurePosixPath(path).parent == PurePosixPath(tls_dir)


# -- nginx.conf (read here; `make test-hosts` runs it in nginx) --------------------------


def nginx_conf() -> str:
    text = (DEPLOY / "nginx.conf").read_text()
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_nginx_logs_no_query_strings() -> None:
    conf = nginx_conf()
    formats = re.findall(r"log_format\s+(\w+)(.*?);", conf, re.S)
    assert formats
    for name, body in formats:
        for leak in ("$request ", '$request"', "$request_uri", "$args", "$query_string", "$arg_"):
            assert leak not in body + " ", f"log_format {name} records {leak.strip()}"
        assert "$uri" in body
    logs = re.findall(r"access_log\s+([^;]+);", conf)
    assert logs
    for log in logs:
        parts = log.split()
        assert parts == ["off"] or parts[1] in {name for name, _ in formats}, log


def test_nginx_redirects_to_tls_and_streams_unbuffered() -> None:
    conf = nginx_conf()
    assert re.search(r"listen\s+80;.*?return\s+30[178]\s+https://", conf, re.S)
    assert re.search(r"listen\s+443\s+ssl", conf)
    assert re.search(r"ssl_certificate\s+\S+;", conf)
    assert re.search(r"ssl_certificate_key\s+\S+;", conf)
    upstream = re.search(r"upstream spool_api \{(.*?)\}", conf, re.S)
    assert upstream and re.search(r"keepalive\s+\d+;", upstream.group(1))
    for directive in (
        "proxy_pass http://spool_api;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_buffering off;",
    ):
        assert directive in conf, directive
    timeout = re.search(r"proxy_read_timeout\s+(\d+)s;", conf)
    assert timeout
    keepalive = Settings.model_fields["keepalive_interval_s"].default
    assert int(timeout.group(1)) > 2 * keepalive, "outlast the SSE keep-alive comments"
    body = re.search(r"client_max_body_size\s+(\d+)m;", conf)
    assert body
    max_body = Settings.model_fields["max_body_bytes"].default
    assert int(body.group(1)) * 1024 * 1024 == max_body, "nginx and Spool refuse alike"
