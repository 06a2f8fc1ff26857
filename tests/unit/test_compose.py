"""The deployment files, checked on paper: docker-compose.yml and its CPU override, the inference
Dockerfile, .dockerignore, .env.example and the GitHub workflow.

Nothing here runs Docker. What can drift without anyone noticing until a deployment fails is checked
instead: pinned images (the same Orthanc tag in compose and CI), healthchecks and start order, the GPU
reservation and its removal, setting names that tumorseg really reads, credentials only by reference,
ports on 127.0.0.1, the one Orthanc configuration file (C-STORE from declared modalities only), the
containers' hardening (capabilities, read-only root, memory limit), and every path a build or a mount
needs.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dockerfile import DOCKERFILE, dockerfile_instructions
from tumorseg.config import Settings
from tumorseg.jobs.queue import STOP_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
ORTHANC_JSON = "services/orthanc/orthanc.json"
MODEL_PACKAGE = "services/inference/src/tumorseg/shipped_model"  # package data: inside services/inference/src

ENV_PREFIX = str(Settings.model_config.get("env_prefix", ""))
SETTING_NAMES = {f"{ENV_PREFIX}{name}".upper() for name in Settings.model_fields}
TEST_ONLY_NAMES = {f"{ENV_PREFIX}TEST_ORTHANC_{part}" for part in ("URL", "USERNAME", "PASSWORD")}
# Settings that name a file: a value from the host means nothing in the container, so compose leaves
# them to an override file that mounts the file too.
FILE_SETTINGS = {f"{ENV_PREFIX}MAPPING_RULES"}
# Settings whose "unset" means something (no bound) that a ${VAR:-default} from .env cannot express:
# an empty value is not a number. An override file sets them.
# And the DICOMweb PACS: the stack brings its own Orthanc; pointing the service at another PACS (and its
# bearer token, a secret without a default) is an override file's job (README, "Another PACS").
UNSET_SETTINGS = {
    f"{ENV_PREFIX}RESULTS_MAX_AGE_DAYS",
    f"{ENV_PREFIX}RESULTS_MAX_GB",
    f"{ENV_PREFIX}DICOMWEB_URL",
    f"{ENV_PREFIX}DICOMWEB_TOKEN",
}
SECRET_KEY = re.compile(r"PASSWORD|API_KEY|SECRET|TOKEN|REGISTERED_USERS")
# ${VAR}, ${VAR?msg}, ${VAR:?msg}: a reference that carries no value of its own (no :- default).
REQUIRED_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?\?[^}]*)?\}")


class Reset:
    """Compose's ``!reset`` tag: the attribute is removed from what earlier files declared."""


class Override:
    """Compose's ``!override`` tag: the value replaces what earlier files declared."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus the two merge tags of the Compose specification."""


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    return Reset()


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    assert isinstance(node, yaml.ScalarNode)
    return Override(loader.construct_scalar(node))


ComposeLoader.add_constructor("!reset", _reset)
ComposeLoader.add_constructor("!override", _override)


