"""Offline image building for the docker backend.

No registry is assumed reachable, so nothing is pulled:

* the base image is a Debian root filesystem made by ``debootstrap`` from the host's
  Debian mirror and imported with the Docker SDK;
* the project image adds pytest, pytest-benchmark and the project's test requirements
  as wheels downloaded *on the host* into the build context, installed with
  ``--no-index`` in a build that has no network at all.

The project image is cached by content: its tag is a hash of the base image id, the
requirement list and the Dockerfile text, so a second call finds the tag and builds
nothing. The ``pytest_hostperf`` package itself is never baked in: the docker backend
bind-mounts it at run time so the agent always matches the controller.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Final, Iterable, Iterator, Sequence

from pytest_hostperf.environments.base import failure_text

if TYPE_CHECKING:  # the docker package is optional until the docker backend is used
    import docker

Progress = Callable[[str], None]

BASE_TAG: Final = "hostperf-base:bookworm"
PROJECT_REPOSITORY: Final = "hostperf-project"
SUITE: Final = "bookworm"
BASE_PACKAGES: Final = ("python3", "ca-certificates")
DEFAULT_MIRROR: Final = "http://deb.debian.org/debian"
#: The project image installs its packages in a venv so Debian's system python stays
#: untouched (no --break-system-packages) and the agent's interpreter path is fixed.
VENV_PYTHON: Final = "/opt/hostperf/venv/bin/python"

LABEL_KIND: Final = "io.hostperf.kind"
LABEL_HASH: Final = "io.hostperf.hash"
LABEL_PYTHON: Final = "io.hostperf.python"
LABEL_PYTHON_VERSION: Final = "io.hostperf.python-version"
LABEL_REQUIREMENTS: Final = "io.hostperf.requirements"
#: Put on intermediate build images/containers so a killed build can be swept.
LABEL_BUILD_PID: Final = "io.hostperf.build-pid"
LABEL_BUILD_HOST: Final = "io.hostperf.build-host"
KIND_BUILD_TEMP: Final = "build-temp"


class ImageBuildError(Exception):
    """An image could not be built; the message names the step, the output and a fix."""

    def __init__(self, step: str, message: str, hint: str = "", output: str = "") -> None:
        self.step = step
        self.hint = hint
        self.output = output
        super().__init__(failure_text(f"building the {step} image: {message}", hint, output))


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """An image the docker backend can run the agent in."""

    tag: str             # what to pass to containers.create
    id: str              # image id (sha256:...), part of the environment fingerprint
    python: str          # interpreter inside the image that has pytest + pytest-benchmark
    built: bool = False  # True when this call built it (False: cache hit or user image)
    kind: str = "project"  # "project" (built by us) or "user" (--hostperf-docker-image)


# --------------------------------------------------------------------------- requirements

def default_requirements() -> list[str]:
    """pytest and pytest-benchmark pinned to the versions the controller runs."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in ("pytest", "pytest-benchmark")]


def read_requirements(path: Path) -> list[str]:
    """Requirement lines of a simple requirements file (comments and blanks skipped).

    Options (``-r``, ``--index-url``...) are rejected: the wheels are fetched on the
    host with the host's pip configuration, and the build itself is offline.
    """
    result: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise ImageBuildError("project", f"{path}: option lines are not supported: {line!r}",
                                  hint="list plain requirement specifiers, one per line")
        result.append(line)
    return result


