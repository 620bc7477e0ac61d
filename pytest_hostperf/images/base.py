"""The base system of every hostperf image: Debian from the host's own mirror, by debootstrap.

No registry is assumed reachable, so nothing is pulled: :func:`debootstrap_rootfs` makes
a minimal Debian root filesystem with python3 (the one recipe for the Docker base image
and for the Docker-less VM root filesystem), and :func:`build_base_image` imports it into
the engine with the Docker SDK.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from pytest_hostperf.environments.labels import owned_temp_dir
from pytest_hostperf.images.ref import (
    BASE_PACKAGES,
    BASE_TAG,
    DEFAULT_MIRROR,
    LABEL_HASH,
    LABEL_KIND,
    LABEL_PYTHON_VERSION,
    SUITE,
    ImageBuildError,
    base_packages,
)
from pytest_hostperf.progress import SILENT, Reporter

if TYPE_CHECKING:  # the docker package is optional until the docker backend is used
    import docker

__all__ = ["ImageBuildError", "build_base_image", "debootstrap_rootfs", "host_debian_mirror",
           "rootfs_python_version"]


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


def debootstrap_rootfs(dest: Path, mirror: str, reporter: Reporter = SILENT,
                       packages: tuple[str, ...] = BASE_PACKAGES) -> None:
    """A minimal Debian ``SUITE`` with ``packages`` in ``dest``, without apt's caches."""
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("base", "debootstrap is not installed",
                              hint="apt-get install debootstrap (or run .ci/install-docker.sh)")
    if os.geteuid() != 0:
        raise ImageBuildError("base", "debootstrap needs root to create device nodes and chown files",
                              hint="run `sudo hostperf image build` once; later runs reuse the image")
    reporter.step(f"debootstrap {SUITE} from {mirror} (about a minute, done once)")
    argv = ["debootstrap", "--variant=minbase", "--include=" + ",".join(packages), SUITE, str(dest), mirror]
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
            reporter.step(f"  {line}")
    proc.stdout.close()  # read to its end is not closed: a ResourceWarning when collected
    if proc.wait() != 0:
        raise ImageBuildError("base", f"{' '.join(argv)} exited with {proc.returncode}",
                              hint="check that the host reaches its Debian mirror (apt-get update)",
                              output="\n".join(tail))
    # The downloaded .debs and apt lists are useless offline and double the image size.
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*"):
        for path in dest.glob(pattern):
            path.unlink(missing_ok=True)


def rootfs_python_version(rootfs: Path) -> str:
    """``3.11`` for a root filesystem with /usr/lib/python3.11 (the newest when several)."""
    versions = sorted(p.name[len("python"):] for p in (rootfs / "usr/lib").glob("python3.*")
                      if re.fullmatch(r"python3\.\d+", p.name))
    if not versions:
        raise ImageBuildError("base", f"no python3 in {rootfs}", hint="debootstrap --include=python3 failed")
    return max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))


def build_base_image(client: docker.DockerClient, tag: str = BASE_TAG, reporter: Reporter = SILENT,
                     mirror: str | None = None) -> str:
    """Build the Debian base image with debootstrap and import it; return its id.

    Its packages are :func:`~pytest_hostperf.images.ref.base_packages` of ``tag``.
    """
    mirror = mirror or host_debian_mirror()
    started = time.monotonic()
    packages = base_packages(tag)
    with owned_temp_dir("rootfs") as tmp:
        rootfs = tmp / "rootfs"
        debootstrap_rootfs(rootfs, mirror, reporter, packages)
        python_version = rootfs_python_version(rootfs)
        reporter.step(f"importing the root filesystem as {tag}")
        image_id = _import_rootfs(client, rootfs, tag, {
            LABEL_KIND: "base",
            LABEL_HASH: _sha256(json.dumps([SUITE, packages, "minbase"])),
            LABEL_PYTHON_VERSION: python_version,
        })
    reporter.step(f"base image {tag} ready in {time.monotonic() - started:.0f} s")
    return image_id


def _import_rootfs(client: docker.DockerClient, rootfs: Path, tag: str, labels: dict[str, str]) -> str:
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


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()
