"""Offline image building for the docker (and qemu) backends.

No registry is assumed reachable, so nothing is pulled:

* :mod:`.base`: the base image, a Debian root filesystem made by ``debootstrap`` from
  the host's Debian mirror and imported with the Docker SDK;
* :mod:`.requirements`: what the project needs (the controller environment's
  distributions at their versions, ``hostperf_requirements``) as wheels downloaded *on the host*;
* :mod:`.project`: the project image, those wheels installed with ``--no-index`` in a
  build that has no network at all, cached by content;
* :mod:`.prune`: what ``hostperf image prune`` removes and keeps.
"""

from __future__ import annotations

from pytest_hostperf.images.base import build_base_image, host_debian_mirror
from pytest_hostperf.images.project import (
    HostInterpreter,
    dockerfile_text,
    ensure_image,
    host_interpreter,
    plan_project_image,
    project_cache_key,
    sweep_build_leftovers,
)
from pytest_hostperf.images.ref import (
    BASE_TAG,
    COUNTING_BASE_TAG,
    DEFAULT_MIRROR,
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
    default_requirements,
    read_requirements,
    requirement_list,
    requirements_from_project,
)

__all__ = [
    "BASE_TAG", "COUNTING_BASE_TAG", "DEFAULT_MIRROR", "KIND_BUILD_TEMP", "LABEL_HASH", "LABEL_KIND", "LABEL_PYTHON",
    "LABEL_PYTHON_VERSION", "LABEL_REQUIREMENTS", "PROJECT_REPOSITORY", "VENV_PYTHON",
    "HostInterpreter", "ImageBuildError", "ImageDependencies", "ImageRef",
    "build_base_image", "default_requirements", "dockerfile_text", "ensure_image", "host_debian_mirror",
    "host_interpreter", "plan_project_image", "project_cache_key", "read_requirements", "requirement_list",
    "requirements_from_project", "sweep_build_leftovers",
]
