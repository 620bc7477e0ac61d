"""pytest glue: the options and ini keys, and switching the controller on.

Inert unless ``--hostperf`` is given (and always inert inside an agent); the hooks that
do the work are in :mod:`pytest_hostperf.controller`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable

import pytest

import pytest_hostperf.fixtures as fixtures_module
from pytest_hostperf import options as opt
from pytest_hostperf.environments import limits
from pytest_hostperf.settings import Settings

# Everything heavy (scipy, the session, the backends) lives in .controller and is
# imported only with --hostperf: a plain pytest run pays nothing for this plugin.

#: (option, ini key, type, default, help) for every value option; ini keys mirror options.
_VALUE_OPTIONS: tuple[tuple[str, str, Callable[[str], Any], str | None, str], ...] = (
    ("--hostperf-envs", "hostperf_envs", opt.parse_envs, "native",
     "environments to run each benchmark in, comma-separated: native, docker, qemu, ssh:HOST "
     "(default: native). Example: --hostperf-envs=native,docker,qemu"),
    ("--hostperf-baselines", "hostperf_baselines", str, None,
     "directory of baseline files (default: baselines/ under the rootdir)"),
    ("--hostperf-tolerance", "hostperf_tolerance", opt.parse_fraction, "5%",
     "smallest slowdown that counts as a regression, e.g. 5%% or 0.05 (default 5%%)"),
    ("--hostperf-alpha", "hostperf_alpha", opt.parse_alpha, "0.01",
     "family-wise false-alarm rate over all comparisons of a session (default 0.01)"),
    ("--hostperf-require", "hostperf_require", lambda s: opt.parse_envs(s) if s else (), "",
     "environments that must work: if one cannot start, its tests error instead of being skipped. "
     "Example: --hostperf-require=docker,qemu"),
    ("--hostperf-max-overhead", "hostperf_max_overhead", opt.parse_budgets, "",
     "budgets for the ratio to native, e.g. docker=1.10,docker-bind=1.5,qemu:tcg=20; "
     "an item whose ratio's lower confidence bound exceeds its budget fails with verdict 'overhead'"),
    ("--hostperf-json", "hostperf_json", str, None, "write the JSON report (one record per test x env x mount) to PATH"),
    ("--hostperf-markdown", "hostperf_markdown", str, None, "write a Markdown report to PATH"),
    ("--hostperf-timeout", "hostperf_timeout", opt.parse_seconds, "300",
     "seconds one test may take in an environment before its agent is killed and restarted (default 300)"),
    ("--hostperf-history", "hostperf_history", lambda s: opt.parse_positive_int(s, "history"), "10",
     "saved sessions kept per test in a baseline (default 10)"),
    ("--hostperf-session-noise", "hostperf_session_noise", lambda s: opt.parse_fraction(s, "session noise"), "3%",
     "between-session noise assumed while a baseline has a single saved session (default 3%%)"),
    ("--hostperf-blocks", "hostperf_blocks", lambda s: opt.parse_positive_int(s, "blocks"), "3",
     "interleaved blocks per test when several environments run it (default 3)"),
    ("--hostperf-confirm", "hostperf_confirm", lambda s: opt.parse_positive_int(s, "confirm", minimum=0), "2",
     "re-measure a test that reads as a regression up to N times, after a pause, and judge the fastest "
     "attempt: a machine's transient slowdown passes, a real regression stays (default 2; 0 = off)"),
    ("--hostperf-image", "hostperf_image", str, None,
     "Docker image to run the agent in, instead of the one hostperf builds (needs python3, pytest, pytest-benchmark)"),
    ("--hostperf-vm-image", "hostperf_vm_image", str, None, "bootable VM disk to use instead of the one hostperf builds"),
    ("--hostperf-ssh-python", "hostperf_ssh_python", str, None,
     "Python interpreter on ssh:HOST targets (default: python3 on the target's PATH)"),
    ("--hostperf-docker-cpus", "hostperf_docker_cpus", lambda s: opt.parse_cpus(s), None,
     "CPU limit for the container, like docker run --cpus (e.g. 0.5); default: no limit"),
    ("--hostperf-ssh-config", "hostperf_ssh_config", str, None,
     "OpenSSH config file for ssh:HOST environments (default: your ~/.ssh/config)"),
    ("--hostperf-docker-pids", "hostperf_docker_pids", limits.parse_pids, str(limits.DEFAULT_PIDS),
     "most processes and threads a container may have, against fork loops (default 512; 0: no limit)"),
    ("--hostperf-docker-memory", "hostperf_docker_memory", limits.parse_amount, limits.DEFAULT_MEMORY,
     "memory limit of the container, e.g. 2g, 512m, or a percentage of the engine's memory "
     "(default 50%%; 0: no limit)"),
    ("--hostperf-docker-tmpfs-size", "hostperf_docker_tmpfs_size", limits.parse_amount, limits.DEFAULT_TMPFS_SIZE,
     "size of the container's tmpfs mount: a test that fills it gets ENOSPC, not the host's memory "
     "(default 25%% of the engine's memory; 0: no limit)"),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hostperf", "environment-aware performance regression testing (pytest-hostperf)")
    group.addoption("--hostperf", action="store_true", default=False,
                    help="run every benchmark test in each environment and gate on regressions and overhead")
    group.addoption("--hostperf-save", action="store_true", default=False,
                    help="append this session's measurements to the baselines (per environment fingerprint)")
    group.addoption("--hostperf-network", action="store_true", default=False,
                    help="give containers and VMs a network (off by default)")
    parser.addini("hostperf_requirements", type="linelist", default=[],
                  help="extra pip requirements installed into the docker/qemu image (one per line)")
    for name, ini, kind, default, text in _VALUE_OPTIONS:
        group.addoption(name, action="store", default=None, type=_argtype(kind), help=text)
        parser.addini(ini, help=text.replace("%%", "%"), default=default)


def _argtype(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return parse(text)  # ArgumentTypeError propagates: argparse prints it as a usage error

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(fixtures_module):
        config.pluginmanager.register(fixtures_module, "hostperf-fixtures")
    if not config.getoption("hostperf") or os.environ.get("HOSTPERF_AGENT"):
        return
    from pytest_hostperf.controller import HostperfPlugin

    config.pluginmanager.register(HostperfPlugin(config, _settings(config)), "hostperf-controller")


def _value(config: pytest.Config, name: str, ini: str, parse: Callable[[str], Any]) -> Any:
    given = config.getoption(name)
    if given is not None:
        return given
    raw = config.getini(ini)
    if raw in (None, ""):
        return parse("") if ini in ("hostperf_require", "hostperf_max_overhead") else None
    try:
        return parse(str(raw))
    except argparse.ArgumentTypeError as exc:
        raise pytest.UsageError(f"ini option {ini} = {raw!r}: {exc}") from None


def _settings(config: pytest.Config) -> Settings:
    values = {ini: _value(config, name, ini, parse) for name, ini, parse, _, _ in _VALUE_OPTIONS}
    root = config.rootpath
    baselines = Path(values["hostperf_baselines"]) if values["hostperf_baselines"] else root / "baselines"
    if not baselines.is_absolute():
        baselines = (root / baselines).resolve()
    require = tuple(values["hostperf_require"] or ())
    envs = tuple(values["hostperf_envs"])
    missing = [r for r in require if r not in envs]
    if missing:
        raise pytest.UsageError(
            f"--hostperf-require names {', '.join(missing)} but --hostperf-envs is {','.join(envs)}; "
            f"add them: --hostperf-envs={','.join(envs + tuple(missing))}")
    if config.getoption("benchmark_disable", False) or config.getoption("benchmark_skip", False):
        raise pytest.UsageError("--hostperf measures benchmarks; drop --benchmark-disable/--benchmark-skip")

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    return Settings(
        project_dir=root, envs=envs, baselines_dir=baselines, save=bool(config.getoption("hostperf_save")),
        tolerance=values["hostperf_tolerance"], alpha=values["hostperf_alpha"], require=require,
        max_overhead=values["hostperf_max_overhead"] or {}, timeout_s=values["hostperf_timeout"],
        history=values["hostperf_history"], session_noise=values["hostperf_session_noise"],
        blocks=values["hostperf_blocks"], confirm=values["hostperf_confirm"], image=values["hostperf_image"], vm_image=values["hostperf_vm_image"],
        network=bool(config.getoption("hostperf_network")),
        requirements=tuple(config.getini("hostperf_requirements")),
        json_path=path(values["hostperf_json"]), markdown_path=path(values["hostperf_markdown"]),
        ssh_config=path(values["hostperf_ssh_config"]), docker_cpus=values["hostperf_docker_cpus"],
        ssh_python=values["hostperf_ssh_python"],
        docker_pids=values["hostperf_docker_pids"], docker_memory=values["hostperf_docker_memory"],
        docker_tmpfs_size=values["hostperf_docker_tmpfs_size"],
    )
