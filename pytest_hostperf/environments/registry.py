"""Turns an environment name into its backend; backends are imported only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_hostperf.environments.base import Environment, EnvironmentContext, EnvironmentFailure
from pytest_hostperf.settings import Settings

if TYPE_CHECKING:
    from pytest_hostperf.images.requirements import ImageDependencies


def create_backend(name: str, context: EnvironmentContext) -> Environment:
    """The backend for ``name`` (``native``, ``docker``, ``qemu``, ``docker@qemu`` or ``ssh:HOST``).

    The session's work dir (``context.work_dir``) is already claimed by the controller
    (:mod:`pytest_hostperf.run.workdir`), which also swept the dirs of sessions that are gone.
    """
    kind, _, target = name.partition(":")
    settings = context.settings
    # Files the agents never need: the baselines (and the session's own work dir).
    exclude = (settings.baselines_dir,) if settings.baselines_dir else ()
    if kind == "native":
        from pytest_hostperf.environments.native import NativeEnvironment

        return NativeEnvironment(context.work_dir, keep_aslr=settings.keep_aslr)
    if kind in ("docker", "docker@qemu"):
        try:
            from pytest_hostperf.environments.docker import DockerEnvironment
            from pytest_hostperf.environments.docker_qemu import DockerQemuEnvironment
        except ImportError as exc:
            raise EnvironmentFailure(name, f"cannot load the {kind} backend ({exc})",
                                     hint="pip install docker") from exc
        backend = DockerQemuEnvironment if kind == "docker@qemu" else DockerEnvironment
        return backend(
            session_id=context.session_id, project_dir=settings.project_dir, work_dir=context.work_dir,
            image=settings.image, network=settings.network, cpus=settings.docker_cpus,
            dependencies=_image_dependencies(settings), reporter=context.reporter.child(name),
            pids=settings.docker_pids, memory=settings.docker_memory, tmpfs_size=settings.docker_tmpfs_size,
            counting=settings.counts_instructions)
    if kind == "qemu":
        from pytest_hostperf.environments.qemu import QemuEnvironment

        return QemuEnvironment(
            session_id=context.session_id, project_dir=settings.project_dir, work_dir=context.work_dir,
            image=settings.image, vm_image=settings.vm_image, network=settings.network,
            dependencies=_image_dependencies(settings), reporter=context.reporter.child("qemu"), exclude=exclude)
    if kind == "ssh":
        from pytest_hostperf.environments.ssh import SshEnvironment

        return SshEnvironment(host=target, session_id=context.session_id, project_dir=settings.project_dir,
                              work_dir=context.work_dir, reporter=context.reporter.child(name),
                              ssh_config=settings.ssh_config, python=settings.ssh_python, exclude=exclude)
    raise EnvironmentFailure(name, "unknown environment", hint="use native, docker, qemu, docker@qemu or ssh:HOST")


def _image_dependencies(settings: Settings) -> ImageDependencies:
    """The image gets what the controller's environment has (planned when an image is needed)."""
    from pytest_hostperf.images.requirements import ImageDependencies

    return ImageDependencies(settings.project_dir, settings.requirements, settings.requirements_exclude)
