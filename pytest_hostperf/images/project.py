"""The project image: the base system plus pytest, pytest-benchmark and the project's needs.

Cached by content: its tag is a hash of the base image id, the requirement list, the
Dockerfile text and the host interpreter copied in, so a second call finds the tag and
builds nothing. The build runs with no network (wheels come from the host, see
:mod:`.requirements`). The ``pytest_hostperf`` package itself is never baked in: the
docker backend bind-mounts it at run time so the agent always matches the controller.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Final, Sequence

from pytest_hostperf.environments import labels
from pytest_hostperf.environments.labels import owned_temp_dir
from pytest_hostperf.images.base import build_base_image
from pytest_hostperf.images.ref import (
    BASE_TAG,
    KIND_BUILD_TEMP,
    LABEL_HASH,
    LABEL_KIND,
    LABEL_PYTHON,
    LABEL_PYTHON_VERSION,
    LABEL_REQUIREMENTS,
    PROJECT_REPOSITORY,
    VENV_PYTHON,
    ImageBuildError,
    ImageRef,
)
from pytest_hostperf.images.requirements import (
    ImageDependencies,
    download_wheels,
    pip_requirement,
    pip_wheel_name,
    requirement_list,
)
from pytest_hostperf.progress import SILENT, Reporter

if TYPE_CHECKING:  # the docker package is optional until the docker backend is used
    import docker

#: Build arguments that carry the building process's owner labels into the labels of
#: the build's intermediate images and containers (a killed build is swept by them).
_OWNER_ARGS: Final = {labels.PID: "HOSTPERF_PID", labels.HOST: "HOSTPERF_HOST", labels.BOOT_ID: "HOSTPERF_BOOT_ID",
                      labels.PID_NS: "HOSTPERF_PID_NS", labels.STARTED: "HOSTPERF_PID_STARTED"}


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
    owner = " ".join(f'{key}="${arg}"' for key, arg in _OWNER_ARGS.items())
    return "\n".join([
        f"FROM {base_id}",
        # ARG values are not in the text (hence not in the cache key); they only label
        # the intermediate images/containers of this build so a killed build is swept.
        *(f"ARG {arg}=" for arg in _OWNER_ARGS.values()),
        f"LABEL {LABEL_KIND}={KIND_BUILD_TEMP} {owner}",
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


@dataclasses.dataclass(frozen=True)
class ProjectImagePlan:
    """What the project image for a base and requirements is, before anything is built."""

    base_id: str
    requirements: list[str]
    dockerfile: str
    digest: str
    interpreter: HostInterpreter | None

    @property
    def tag(self) -> str:
        return f"{PROJECT_REPOSITORY}:{self.digest[:16]}"


def plan_project_image(client: docker.DockerClient, base: str = BASE_TAG, requirements: Sequence[str] = (),
                       interpreter: HostInterpreter | None = None) -> ProjectImagePlan:
    """The tag and inputs of the project image (``hostperf image prune`` keeps this one)."""
    import docker.errors

    try:
        base_image = client.images.get(base)
    except docker.errors.ImageNotFound:
        raise ImageBuildError("project", f"base image {base!r} does not exist",
                              hint="run `hostperf image build` (or ensure_image) to build it first") from None
    reqs = requirement_list(requirements)
    dockerfile = dockerfile_text(str(base_image.id), pip_wheel_name(), interpreter)
    digest = project_cache_key(str(base_image.id), reqs, dockerfile, interpreter.identity if interpreter else "")
    return ProjectImagePlan(str(base_image.id), reqs, dockerfile, digest, interpreter)


def build_project_image(client: docker.DockerClient, project_dir: Path, base: str = BASE_TAG,
                        requirements: Sequence[str] = (), reporter: Reporter = SILENT,
                        interpreter: HostInterpreter | None = None) -> ImageRef:
    """An image with python3, pytest, pytest-benchmark and ``requirements`` (cached by content).

    ``requirements`` are the project's extra test dependencies (``hostperf_requirements``);
    pytest and pytest-benchmark are always added at the controller's versions.
    """
    import docker.errors

    plan = plan_project_image(client, base, requirements, interpreter)
    try:
        cached = client.images.get(plan.tag)
        return ImageRef(tag=plan.tag, id=str(cached.id), python=VENV_PYTHON, built=False)
    except docker.errors.ImageNotFound:
        pass
    base_labels = client.images.get(base).labels or {}
    python_version = interpreter.version if interpreter else (
        base_labels.get(LABEL_PYTHON_VERSION) or _probe_python_version(client, base))
    started = time.monotonic()
    with owned_temp_dir("build") as context:
        reporter.step(f"downloading wheels for python {python_version}: {', '.join(plan.requirements)}")
        download_wheels(context / "wheels", [*plan.requirements, pip_requirement()], python_version)
        (context / "wheels" / "requirements.txt").write_text("\n".join(plan.requirements) + "\n")
        (context / "Dockerfile").write_text(plan.dockerfile)
        if interpreter:
            reporter.step(f"copying the host's interpreter {interpreter.prefix} into the image")
            interpreter.stage(context / "hostpython")
        reporter.step(f"building {plan.tag} (offline, network none)")
        image_id = _docker_build(client, context, plan.tag, {
            LABEL_KIND: "project",
            LABEL_HASH: plan.digest,
            LABEL_PYTHON: VENV_PYTHON,
            LABEL_PYTHON_VERSION: python_version,
            LABEL_REQUIREMENTS: json.dumps(plan.requirements),
            # Blank the build-temp owner the final image inherits from its layers.
            **{key: "" for key in _OWNER_ARGS},
        }, reporter)
    reporter.step(f"project image {plan.tag} ready in {time.monotonic() - started:.0f} s")
    return ImageRef(tag=plan.tag, id=image_id, python=VENV_PYTHON, built=True)


def _owner_build_args() -> dict[str, str]:
    owner = labels.Owner.current().labels()
    return {arg: owner.get(key, "") for key, arg in _OWNER_ARGS.items()}


def _probe_python_version(client: docker.DockerClient, image: str) -> str:
    out = client.containers.run(image, ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                remove=True, network_mode="none",
                                labels={LABEL_KIND: KIND_BUILD_TEMP, **labels.Owner.current().labels()})
    return str(out.decode().strip())


def _docker_build(client: docker.DockerClient, context: Path, tag: str, image_labels: dict[str, str],
                  reporter: Reporter) -> str:
    import docker.errors

    tail: list[str] = []
    image_id = ""
    try:
        stream = client.api.build(path=str(context), tag=tag, labels=image_labels, network_mode="none",
                                  rm=True, forcerm=True, decode=True, buildargs=_owner_build_args())
        for chunk in stream:
            if "error" in chunk:
                raise ImageBuildError("project", str(chunk["error"]).strip(),
                                      hint="see the build output above", output="\n".join(tail))
            text = str(chunk.get("stream", "")).rstrip()
            if text:
                tail = (tail + text.splitlines())[-40:]
                if text.startswith("Step "):
                    reporter.step(f"  {text}")
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = str(chunk["aux"]["ID"])
    except docker.errors.APIError as exc:
        raise ImageBuildError("project", str(exc), output="\n".join(tail)) from exc
    finally:
        _remove_step_containers(client, image_labels[LABEL_HASH])
    return image_id or str(client.images.get(tag).id)


def _remove_step_containers(client: docker.DockerClient, digest: str) -> None:
    """Remove what the engine left of this build's own steps.

    The legacy builder runs the build's ``LABEL`` step in a container carrying the image's
    labels, and sometimes leaves that container in "created" even after a build that
    succeeded (seen after both CI runs of 2026-12-08, from a test's own one-LABEL build).
    This build's digest makes such a container ours at once, without waiting for the
    sweep's age rule.
    """
    for container in client.containers.list(all=True, filters={"label": f"{LABEL_HASH}={digest}",
                                                                "status": "created"}):
        if "#(nop)" in " ".join(container.attrs.get("Config", {}).get("Cmd") or []):
            _quietly(functools.partial(container.remove, force=True))


def ensure_image(client: docker.DockerClient, project_dir: Path, user_image: str | None = None,
                 requirements: Sequence[str] = (), reporter: Reporter = SILENT,
                 python: str = "python3", base: str = BASE_TAG,
                 dependencies: ImageDependencies | None = None) -> ImageRef:
    """The image to run the agent in: the user's if given, else the cached/built project image.

    ``python`` is the interpreter to use in a user image (it must have pytest and
    pytest-benchmark); ``base`` is the base image tag, built with debootstrap if missing.
    ``dependencies``: the controller environment's distributions go in too (planned only
    when a project image is needed; each plan is its own cached image).
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
        reporter.step(f"base image {base} is missing; building it")
        build_base_image(client, base, reporter)
    if dependencies is not None:
        requirements = [*dependencies.requirements(), *requirements]
    return build_project_image(client, project_dir, base, requirements, reporter, host_interpreter())


