"""Build this project's images with podman (or docker) where base images cannot be pulled.

    python docker/images.py base                       # debootstrap Debian bookworm, podman import
    python docker/images.py build serve [runner tracking ...]

`base` creates LOCAL_BASE (Debian bookworm minbase + python3 + python3-venv, i.e. CPython 3.11
like python:3.11-slim-bookworm) unless it exists; it needs root, debootstrap and podman.

`build` passes BASE_IMAGE (default LOCAL_BASE with podman, the Dockerfile's public default
with docker) and, with podman, the host's pip configuration: the effective index-url,
extra-index-url, find-links and cert of `pip config list` plus PIP_* variables are written to a
pip.conf mounted at /etc/pip.conf for the build only, local indexes (file://) and wheel folders
and the CA bundle pip uses are mounted read-only under /run/host-pip, for the build only
(podman leaves the empty mount points: a 0-byte /etc/pip.conf and empty folders under
/run/host-pip). docker builds use the public indexes.

Environment: CONTAINER_ENGINE (podman), OCI_RUNTIME (runc), BASE_IMAGE, LOCAL_BASE, BUILD_ARGS
(extra space-separated --build-arg values, e.g. TORCH_INDEX_URL=...).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parent.parent
LOCAL_BASE = os.environ.get("LOCAL_BASE", "localhost/compress-debian-base:bookworm")
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
HOST_PIP_DIR = "/run/host-pip"
PIP_CONF_IN_BUILD = "/etc/pip.conf"
# Rootful podman inside an unprivileged sandbox: runc, host network, limits it may set.
PODMAN_FLAGS = ["--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]

IMAGES = {
    "runner": ("docker/Dockerfile", "localhost/compress-runner:dev"),
    "serve": ("docker/Dockerfile.serve", "localhost/compress-serve:dev"),
    "tracking": ("docker/Dockerfile.tracking", "localhost/compress-tracking:dev"),
    "serve-gpu": ("docker/Dockerfile.serve-gpu", "localhost/compress-serve-gpu:dev"),
}
PIP_OPTIONS = ("index-url", "extra-index-url", "find-links", "cert", "trusted-host",
               "default-timeout", "no-index")


def say(message: str) -> None:
    print(f"[images] {message}", flush=True)


def engine() -> str:
    return os.environ.get("CONTAINER_ENGINE", "podman")


def engine_cmd() -> list[str]:
    """The engine with its global flags (podman: the OCI runtime that works here)."""
    name = engine()
    if not shutil.which(name):
        sys.exit(f"[images] error: {name} is not installed "
                 "(apt-get install -y podman runc debootstrap)")
    if name == "podman":
        return [name, "--runtime", os.environ.get("OCI_RUNTIME", "runc")]
    return [name]


def image_exists(tag: str) -> bool:
    if engine() == "podman":
        return subprocess.run([*engine_cmd(), "image", "exists", tag]).returncode == 0
    return subprocess.run([*engine_cmd(), "image", "inspect", tag], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


# --- the Debian base -----------------------------------------------------------------------

def ensure_base(tag: str = LOCAL_BASE) -> None:
    """Create the debootstrap base image unless it exists (measured: 43 s, 176 MB)."""
    if image_exists(tag):
        say(f"base {tag} exists")
        return
    if engine() != "podman":
        sys.exit(f"[images] error: {tag} is missing; build it with podman, or set BASE_IMAGE to "
                 "a pullable image (python:3.11-slim-bookworm)")
    if not shutil.which("debootstrap") or os.geteuid() != 0:
        sys.exit("[images] error: creating the base needs root and debootstrap "
                 "(apt-get install -y podman runc debootstrap)")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="compress-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        say(f"debootstrap bookworm (minbase + python3, python3-venv) into {rootfs}")
        subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv",
                        "bookworm", str(rootfs), DEBIAN_MIRROR], check=True,
                       stdout=subprocess.DEVNULL)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([*engine_cmd(), "import", "--change", "ENV LANG=C.UTF-8",
                        "--change", 'CMD ["/bin/bash"]', "-", tag], stdin=tar.stdout,
                       check=True, stdout=subprocess.DEVNULL)
        tar.stdout.close()
        if tar.wait() != 0:
            sys.exit("[images] error: tar of the debootstrap tree failed")
    say(f"base {tag} created in {time.monotonic() - start:.0f} s")


# --- the host's pip sources, for the build ---------------------------------------------------

def host_pip_options(python: str = sys.executable) -> dict[str, str]:
    """The pip options in effect on this host: config files, then PIP_* variables."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True,
                         text=True).stdout
    files: dict[str, str] = {}
    for line in out.splitlines():
        match = re.match(r"^(?P<section>[^.]*)\.(?P<key>[\w-]+)='(?P<value>.*)'$", line.strip())
        if match and match["section"] != ":env:" and match["key"] in PIP_OPTIONS:
            # later files (user) override earlier ones (global), as in pip
            files[match["key"]] = match["value"]
    for key in PIP_OPTIONS:
        value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if value:
            files[key] = value
    return files