def requirements_from_project(project_dir: Path) -> list[str]:
    """``hostperf_requirements`` from the project's ini file, found the way pytest finds it.

    The first of pytest.ini, .pytest.ini, pyproject.toml ([tool.pytest.ini_options]),
    tox.ini ([pytest]) and setup.cfg ([tool:pytest]) that has a pytest section wins. An
    entry ``-r FILE`` includes a requirements file relative to the project.
    """
    for name, section in (("pytest.ini", "pytest"), (".pytest.ini", "pytest"), ("pyproject.toml", None),
                          ("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
        path = project_dir / name
        if not path.is_file():
            continue
        found = _ini_value(path, section) if section else _toml_value(path)
        if found is None:
            continue  # no pytest section here: pytest keeps looking, so do we
        return _expand_requirement_entries(project_dir, found)
    return []


def _ini_value(path: Path, section: str) -> list[str] | None:
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    if not parser.has_section(section):
        return [] if path.name in ("pytest.ini", ".pytest.ini") else None
    return parser.get(section, "hostperf_requirements", fallback="").splitlines()


def _toml_value(path: Path) -> list[str] | None:
    try:
        import tomllib
    except ImportError:  # Python < 3.11: pytest itself depends on tomli there
        import tomli as tomllib  # type: ignore[no-redef]
    options = tomllib.loads(path.read_text()).get("tool", {}).get("pytest", {}).get("ini_options")
    if options is None:
        return None
    value = options.get("hostperf_requirements", [])
    return value.splitlines() if isinstance(value, str) else [str(v) for v in value]


def _expand_requirement_entries(project_dir: Path, entries: Iterable[str]) -> list[str]:
    result: list[str] = []
    for entry in (e.strip() for e in entries):
        if entry.startswith("-r"):
            result += read_requirements(project_dir / entry[2:].strip())
        elif entry and not entry.startswith("#"):
            result.append(entry)
    return result


def requirement_list(extra: Iterable[str] = ()) -> list[str]:
    """Sorted, de-duplicated requirements for the project image (defaults + ``extra``)."""
    return sorted(set(default_requirements()) | {r.strip() for r in extra if r.strip()})


# --------------------------------------------------------------------------- base image

def host_debian_mirror(sources: Iterable[Path] | None = None, suite: str = SUITE) -> str:
    """The Debian mirror the host's apt uses for ``suite`` (deb822 and one-line formats)."""
    if sources is None:
        sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        mirror = _mirror_in_deb822(text, suite) if path.suffix == ".sources" else _mirror_in_one_line(text, suite)
        if mirror:
            return mirror
    return DEFAULT_MIRROR


def _mirror_in_one_line(text: str, suite: str) -> str | None:
    for line in text.splitlines():
        fields = [f for f in re.sub(r"\[[^]]*\]", "", line).split() if f]
        if len(fields) >= 3 and fields[0] == "deb" and fields[2] == suite:
            return fields[1]
    return None


def _mirror_in_deb822(text: str, suite: str) -> str | None:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith(("#", " ")):
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0]
    return None


def build_base_image(client: "docker.DockerClient", tag: str = BASE_TAG, progress: Progress = print,
                     mirror: str | None = None) -> str:
    """Build the Debian base image with debootstrap and import it; return its id."""
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("base", "debootstrap is not installed",
                              hint="apt-get install debootstrap (or run .ci/install-docker.sh)")
    if os.geteuid() != 0:
        raise ImageBuildError("base", "debootstrap needs root to create device nodes and chown files",
                              hint="run `sudo hostperf image build` once; later runs reuse the image")
    mirror = mirror or host_debian_mirror()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hostperf-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        progress(f"hostperf: debootstrap {SUITE} from {mirror} (about a minute, done once)")
        _debootstrap(rootfs, mirror, progress)
        _trim_rootfs(rootfs)
        python_version = _rootfs_python_version(rootfs)
        progress(f"hostperf: importing the root filesystem as {tag}")
        image_id = _import_rootfs(client, rootfs, tag, {
            LABEL_KIND: "base",
            LABEL_HASH: _sha256(json.dumps([SUITE, BASE_PACKAGES, "minbase"])),
            LABEL_PYTHON_VERSION: python_version,
        })
    progress(f"hostperf: base image {tag} ready in {time.monotonic() - started:.0f} s")
    return image_id


def _debootstrap(rootfs: Path, mirror: str, progress: Progress) -> None:
    argv = ["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
            SUITE, str(rootfs), mirror]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    seen: set[str] = set()
    last = 0.0
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-40:]
        # A line per new phase ("Retrieving", "Extracting"...) and one every few seconds,
        # not one per package: enough to show it is alive.
        verb = " ".join(line.split()[:2])
        if verb not in seen or time.monotonic() - last > 5:
            seen.add(verb)
            last = time.monotonic()
            progress(f"hostperf:   {line}")
    if proc.wait() != 0:
        raise ImageBuildError("base", f"{' '.join(argv)} exited with {proc.returncode}",
                              hint="check that the host reaches its Debian mirror (apt-get update)",
                              output="\n".join(tail))


def _trim_rootfs(rootfs: Path) -> None:
    # The downloaded .debs and apt lists are useless offline and double the image size.
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*"):
        for path in rootfs.glob(pattern):
            path.unlink(missing_ok=True)


def _rootfs_python_version(rootfs: Path) -> str:
    versions = sorted(p.name[len("python"):] for p in (rootfs / "usr/lib").glob("python3.*")
                      if re.fullmatch(r"python3\.\d+", p.name))
    if not versions:
        raise ImageBuildError("base", f"no python3 in {rootfs}", hint="debootstrap --include=python3 failed")
    return max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))