def sweep_build_leftovers(client: docker.DockerClient) -> list[str]:
    """Remove intermediate images/containers of builds whose process is gone."""
    removed: list[str] = []
    label = f"{LABEL_KIND}={KIND_BUILD_TEMP}"
    for container in client.containers.list(all=True, filters={"label": label}):
        if labels.gone(container.labels):
            _quietly(functools.partial(container.remove, force=True))
            removed.append(f"container {container.name}")
    # The engine's own last step (the LABELs passed to the build) runs in a container that
    # carries the image's labels but not the owner's; an interrupted build can leave it in
    # "created". Such a step lives for milliseconds: one older than STALE_STEP_S is left over.
    for container in client.containers.list(all=True, filters={"label": LABEL_KIND, "status": "created"}):
        if _is_stale_build_step(container.attrs):
            _quietly(functools.partial(container.remove, force=True))
            removed.append(f"container {container.name}")
    for image in client.images.list(all=True, filters={"label": label, "dangling": True}):
        if labels.gone(image.labels or {}):
            _quietly(functools.partial(client.images.remove, image.id, force=True, noprune=False))
            removed.append(f"image {image.short_id}")
    return removed


#: Age after which a "created" build-step container of a hostperf image is a leftover.
STALE_STEP_S: Final = 600.0


def _is_stale_build_step(attrs: dict[str, object]) -> bool:
    """A legacy builder's step container (``#(nop)`` command) created over STALE_STEP_S ago."""
    import datetime

    config = attrs.get("Config") or {}
    command = " ".join(config.get("Cmd") or []) if isinstance(config, dict) else ""
    if "#(nop)" not in command:
        return False
    created = str(attrs.get("Created", ""))
    try:
        # The engine gives nanoseconds (2026-12-01T06:01:26.123456789Z); seconds are enough.
        when = datetime.datetime.fromisoformat(created[:19]).replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return False
    return (datetime.datetime.now(datetime.timezone.utc) - when).total_seconds() > STALE_STEP_S


def _quietly(action: Callable[[], object]) -> None:
    try:
        action()
    except Exception:  # noqa: BLE001 - sweeping is best effort; a race with another sweep is fine
        pass


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = ["HostInterpreter", "ProjectImagePlan", "build_project_image", "dockerfile_text", "ensure_image",
           "host_interpreter", "plan_project_image", "project_cache_key", "sweep_build_leftovers"]
