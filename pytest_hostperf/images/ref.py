"""What the image builders hand out and how their images are labelled."""

from __future__ import annotations

import dataclasses
from typing import Final

from pytest_hostperf.environments import labels
from pytest_hostperf.environments.base import failure_text

BASE_TAG: Final = "hostperf-base:bookworm"
PROJECT_REPOSITORY: Final = "hostperf-project"
SUITE: Final = "bookworm"
BASE_PACKAGES: Final = ("python3", "ca-certificates")
#: The base of sessions that count instructions (--hostperf-measure=time,instructions):
#: Debian's own valgrind on top (+~110 MB), so users who never count never pay for it.
COUNTING_BASE_TAG: Final = "hostperf-base:bookworm-valgrind"
COUNTING_PACKAGES: Final = ("valgrind",)


def base_packages(tag: str) -> tuple[str, ...]:
    """The Debian packages the base image ``tag`` is made of."""
    return (*BASE_PACKAGES, *COUNTING_PACKAGES) if tag == COUNTING_BASE_TAG else BASE_PACKAGES
DEFAULT_MIRROR: Final = "http://deb.debian.org/debian"
#: The project image installs its packages in a venv so Debian's system python stays
#: untouched (no --break-system-packages) and the agent's interpreter path is fixed.
VENV_PYTHON: Final = "/opt/hostperf/venv/bin/python"

LABEL_KIND: Final = labels.KIND
LABEL_HASH: Final = "io.hostperf.hash"
LABEL_PYTHON: Final = "io.hostperf.python"
LABEL_PYTHON_VERSION: Final = "io.hostperf.python-version"
LABEL_REQUIREMENTS: Final = "io.hostperf.requirements"
#: Kind of the intermediate images/containers of a build, swept once the build is gone.
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
    kind: str = "project"  # "project" (built by us) or "user" (--hostperf-image)