def _import_rootfs(client: "docker.DockerClient", rootfs: Path, tag: str, labels: dict[str, str]) -> str:
    repository, _, name = tag.rpartition(":")
    changes = [f"LABEL {key}={json.dumps(value)}" for key, value in labels.items()]
    changes += ['ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
                'CMD ["/bin/bash"]']
    # tar streams straight into the engine: no temporary archive of ~200 MB on disk.
    proc = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        client.api.import_image_from_data(_chunks(proc.stdout), repository=repository, tag=name, changes=changes)
    finally:
        stderr = proc.communicate()[1].decode(errors="replace")
    if proc.returncode != 0:
        raise ImageBuildError("base", f"tar of {rootfs} exited with {proc.returncode}", output=stderr)
    return str(client.images.get(tag).id)


def _chunks(stream: Any, size: int = 1 << 20) -> Iterator[bytes]:
    while True:
        chunk = stream.read(size)
        if not chunk:
            return
        yield chunk


# --------------------------------------------------------------------------- project image

@dataclasses.dataclass(frozen=True)
class HostInterpreter:
    """The controller's own CPython build, copied into the image at the same path.

    Native and container then run the *same* interpreter build: a pyenv CPython without
    PGO and Debian's PGO/LTO python3 of the same version differ by ~25% on CPU-bound code
    (measured here), which would otherwise show up as "container overhead".
    """

    prefix: str          # sys.base_prefix, e.g. /root/.pyenv/versions/3.11.7
    executable: str      # interpreter inside prefix, e.g. /root/.pyenv/versions/3.11.7/bin/python3.11
    version: str         # "3.11"
    identity: str        # build identity for the cache key (version, build date, compiler)

    def stage(self, dest: Path) -> None:
        """Copy the interpreter (no site-packages, tests, static libs or headers) to ``dest``."""
        prefix = Path(self.prefix)
        stdlib = f"python{self.version}"
        skipped_dirs = {"site-packages", "test", "tests", "idlelib", "tkinter", "turtledemo", "include", "share",
                        "ensurepip", "pkgconfig"}

        def ignore(directory: str, names: list[str]) -> set[str]:
            here = Path(directory)
            dropped = {n for n in names if n in skipped_dirs or n.endswith(".a")}
            if here == prefix:
                dropped |= {n for n in names if n not in ("bin", "lib")}
            if here == prefix / "bin":
                dropped |= {n for n in names if not n.startswith("python")}
            if here == prefix / "lib":
                dropped |= {n for n in names if not (n == stdlib or n.startswith("libpython"))}
            return dropped

        shutil.copytree(prefix, dest, symlinks=True, ignore=ignore)
        (dest / "lib" / stdlib / "site-packages").mkdir(parents=True, exist_ok=True)


def host_interpreter() -> HostInterpreter | None:
    """The controller's CPython when it can run inside the Debian base image as it is.

    Only for a Linux host on the same architecture (the base is Debian bookworm; its glibc
    runs what a glibc host built). Not for the distribution's own /usr python: the base
    image already has that build. None means the image's python3 is used, and the report's
    fingerprints show that the interpreter differs.
    """
    if sys.platform != "linux" or platform.python_implementation() != "CPython":
        return None
    prefix = Path(sys.base_prefix).resolve()
    if prefix == Path("/usr") or not (prefix / "bin").is_dir():
        return None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [prefix / "bin" / f"python{version}", prefix / "bin" / "python3"]
    executable = next((c for c in candidates if c.is_file()), None)
    if executable is None:
        return None
    identity = f"{sys.version} {platform.machine()} {prefix}"
    return HostInterpreter(str(prefix), str(executable), version, identity)


