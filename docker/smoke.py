"""`make docker-smoke`: serve a model this project registered from the serving image; compare.

1. build docker/Dockerfile.serve (images.py: the debootstrap base is created if missing) while
   an `mlflow server` (sqlite, proxied artifacts) starts on 127.0.0.1;
2. check the image: non-root user, no torch, every installed package at its requirements.lock
   version, the HEALTHCHECK command;
3. `compress prune --method cpna` on a tiny XOR config, registered as compress-smoke@champion;
4. serve it from a container twice, on 127.0.0.1 and a free port each:
   registry  MODEL_URI=models:/compress-smoke@champion, MLFLOW_TRACKING_URI=the server;
   folder    the same model downloaded on the host, mounted at /opt/model (read-only), with
             ONNX_PROVIDERS=CPUExecutionProvider (the copy-and-rewrite-providers path);
5. wait for /ping, POST /invocations ({"inputs": ...}), compare with onnxruntime on the host
   on the same float32 input (the exported model.onnx); check that a NaN input is answered
   400 and a body over MAX_REQUEST_MB (1 here) 413; remove the container.

Exit 0 only if every check passes. Environment: CONTAINER_ENGINE, BASE_IMAGE (see images.py),
SMOKE_SKIP_BUILD=1 (use the existing image), SMOKE_TIMEOUT (seconds to wait for /ping, 180),
SMOKE_ATOL (1e-5).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from http.client import HTTPConnection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import images  # noqa: E402

ROOT = images.ROOT
IMAGE = images.IMAGES["serve"][1]
MODEL_NAME = "compress-smoke"
ALIAS = "champion"
ROWS = 8
# Tiny CPNA on 3D-XOR with 10 features: pretrain + prune + export in ~20 s on one core.
TINY = ["data.p=10", "data.n_train=512", "data.n_val=256", "data.n_test=256",
        "model.hidden=[32]", "train.duration=5ep", "method.output_connections=4",
        "method.input_connections=8", "method.anneal_epochs=3", "method.final_epochs=1",
        f"export.alias={ALIAS}"]
PING_TIMEOUT_S = float(os.environ.get("SMOKE_TIMEOUT", "180"))
ATOL = float(os.environ.get("SMOKE_ATOL", "1e-5"))
SMOKE_MAX_REQUEST_MB = 1
RUN_FLAGS = images.PODMAN_FLAGS if images.engine() == "podman" else []


class SmokeFailure(Exception):
    pass


def say(message: str) -> None:
    print(f"[smoke] {message}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def answers(url: str) -> bool:
    try:
        return http(url, timeout=2.0)[0] == 200
    except (urllib.error.URLError, OSError):
        return False


def engine(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*images.engine_cmd(), *args], text=True,
                            capture_output=capture)
    if check and result.returncode != 0:
        raise SmokeFailure(f"{images.engine()} {' '.join(args[:3])} ... failed: "
                           f"{(result.stderr or '').strip()[-800:]}")
    return result


# --- the tracking server on the host ----------------------------------------------------------

def start_tracking_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true", "GIT_PYTHON_REFRESH": "quiet"}
    log = (root / "mlflow-server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_tracking_server(proc: subprocess.Popen, uri: str, root: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not answers(f"{uri}/health"):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (root / "mlflow-server.log").read_text(errors="replace")[-1500:]
            raise SmokeFailure(f"mlflow server at {uri} did not become healthy:\n{tail}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- checks ----------------------------------------------------------------------------------

def check_image() -> None:
    user = engine("image", "inspect", "--format", "{{.Config.User}}", IMAGE).stdout.strip()
    if user.split(":")[0] in ("", "root", "0"):
        raise SmokeFailure(f"{IMAGE} runs as root (USER={user!r})")
    script = ("import importlib.util, json, os, sys\n"
              "from importlib import metadata\n"
              "print(json.dumps({'uid': os.getuid(),\n"
              "  'torch': importlib.util.find_spec('torch') is not None,\n"
              "  'dists': {d.metadata['Name']: d.version for d in metadata.distributions()}}))\n")
    out = json.loads(engine("run", "--rm", *RUN_FLAGS, "--entrypoint", "python", IMAGE,
                            "-c", script).stdout)
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==", 1)
            lock[normalize(name)] = version.strip()
    tooling = {"pip", "setuptools", "wheel"}
    off = {n: v for n, v in out["dists"].items()
           if normalize(n) not in tooling and lock.get(normalize(n)) != v}
    if out["uid"] == 0 or out["torch"] or off:
        raise SmokeFailure(f"image check failed: uid={out['uid']} torch={out['torch']} "
                           f"not at the requirements.lock version: {off}")
    say(f"image: USER {user} (uid {out['uid']}), no torch, {len(out['dists'])} distributions "
        "all at their requirements.lock versions (pip itself excepted)")


def normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def register_model(tracking_uri: str, root: Path) -> dict:
    compress = Path(sys.executable).with_name("compress")
    command = [str(compress), "prune", "--method", "cpna", "--register", MODEL_NAME, "--json",
               "--out", str(root / "runs"), *[a for s in TINY for a in ("--set", s)]]
    say(f"registering: {' '.join(command)}")
    start = time.monotonic()
    result = subprocess.run(command, cwd=root, capture_output=True, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri})
    if result.returncode != 0:
        raise SmokeFailure(f"compress prune failed ({result.returncode}): {result.stderr[-1500:]}")
    summary = json.loads(result.stdout)
    reg = summary["registered"]
    say(f"registered {reg['model_uri']} (version {reg['version']}) in "
        f"{time.monotonic() - start:.1f} s; ONNX {summary['artifacts']['onnx']}")
    return summary


def local_reference(onnx_path: str):
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    (inp,), out = session.get_inputs(), session.get_outputs()[0]
    width = inp.shape[1]
    x = np.random.default_rng(0).uniform(-1, 1, size=(ROWS, width)).astype(np.float32)
    expected = session.run([out.name], {inp.name: x})[0]
    if float(np.ptp(expected)) == 0.0:
        # A constant model would match whatever input the server decoded.
        raise SmokeFailure(f"the smoke model predicts one value for all {ROWS} rows")
    return x, expected, out.name


def predictions(body: bytes, output_name: str):
    import numpy as np

    payload = json.loads(body)
    pred = payload.get("predictions", payload) if isinstance(payload, dict) else payload
    if isinstance(pred, dict):
        pred = pred[output_name] if output_name in pred else next(iter(pred.values()))
    return np.asarray(pred, dtype=np.float64)


# --- one served container --------------------------------------------------------------------

def serve_and_compare(case: str, env: dict[str, str], volumes: list[str], x, expected,
                      output_name: str) -> dict:
    import numpy as np

    port = free_port()
    name = f"compress-smoke-{os.getpid()}-{case}"
    args = ["run", "-d", "--name", name, *RUN_FLAGS]
    if "--network" not in RUN_FLAGS:
        args += ["--network", "host"]
    if images.engine() == "podman":
        args.append("--no-healthcheck")  # podman runs healthchecks via systemd timers; polled here
    for key, value in {**env, "HOST": "127.0.0.1", "PORT": str(port),
                       "MAX_REQUEST_MB": str(SMOKE_MAX_REQUEST_MB)}.items():
        args += ["-e", f"{key}={value}"]
    for volume in volumes:
        args += ["-v", volume]
    url = f"http://127.0.0.1:{port}"
    say(f"[{case}] starting container {name} on {url} ({', '.join(f'{k}={v}' for k, v in env.items())})")
    start = time.monotonic()
    engine(*args, IMAGE)
    try:
        while not answers(f"{url}/ping"):
            state = engine("inspect", "--format", "{{.State.Status}}", name, check=False)
            if state.stdout.strip() != "running":
                raise SmokeFailure(f"[{case}] container exited before /ping answered:\n"
                                   + logs(name))
            if time.monotonic() - start > PING_TIMEOUT_S:
                raise SmokeFailure(f"[{case}] /ping did not answer within {PING_TIMEOUT_S:.0f} s:\n"
                                   + logs(name))
            time.sleep(0.5)
        ready = time.monotonic() - start
        say(f"[{case}] /ping 200 after {ready:.1f} s")
        health = engine("exec", name, "python", "/opt/compress-serve/serve.py", "--health",
                        check=False)
        if health.returncode != 0:
            raise SmokeFailure(f"[{case}] the image's HEALTHCHECK command failed in the container")
        body = json.dumps({"inputs": x.tolist()}).encode()
        t0 = time.monotonic()
        status, reply = http(f"{url}/invocations", body, timeout=60)
        first_ms = (time.monotonic() - t0) * 1000
        if status != 200:
            raise SmokeFailure(f"[{case}] /invocations answered {status}: {reply[:800]!r}")
        got = predictions(reply, output_name)
        times = []
        for _ in range(10):
            t0 = time.monotonic()
            http(f"{url}/invocations", body, timeout=60)
            times.append((time.monotonic() - t0) * 1000)
        if got.shape != expected.shape:
            raise SmokeFailure(f"[{case}] response shape {got.shape} != local {expected.shape}")
        diff = float(np.max(np.abs(got - expected.astype(np.float64))))
        say(f"[{case}] POST /invocations ({ROWS} rows): first {first_ms:.1f} ms, median of 10 "
            f"{sorted(times)[5]:.1f} ms; max |served - local onnxruntime| = {diff:.3g}")
        say(f"[{case}] served {np.round(got[:4].ravel(), 6).tolist()} local "
            f"{np.round(expected[:4].astype(np.float64).ravel(), 6).tolist()} (first 4 rows)")
        if not diff <= ATOL:
            raise SmokeFailure(f"[{case}] served predictions differ from onnxruntime by {diff:.3g} "
                               f"> {ATOL}")
        check_guards(case, url, x)
        return {"ready_s": ready, "first_ms": first_ms, "median_ms": sorted(times)[5],
                "max_abs_diff": diff}
    finally:
        engine("rm", "-f", name, check=False)
        say(f"[{case}] container removed")


def check_guards(case: str, url: str, x) -> None:
    """A NaN input is answered 400; a body over MAX_REQUEST_MB (set to 1 here) 413."""
    rows = x[:2].tolist()
    rows[1][0] = float("nan")  # json.dumps writes NaN, which MLflow's JSON parser reads
    status, reply = http(f"{url}/invocations", json.dumps({"inputs": rows}).encode(), timeout=60)
    if status != 400:
        raise SmokeFailure(f"[{case}] a NaN input was answered {status}, not 400: {reply[:300]!r}")
    size = 2 * SMOKE_MAX_REQUEST_MB * 10**6
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest("POST", "/invocations")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        try:  # the server answers after the headers and may close before all is sent
            conn.send(b"[" + b"0," * (size // 2 - 1) + b"0")
        except (BrokenPipeError, ConnectionResetError):
            pass
        status = conn.getresponse().status
    finally:
        conn.close()
    if status != 413:
        raise SmokeFailure(f"[{case}] a {size}-byte body was answered {status}, not 413")
    say(f"[{case}] NaN input: 400; {size}-byte body: 413")


def logs(name: str) -> str:
    out = engine("logs", name, check=False)
    return ((out.stdout or "") + (out.stderr or ""))[-2500:]


def main() -> int:
    start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="compress-smoke-"))
    root.chmod(0o755)  # the container's non-root user reads the mounted model below it
    server = None
    try:
        server, tracking_uri = start_tracking_server(root)
        say(f"mlflow server starting on {tracking_uri} (store in {root})")
        if os.environ.get("SMOKE_SKIP_BUILD"):
            say(f"SMOKE_SKIP_BUILD: using the existing {IMAGE}")
        else:
            if images.engine() == "podman" and not os.environ.get("BASE_IMAGE"):
                images.ensure_base()
            seconds = images.build(["serve"])["serve"]
            say(f"serving image built in {seconds:.0f} s")
        check_image()
        wait_tracking_server(server, tracking_uri, root)
        summary = register_model(tracking_uri, root)
        x, expected, output_name = local_reference(summary["artifacts"]["onnx"])

        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        import mlflow.artifacts

        folder = root / "model"
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}@{ALIAS}",
                                            dst_path=str(folder))
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        results = {
            "registry": serve_and_compare(
                "registry", {"MODEL_URI": f"models:/{MODEL_NAME}@{ALIAS}",
                             "MLFLOW_TRACKING_URI": tracking_uri}, [], x, expected, output_name),
            "folder": serve_and_compare(
                "folder", {"ONNX_PROVIDERS": "CPUExecutionProvider"},
                [f"{folder}:/opt/model:ro"], x, expected, output_name),
        }
    except SmokeFailure as exc:
        say(f"FAILED: {exc}")
        return 1
    finally:
        if server is not None:
            stop(server)
        shutil.rmtree(root, ignore_errors=True)
    say(f"PASSED in {time.monotonic() - start:.0f} s: " + "; ".join(
        f"{case}: ready {r['ready_s']:.1f} s, first request {r['first_ms']:.1f} ms, "
        f"max abs diff {r['max_abs_diff']:.3g}" for case, r in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