def load_compose(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=ComposeLoader)  # a SafeLoader with two more tags
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file into a base: mappings key by key, sequences appended,
    scalars replaced; ``!reset`` removes, ``!override`` replaces."""
    if isinstance(override, Override):
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            else:
                merged[key] = merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return override


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found = compose.get("services")
    assert isinstance(found, dict) and {"orthanc", "inference"} <= found.keys(), found
    return found


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict) and isinstance(data.get("jobs"), dict), "ci.yml has no jobs"
    return data


def environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "write `environment:` as a mapping (KEY: value), not a list"
    return env


# ---- the Dockerfile, as instructions --------------------------------------------------------------


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "ENV":
            for item in shlex.split(args):
                name, sep, value = item.partition("=")
                assert sep, f"write `ENV {name}=value`, not the legacy `ENV name value` form"
                env[name] = value
    return env


def copy_sources() -> list[str]:
    """The build-context paths that COPY/ADD take (not those copied from another stage)."""
    sources: list[str] = []
    for keyword, args in dockerfile_instructions():
        if keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(args)
        if any(word.startswith("--from=") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        sources.extend(path.rstrip("/") or "." for path in paths[:-1])
    return sources


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last matching line wins; a
    pattern that matches a parent folder matches the path)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        regex = _glob(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def _glob(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
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


# ---- images ---------------------------------------------------------------------------------------


def test_orthanc_image_is_the_official_one_pinned_and_the_same_in_ci(
    services: dict[str, Any], workflow: dict[str, Any]
) -> None:
    image = services["orthanc"]["image"]
    repository, _, tag = image.partition(":")
    assert repository == "orthancteam/orthanc"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"pin a release tag like 25.2.0, not {tag!r}"
    ci_images = [
        service["image"]
        for job in workflow["jobs"].values()
        for service in (job.get("services") or {}).values()
        if str(service.get("image", "")).startswith("orthancteam/orthanc")
    ]
    assert ci_images, "ci.yml runs no official Orthanc image"
    assert set(ci_images) == {image}, f"ci.yml tests against {ci_images}, compose deploys {image}"


# The base image and the torch it installs: tests/unit/test_image_pins.py


# ---- healthchecks, start order, GPU ---------------------------------------------------------------


def test_both_services_have_healthchecks(services: dict[str, Any]) -> None:
    orthanc = services["orthanc"]["healthcheck"]["test"]
    inference = services["inference"]["healthcheck"]["test"]
    assert "/probes/test-aliveness.py" in " ".join(orthanc)
    assert "http://127.0.0.1:8000/health" in " ".join(inference)
    assert not services["inference"]["healthcheck"].get("disable")


def test_inference_starts_after_orthanc_is_healthy(services: dict[str, Any]) -> None:
    depends = services["inference"]["depends_on"]
    assert isinstance(depends, dict), "use the long form of depends_on, with a condition"
    assert depends["orthanc"]["condition"] == "service_healthy"


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices") or []
    return [device for device in devices if "gpu" in device.get("capabilities", [])]


def test_inference_reserves_an_nvidia_gpu(services: dict[str, Any]) -> None:
    devices = gpu_devices(services["inference"])
    assert len(devices) == 1, services["inference"].get("deploy")
    device = devices[0]
    assert device["driver"] == "nvidia"
    assert device.get("count") in (1, "all") or device.get("device_ids")
    assert environment(services["inference"])["TUMORSEG_DEVICE"] != "cpu"


def test_cpu_override_removes_the_gpu_and_selects_the_cpu(compose: dict[str, Any]) -> None:
    merged = merge(compose, load_compose(COMPOSE_CPU))
    inference = merged["services"]["inference"]
    assert gpu_devices(inference) == []
    assert environment(inference)["TUMORSEG_DEVICE"] == "cpu"
    # nothing else is lost on the way
    assert environment(inference)["TUMORSEG_ORTHANC_URL"] == "http://orthanc:8042"
    assert merged["services"]["orthanc"] == compose["services"]["orthanc"]


# ---- settings and secrets -------------------------------------------------------------------------


def tumorseg_names(path: Path) -> set[str]:
    return set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))


@pytest.mark.parametrize(
    "path", [COMPOSE, COMPOSE_CPU, DOCKERFILE, ENV_EXAMPLE, WORKFLOW], ids=lambda path: path.name
)
def test_every_tumorseg_variable_is_a_real_setting(path: Path) -> None:
    allowed = SETTING_NAMES | (TEST_ONLY_NAMES if path == WORKFLOW else set())
    unknown = tumorseg_names(path) - allowed
    assert not unknown, f"{path.name} names {sorted(unknown)}; tumorseg reads only {sorted(SETTING_NAMES)}"


def test_inference_gets_every_setting_by_name(services: dict[str, Any]) -> None:
    env = environment(services["inference"])
    missing = SETTING_NAMES - FILE_SETTINGS - UNSET_SETTINGS - env.keys()
    assert not missing, f"docker-compose.yml does not pass {sorted(missing)} to the inference service"
    assert FILE_SETTINGS <= SETTING_NAMES, "FILE_SETTINGS names a setting that no longer exists"
    assert UNSET_SETTINGS <= SETTING_NAMES, "UNSET_SETTINGS names a setting that no longer exists"
    assert not FILE_SETTINGS & env.keys(), "a host path from .env would reach the container"


def test_the_stack_runs_the_service_in_production_mode(services: dict[str, Any]) -> None:
    env = environment(services["inference"])
    assert env["TUMORSEG_ENVIRONMENT"] == "production"
    assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", env["TUMORSEG_API_KEY"]), "production needs an API key"
    # the image on its own too: `docker run` without compose refuses to start open
    assert dockerfile_env().get("TUMORSEG_ENVIRONMENT") == "production"


def test_container_paths_agree_between_dockerfile_and_compose(services: dict[str, Any]) -> None:
    image_env = dockerfile_env()
    compose_env = environment(services["inference"])
    assert image_env["TUMORSEG_MODEL_PATH"] == compose_env["TUMORSEG_MODEL_PATH"] == "/app/models/default"
    assert image_env["TUMORSEG_RESULTS_DIR"] == compose_env["TUMORSEG_RESULTS_DIR"] == "/data/results"
    assert any(str(volume).endswith(":/data/results") for volume in services["inference"]["volumes"])


def test_credentials_are_references_never_literals(services: dict[str, Any]) -> None:
    checked = 0
    for name, service in services.items():
        for key, value in environment(service).items():
            if not SECRET_KEY.search(key):
                continue
            checked += 1
            if value is None:  # no value: passed on from .env or the shell, when set there
                continue
            literal = REQUIRED_REF.sub("", str(value))
            assert not re.search(r"[A-Za-z0-9]", literal), (
                f"{name}.{key} holds a literal or a default ({value!r}); use ${{VAR:?message}} only"
            )
    assert checked >= 3  # Orthanc's users, the service's password, its API key


def test_no_secret_is_baked_into_the_image() -> None:
    for keyword, args in dockerfile_instructions():
        if keyword in ("ENV", "ARG"):
            assert not SECRET_KEY.search(args), f"{keyword} {args}: secrets come at run time, from .env"


def test_ci_credentials_are_generated_per_run(workflow: dict[str, Any]) -> None:
    def walk(node: Any) -> list[tuple[str, Any]]:
        if isinstance(node, dict):
            return [(str(k), v) for k, v in node.items()] + [p for v in node.values() for p in walk(v)]
        if isinstance(node, list):
            return [pair for item in node for pair in walk(item)]
        return []

    secrets = [(key, value) for key, value in walk(workflow) if SECRET_KEY.search(key)]
    assert secrets
    for key, value in secrets:
        assert "${{" in str(value), f"ci.yml: {key} is a literal ({value!r})"


def test_env_example_defines_what_compose_requires_and_no_password() -> None:
    example: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not NAME=value"
            example[name.strip()] = value.strip()
    required = {m.group("name") for m in REQUIRED_REF.finditer(COMPOSE.read_text()) if "?" in m.group(0)}
    assert required and required <= example.keys(), f".env.example lacks {sorted(required - example.keys())}"
    for name, value in example.items():
        assert not name.startswith(ENV_PREFIX), f"tumorseg on the host would read {name} from .env"
        if SECRET_KEY.search(name):
            assert value == "", f".env.example ships a value for {name}; leave it empty, to be set"


# ---- container hardening --------------------------------------------------------------------------

DEFAULTED_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):?-(?P<default>[^}]*)\}")
MEMORY = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[kmg]?)b?", re.IGNORECASE)


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def memory_bytes(value: str) -> float:
    found = MEMORY.fullmatch(value.strip())
    assert found, f"{value!r} is not a memory size like 6g or 6144m"
    return float(found["number"]) * 1024 ** " kmg".index(found["unit"].lower() or " ")


def hardening(service: dict[str, Any]) -> tuple[list[str], list[str]]:
    return list(service.get("cap_drop") or []), list(service.get("security_opt") or [])


@pytest.mark.parametrize("name", ["inference", "inference-replica", "worker"])
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_CPU]], ids=["gpu", "cpu"])
def test_the_inference_and_worker_containers_are_locked_down(files: list[Path], name: str) -> None:
    merged: dict[str, Any] = {}
    for path in files:
        merged = merge(merged, load_compose(path))
    inference = merged["services"][name]
    cap_drop, security_opt = hardening(inference)
    assert cap_drop == ["ALL"], "drop every Linux capability: the service needs none"
    assert "no-new-privileges:true" in security_opt
    assert inference.get("read_only") is True, "run the image on a read-only root file system"
    tmpfs = [str(entry).split(":")[0] for entry in inference.get("tmpfs") or []]
    assert "/tmp" in tmpfs, "a read-only image needs a tmpfs for scratch files"
    assert dockerfile_env()["XDG_CACHE_HOME"].startswith("/tmp/"), "library caches must be writable"
    writable = [str(v).split(":") for v in inference.get("volumes") or [] if not str(v).endswith(":ro")]
    if name == "inference":  # the embedded mode's SQLite store and results
        assert any(parts[1:2] == ["/data/results"] for parts in writable), "results need a writable volume"
    else:  # the scale profile's processes keep their state in PostgreSQL
        assert writable == [], f"{name} shares no directory with the API (its state is in PostgreSQL)"


def test_the_inference_container_has_a_configurable_memory_limit(services: dict[str, Any]) -> None:
    limit = services["inference"].get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
    assert limit is not None or services["inference"].get("mem_limit"), "no memory limit"
    ref = DEFAULTED_REF.fullmatch(str(limit))
    assert ref, (
        f"take the limit from .env with a default, like ${{INFERENCE_MEMORY_LIMIT:-6g}}, not {limit!r}"
    )
    # one request peaks at ~2.6 GiB on large studies, plus the series cache and the CUDA context
    assert memory_bytes(ref["default"]) >= 4 * 1024**3, f"{ref['default']} is below a request's peak"
    example = env_example()
    assert example.get(ref["name"]) == ref["default"], (
        f".env.example must show {ref['name']}={ref['default']}"
    )


def test_the_orthanc_container_drops_capabilities(services: dict[str, Any]) -> None:
    cap_drop, security_opt = hardening(services["orthanc"])
    assert cap_drop == ["ALL"] and "no-new-privileges:true" in security_opt


def test_env_example_lists_every_variable_compose_reads() -> None:
    example = env_example()
    for path in (COMPOSE, COMPOSE_CPU):
        names = set(re.findall(r"\$\{(\w+)", path.read_text()))
        assert names <= example.keys(), f".env.example does not document {sorted(names - example.keys())}"


def test_orthanc_accepts_c_store_only_from_declared_modalities(services: dict[str, Any]) -> None:
    settings = json.loads((ROOT / ORTHANC_JSON).read_text())
    assert settings["DicomAlwaysAllowStore"] is False, "only the modalities in DicomModalities may store"
    assert settings["DicomCheckCalledAet"] is True
    assert settings["DicomCheckModalityHost"] is True, "an AE title alone is no credential"
    for flag in ("Echo", "Find", "FindWorklist", "Get", "Move"):
        assert settings.get(f"DicomAlwaysAllow{flag}") is False, f"DicomAlwaysAllow{flag}"
    assert settings["DicomModalities"], "declare at least the example modality, as documentation"
    env = environment(services["orthanc"])
    weakened = [name for name in env if name.startswith(("ORTHANC__DICOM_ALWAYS_", "ORTHANC__DICOM_CHECK_"))]
    assert not weakened, f"docker-compose.yml overrides the tested DICOM checks: {weakened}"


# ---- ports, Orthanc configuration, paths ----------------------------------------------------------


def test_ports_are_published_on_localhost_only(services: dict[str, Any]) -> None:
    published = 0
    for name, service in services.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
            published += 1
    assert published >= 3  # Orthanc HTTP and DICOM, the API


def test_orthanc_runs_with_the_tested_configuration_file(services: dict[str, Any]) -> None:
    mounts = [str(volume).split(":") for volume in services["orthanc"]["volumes"]]
    config = [m for m in mounts if m[0] in (ORTHANC_JSON, f"./{ORTHANC_JSON}")]
    assert config, f"the orthanc service does not mount {ORTHANC_JSON}"
    assert re.fullmatch(r"/etc/orthanc/[^/]+\.json", config[0][1]), "the image reads /etc/orthanc/*.json"
    assert config[0][2:] == ["ro"]

    settings = json.loads((ROOT / ORTHANC_JSON).read_text())
    declared_volumes = set(load_compose(COMPOSE).get("volumes") or {})
    storage = {m[1] for m in mounts if m[0] in declared_volumes}
    assert settings["StorageDirectory"] in storage and settings["IndexDirectory"] in storage, (
        f"orthanc.json stores in {settings['StorageDirectory']}, the named volumes are on {storage}"
    )
    env = environment(services["orthanc"])
    assert settings["DicomWeb"]["Enable"] is True and env["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    assert settings["AuthenticationEnabled"] is True
    assert not set(env) & {"ORTHANC__STORAGE_DIRECTORY", "ORTHANC__INDEX_DIRECTORY", "ORTHANC_JSON"}, (
        "keep what the tested orthanc.json says in orthanc.json"
    )


def test_compose_paths_exist(services: dict[str, Any]) -> None:
    build = services["inference"]["build"]
    context = (ROOT / build["context"]).resolve()
    assert context == ROOT, "the Dockerfile's COPY paths are relative to the repository root"
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"


def test_dockerfile_copies_only_what_exists_and_is_in_the_context() -> None:
    sources = copy_sources()
    assert {"pyproject.toml", "services/inference/src"} <= set(sources), sources
    assert MODEL_PACKAGE.startswith("services/inference/src/"), "the wheel carries the model (package data)"
    assert not any(source.startswith("models") for source in sources), "the model travels in the wheel"
    runs = [args for keyword, args in dockerfile_instructions() if keyword == "RUN"]
    assert any("SHIPPED_MODEL" in run and "/app/models/default" in run for run in runs), "no model link"
    for source in sources:
        assert not dockerignored(source), f".dockerignore keeps {source} out of the build context"
        if source == MODEL_PACKAGE and not (ROOT / source).exists():
            continue  # checked by the next test
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
    for kept_out in (".env", ".venv", ".git", "out", "results", "tests", "training/data"):
        assert dockerignored(kept_out), f".dockerignore lets {kept_out} into the build context"


def test_the_shipped_model_package_exists_for_the_image() -> None:
    if not (ROOT / MODEL_PACKAGE).is_dir():
        pytest.skip(f"{MODEL_PACKAGE} is not in the repository yet: `docker build` fails until it is")
    assert any((ROOT / MODEL_PACKAGE).iterdir())


def test_dockerfile_runs_the_api_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the service must not run as root"
    healthchecks = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    assert healthchecks and "NONE" not in healthchecks[-1] and "/health" in healthchecks[-1]
    assert "8000" in [args for keyword, args in instructions if keyword == "EXPOSE"]
    cmd = [args for keyword, args in instructions if keyword == "CMD"][-1]
    assert json.loads(cmd) == ["tumorseg", "serve", "--host", "0.0.0.0", "--port", "8000"]


# ---- distributed mode: Redis and the workers (profile "scale") ------------------------------------

STACK_QUEUE_URL = "redis://redis:6379/0"


def test_redis_is_the_official_image_pinned_healthy_and_unpublished(services: dict[str, Any]) -> None:
    redis = services["redis"]
    name, _, tag = str(redis["image"]).partition(":")
    assert name == "redis" and re.match(r"^\d+\.\d+\.\d+", tag), redis["image"]
    assert redis.get("profiles") == ["scale"]
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]
    assert "ports" not in redis, "only the stack's containers may reach Redis"
    assert "--appendonly" in redis["command"], "queued jobs survive a Redis restart"


def test_workers_run_the_service_image_with_its_settings_and_a_gpu_each(services: dict[str, Any]) -> None:
    worker, inference = services["worker"], services["inference"]
    assert worker.get("profiles") == ["scale"] and worker["command"] == ["tumorseg", "worker"]
    assert worker["stop_grace_period"] == f"{STOP_TIMEOUT_S // 60}m", "the job in hand may finish on SIGTERM"
    assert worker["image"] == inference["image"] and worker["build"] == inference["build"]
    assert len(gpu_devices(worker)) == 1, "one GPU per worker: scale the service to use more"
    for needed in ("orthanc", "redis"):
        assert worker["depends_on"][needed]["condition"] == "service_healthy"
    assert inference["depends_on"]["redis"]["required"] is False  # the default stack has no Redis
    env, api_env = environment(worker), environment(inference)
    assert env["TUMORSEG_QUEUE_URL"] == STACK_QUEUE_URL
    assert api_env["TUMORSEG_QUEUE_URL"] == "${INFERENCE_QUEUE_URL:-}"  # unset: the embedded default
    urls = ("TUMORSEG_QUEUE_URL", "TUMORSEG_DATABASE_URL")
    same = {k: v for k, v in env.items() if k not in urls}
    assert same == {k: v for k, v in api_env.items() if k not in urls}
    # what the stack documents for INFERENCE_QUEUE_URL is the workers' Redis
    assert f"INFERENCE_QUEUE_URL={STACK_QUEUE_URL}" in COMPOSE.read_text()
    assert STACK_QUEUE_URL in ENV_EXAMPLE.read_text()
    assert "--profile scale up -d --scale worker=" in COMPOSE.read_text()


def test_the_cpu_override_also_moves_the_workers_to_the_cpu(compose: dict[str, Any]) -> None:
    worker = merge(compose, load_compose(COMPOSE_CPU))["services"]["worker"]
    assert gpu_devices(worker) == [] and environment(worker)["TUMORSEG_DEVICE"] == "cpu"


# ---- the scale profile: PostgreSQL, API replicas, workers without a shared directory (issue 40) -------


def test_the_scale_profile_runs_the_official_postgres_image_pinned_with_a_volume_and_a_healthcheck(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    postgres = services["postgres"]
    repository, _, tag = postgres["image"].partition(":")
    assert repository == "postgres", "the official image"
    assert re.fullmatch(r"\d+\.\d+(-[a-z0-9.]+)?", tag), f"pin a release like 17.2-bookworm, not {tag!r}"
    assert postgres["profiles"] == ["scale"]
    (data,) = [str(v).split(":") for v in postgres["volumes"]]
    assert data[1] == "/var/lib/postgresql/data" and data[0] in compose["volumes"], "a named volume"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    env = environment(postgres)
    assert REQUIRED_REF.fullmatch(env["POSTGRES_PASSWORD"]), "the password only from .env, no default"
    assert "ports" not in postgres, "only the stack's containers reach the database"


@pytest.mark.parametrize("name", ["inference-replica", "worker"])
def test_scale_processes_share_state_through_postgres_and_redis_only(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    env = environment(service)
    url = str(env["TUMORSEG_DATABASE_URL"])
    assert url.startswith("postgresql://") and "@postgres:5432/" in url, url
    assert REQUIRED_REF.search(url.split("@")[0]) and "${POSTGRES_PASSWORD}" in url, "password by reference"
    assert env["TUMORSEG_QUEUE_URL"] == "redis://redis:6379/0"
    assert not service.get("volumes"), f"{name} mounts nothing: no shared directory across hosts"
    depends = service["depends_on"]
    assert {depends[s]["condition"] for s in ("orthanc", "redis", "postgres")} == {"service_healthy"}


def test_the_scale_profile_shows_two_api_replicas_on_one_state(services: dict[str, Any]) -> None:
    first, replica = services["inference"], services["inference-replica"]
    assert replica["profiles"] == ["scale"] and replica["healthcheck"] == first["healthcheck"]
    assert environment(first)["TUMORSEG_DATABASE_URL"] == "${INFERENCE_DATABASE_URL:-}"
    assert first["depends_on"]["postgres"] == {"condition": "service_healthy", "required": False}
    assert gpu_devices(replica) == [], "the workers load the model; an API replica needs no GPU"
    (port,) = replica["ports"]
    assert str(port).startswith("127.0.0.1:") and str(port).endswith(":8000")
    assert str(port) != str(first["ports"][0])