def dockerfile_text(base_id: str, pip_wheel: str, interpreter: HostInterpreter | None = None) -> str:
    """The project image's Dockerfile; part of the cache key, so keep it deterministic."""
    python = interpreter.executable if interpreter else "python3"
    copy_python = [f"COPY hostpython {interpreter.prefix}"] if interpreter else []
    return "\n".join([
        f"FROM {base_id}",
        # ARG values are not in the text (hence not in the cache key); they only label
        # the intermediate images/containers of this build so a killed build is swept.
        "ARG HOSTPERF_BUILD_PID=0",
        "ARG HOSTPERF_BUILD_HOST=unknown",
        f"LABEL {LABEL_KIND}={KIND_BUILD_TEMP} {LABEL_BUILD_PID}=$HOSTPERF_BUILD_PID "
        f"{LABEL_BUILD_HOST}=$HOSTPERF_BUILD_HOST",
        *copy_python,
        "COPY wheels /tmp/hostperf-wheels",
        # --without-pip: Debian's python3 has no ensurepip; pip runs from its own wheel.
        f"RUN {python} -m venv --without-pip /opt/hostperf/venv"
        f" && {VENV_PYTHON} /tmp/hostperf-wheels/{pip_wheel}/pip install --no-index --no-cache-dir"
        " --disable-pip-version-check --find-links /tmp/hostperf-wheels"
        " -r /tmp/hostperf-wheels/requirements.txt"
        " && rm -rf /tmp/hostperf-wheels",
        "ENV PATH=/opt/hostperf/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "",
    ])


def project_cache_key(base_id: str, requirements: Sequence[str], dockerfile: str, interpreter: str = "") -> str:
    """Content hash naming the project image: same inputs, same tag, nothing rebuilt."""
    return _sha256(json.dumps({"base": base_id, "requirements": sorted(requirements), "dockerfile": dockerfile,
                               "interpreter": interpreter}, sort_keys=True))


def build_project_image(client: "docker.DockerClient", project_dir: Path, base: str = BASE_TAG,
                        requirements: Sequence[str] = (), progress: Progress = print,
                        interpreter: HostInterpreter | None = None) -> ImageRef:
    """An image with python3, pytest, pytest-benchmark and ``requirements`` (cached by content).

    ``requirements`` are the project's extra test dependencies (``hostperf_requirements``);
    pytest and pytest-benchmark are always added at the controller's versions.
    """
    import docker.errors

    try:
        base_image = client.images.get(base)
    except docker.errors.ImageNotFound:
        raise ImageBuildError("project", f"base image {base!r} does not exist",
                              hint="run `hostperf image build` (or ensure_image) to build it first") from None
    reqs = requirement_list(requirements)
    pip_wheel = _pip_wheel_name()
    dockerfile = dockerfile_text(str(base_image.id), pip_wheel, interpreter)
    digest = project_cache_key(str(base_image.id), reqs, dockerfile, interpreter.identity if interpreter else "")
    tag = f"{PROJECT_REPOSITORY}:{digest[:16]}"
    try:
        cached = client.images.get(tag)
        return ImageRef(tag=tag, id=str(cached.id), python=VENV_PYTHON, built=False)
    except docker.errors.ImageNotFound:
        pass
    python_version = interpreter.version if interpreter else (
        (base_image.labels or {}).get(LABEL_PYTHON_VERSION) or _probe_python_version(client, base))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hostperf-build-") as tmp:
        context = Path(tmp)
        progress(f"hostperf: downloading wheels for python {python_version}: {', '.join(reqs)}")
        _download_wheels(context / "wheels", [*reqs, _pip_requirement()], python_version)
        (context / "wheels" / "requirements.txt").write_text("\n".join(reqs) + "\n")
        (context / "Dockerfile").write_text(dockerfile)
        if interpreter:
            progress(f"hostperf: copying the host's interpreter {interpreter.prefix} into the image")
            interpreter.stage(context / "hostpython")
        progress(f"hostperf: building {tag} (offline, network none)")
        image_id = _docker_build(client, context, tag, {
            LABEL_KIND: "project",
            LABEL_HASH: digest,
            LABEL_PYTHON: VENV_PYTHON,
            LABEL_PYTHON_VERSION: python_version,
            LABEL_REQUIREMENTS: json.dumps(reqs),
            # Override the build-temp labels the final image inherits from its layers.
            LABEL_BUILD_PID: "",
            LABEL_BUILD_HOST: "",
        }, progress)
    progress(f"hostperf: project image {tag} ready in {time.monotonic() - started:.0f} s")
    return ImageRef(tag=tag, id=image_id, python=VENV_PYTHON, built=True)


def _pip_wheel_name() -> str:
    return f"pip-{importlib.metadata.version('pip')}-py3-none-any.whl"


def _pip_requirement() -> str:
    return f"pip=={importlib.metadata.version('pip')}"


def _probe_python_version(client: "docker.DockerClient", image: str) -> str:
    out = client.containers.run(image, ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                remove=True, network_mode="none",
                                labels={LABEL_KIND: KIND_BUILD_TEMP, LABEL_BUILD_PID: str(os.getpid()),
                                        LABEL_BUILD_HOST: socket.gethostname()})
    return out.decode().strip()


