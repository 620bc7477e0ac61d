"""Turns an environment name into its backend; backends are imported only when used."""

from __future__ import annotations

from pytest_hostperf.environments.base import Environment, EnvironmentContext, EnvironmentFailure


def create_backend(name: str, context: EnvironmentContext) -> Environment:
    kind, _, target = name.partition(":")
    settings = context.settings
    progress = context.reporter
    if kind == "native":
        from pytest_hostperf.environments.native import NativeEnvironment

        return NativeEnvironment(context.work_dir)
    if kind == "docker":
        try:
            from pytest_hostperf.environments.docker import DockerEnvironment
        except ImportError as exc:
            raise EnvironmentFailure(name, f"cannot load the docker backend ({exc})",
                                     hint="pip install docker") from exc
        return DockerEnvironment(
            session_id=context.session_id, project_dir=settings.project_dir, work_dir=context.work_dir,
            image=settings.image, network=settings.network, cpus=settings.docker_cpus,
            requirements=settings.requirements, progress=progress)
    if kind == "qemu":
        from pytest_hostperf.environments.qemu import QemuEnvironment

        return QemuEnvironment(
            session_id=context.session_id, project_dir=settings.project_dir, work_dir=context.work_dir,
            image=settings.image, vm_image=settings.vm_image, network=settings.network,
            requirements=settings.requirements, progress=progress)
    if kind == "ssh":
        from pytest_hostperf.environments.ssh import SshEnvironment

        return SshEnvironment(host=target, session_id=context.session_id, project_dir=settings.project_dir,
                              work_dir=context.work_dir, progress=progress,
                              ssh_config=settings.ssh_config, python=settings.ssh_python,
                              exclude=(settings.baselines_dir,) if settings.baselines_dir else ())
    raise EnvironmentFailure(name, "unknown environment", hint="use native, docker, qemu or ssh:HOST")