def _local_path(location: str) -> Path | None:
    """The host folder behind a file:// URL or a plain path, else None (a remote URL)."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if not parsed.scheme and location.startswith("/"):
        return Path(location)
    return None


def build_pip_setup(options: dict[str, str], workdir: Path) -> tuple[list[str], Path]:
    """(volume flags, pip.conf) reproducing the host's pip sources inside a build.

    Local folders and the CA bundle are mounted under HOST_PIP_DIR and the pip.conf points
    there, so the empty mount points podman leaves in the image are /etc/pip.conf (0 bytes)
    and HOST_PIP_DIR (empty folders) only.
    """
    mounts: dict[Path, str] = {}

    def in_build(location: str) -> str:
        path = _local_path(location)
        if path is None or not path.exists():
            return location
        # A PEP 503 index links ../../files/...: mount the folder above simple/.
        top = path.parent if path.name == "simple" else path
        mounts[top] = f"{HOST_PIP_DIR}{top}"
        inside = f"{HOST_PIP_DIR}{path}"
        return f"file://{inside}" if location.startswith("file:") else inside

    conf = ["[global]"]
    for key in ("index-url", "extra-index-url", "find-links"):
        if key in options:
            conf.append(f"{key} = " + " ".join(in_build(loc) for loc in options[key].split()))
    for key in ("trusted-host", "default-timeout", "no-index"):
        if key in options:
            conf.append(f"{key} = {options[key]}")
    flags: list[str] = []
    ca = (options.get("cert") or os.environ.get("SSL_CERT_FILE")
          or "/etc/ssl/certs/ca-certificates.crt")
    if Path(ca).is_file():
        flags += ["-v", f"{ca}:{HOST_PIP_DIR}/ca.crt:ro"]
        conf.append(f"cert = {HOST_PIP_DIR}/ca.crt")
    for host_dir, inside in sorted(mounts.items()):
        flags += ["-v", f"{host_dir}:{inside}:ro"]
    pip_conf = workdir / "pip.conf"
    pip_conf.write_text("\n".join(conf) + "\n")
    pip_conf.chmod(0o644)
    flags += ["-v", f"{pip_conf}:{PIP_CONF_IN_BUILD}:ro"]
    return flags, pip_conf


def build_command(name: str, workdir: Path, extra_args: list[str] = ()) -> list[str]:
    dockerfile, tag = IMAGES[name]
    command = [*engine_cmd(), "build", "-f", str(ROOT / dockerfile), "-t", tag]
    base = os.environ.get("BASE_IMAGE") or (LOCAL_BASE if engine() == "podman" else None)
    if base and name != "serve-gpu":
        command += ["--build-arg", f"BASE_IMAGE={base}"]
    for arg in [*shlex.split(os.environ.get("BUILD_ARGS", "")), *extra_args]:
        command += ["--build-arg", arg]
    if engine() == "podman":
        flags, _ = build_pip_setup(host_pip_options(), workdir)
        command += ["--format", "docker", *PODMAN_FLAGS, *flags]  # docker format keeps HEALTHCHECK
    return [*command, str(ROOT)]


def build(names: list[str], extra_args: list[str] = ()) -> dict[str, float]:
    """Build the named images; seconds per image."""
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="compress-build-") as tmp:
        for name in names:
            command = build_command(name, Path(tmp), extra_args)
            say(f"building {name}: {shlex.join(command)}")
            start = time.monotonic()
            if subprocess.run(command).returncode != 0:
                sys.exit(f"[images] error: building {name} failed (command above)")
            seconds[name] = time.monotonic() - start
            say(f"built {IMAGES[name][1]} in {seconds[name]:.0f} s")
    return seconds


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("base", "build"):
        print(__doc__)
        return 2
    names = argv[1:]
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        sys.exit(f"[images] error: unknown image {unknown}; known: {', '.join(IMAGES)}")
    if argv[0] == "base":
        ensure_base()
    else:
        if engine() == "podman" and not os.environ.get("BASE_IMAGE") and names != ["serve-gpu"]:
            ensure_base()
        build(names)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