def _download_wheels(dest: Path, requirements: Sequence[str], python_version: str) -> None:
    """Wheels for the image's interpreter, fetched by the host's pip (the build is offline)."""
    dest.mkdir(parents=True)
    machine = platform.machine()
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
            "--only-binary=:all:", "--dest", str(dest),
            "--python-version", python_version, "--implementation", "cp",
            # glibc of bookworm is 2.36; pip expands each manylinux tag to the older ones.
            "--platform", f"manylinux_2_36_{machine}", "--platform", f"manylinux2014_{machine}",
            "--platform", "linux_" + machine, *requirements]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageBuildError("project", f"pip download exited with {result.returncode}",
                              hint="every requirement needs a wheel for linux/"
                                   f"{machine} python {python_version}, and the host must reach "
                                   "the package index (pip config applies)",
                              output=result.stderr or result.stdout)


def _docker_build(client: "docker.DockerClient", context: Path, tag: str, labels: dict[str, str],
                  progress: Progress) -> str:
    import docker.errors

    tail: list[str] = []
    image_id = ""
    try:
        stream = client.api.build(path=str(context), tag=tag, labels=labels, network_mode="none",
                                  rm=True, forcerm=True, decode=True,
                                  buildargs={"HOSTPERF_BUILD_PID": str(os.getpid()),
                                             "HOSTPERF_BUILD_HOST": socket.gethostname()})
        for chunk in stream:
            if "error" in chunk:
                raise ImageBuildError("project", str(chunk["error"]).strip(),
                                      hint="see the build output above", output="\n".join(tail))
            text = str(chunk.get("stream", "")).rstrip()
            if text:
                tail = (tail + text.splitlines())[-40:]
                if text.startswith("Step "):
                    progress(f"hostperf:   {text}")
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = str(chunk["aux"]["ID"])
    except docker.errors.APIError as exc:
        raise ImageBuildError("project", str(exc), output="\n".join(tail)) from exc
    return image_id or str(client.images.get(tag).id)


# --------------------------------------------------------------------------- entry point

def ensure_image(client: "docker.DockerClient", project_dir: Path, user_image: str | None = None,
                 requirements: Sequence[str] = (), progress: Progress = print,
                 python: str = "python3", base: str = BASE_TAG) -> ImageRef:
    """The image to run the agent in: the user's if given, else the cached/built project image.

    ``python`` is the interpreter to use in a user image (it must have pytest and
    pytest-benchmark); ``base`` is the base image tag, built with debootstrap if missing.
    """
    import docker.errors

    if user_image:
        try:
            image = client.images.get(user_image)
        except docker.errors.ImageNotFound:
            raise ImageBuildError("user", f"image {user_image!r} is not present on the engine",
                                  hint="build or load it first (no registry is pulled from)") from None
        return ImageRef(tag=user_image, id=str(image.id), python=python, kind="user")
    try:
        client.images.get(base)
    except docker.errors.ImageNotFound:
        progress(f"hostperf: base image {base} is missing; building it")
        build_base_image(client, base, progress)
    return build_project_image(client, project_dir, base, requirements, progress, host_interpreter())


def sweep_build_leftovers(client: "docker.DockerClient", alive: Callable[[int], bool]) -> list[str]:
    """Remove intermediate images/containers of builds whose process is gone."""
    removed: list[str] = []
    host = socket.gethostname()
    label = f"{LABEL_KIND}={KIND_BUILD_TEMP}"
    for container in client.containers.list(all=True, filters={"label": label}):
        if _is_dead_build(container.labels, host, alive):
            _quietly(functools.partial(container.remove, force=True))
            removed.append(f"container {container.name}")
    for image in client.images.list(all=True, filters={"label": label, "dangling": True}):
        if _is_dead_build(image.labels or {}, host, alive):
            _quietly(functools.partial(client.images.remove, image.id, force=True, noprune=False))
            removed.append(f"image {image.short_id}")
    return removed


def _is_dead_build(labels: dict[str, str], host: str, alive: Callable[[int], bool]) -> bool:
    pid = labels.get(LABEL_BUILD_PID, "")
    # Only sweep what this machine built: a pid means nothing on another host.
    return labels.get(LABEL_BUILD_HOST) == host and pid.isdigit() and not alive(int(pid))


def _quietly(action: Callable[[], object]) -> None:
    try:
        action()
    except Exception:  # noqa: BLE001 - sweeping is best effort; a race with another sweep is fine
        pass


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
