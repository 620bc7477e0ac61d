"""pytest glue: the options and ini keys, and switching the controller on.

Inert unless ``--hostperf`` is given (and always inert inside an agent); the hooks that
do the work are in :mod:`pytest_hostperf.controller`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import pytest

import pytest_hostperf.fixtures as fixtures_module
from pytest_hostperf import options as opt
from pytest_hostperf import revision
from pytest_hostperf.environments import limits
from pytest_hostperf.revision import Revision
from pytest_hostperf.settings import Settings

# Everything heavy (scipy, the session, the backends) lives in .controller and is
# imported only with --hostperf: a plain pytest run pays nothing for this plugin.

#: (option, ini key, type, default, help) for every value option; ini keys mirror options.
_VALUE_OPTIONS: tuple[tuple[str, str, Callable[[str], Any], str | None, str], ...] = (
    # Environment names and budget keys are checked against the kinds the plugins declare
    # (pytest_hostperf_environment_kinds) at configure time, when every plugin is loaded.
    ("--hostperf-envs", "hostperf_envs", str, "native",
     "environments to run each benchmark in, comma-separated: native, docker, qemu, docker@qemu (the Docker "
     "engine in a QEMU VM), ssh:HOST, or a kind a plugin adds (default: native). "
     "Example: --hostperf-envs=native,docker,qemu"),
    ("--hostperf-mounts", "hostperf_mounts", str, None,
     "mounts the tests that use hostperf_dir run on, comma-separated, in every environment that offers "
     "them (default: each environment's usual ones). Some are only used when named: qemu's share-9p and "
     "share-nfs. Example: --hostperf-mounts=host,share,share-9p,share-nfs"),
    ("--hostperf-baselines", "hostperf_baselines", str, None,
     "directory of baseline files (default: baselines/ under the rootdir)"),
    ("--hostperf-tolerance", "hostperf_tolerance", opt.parse_fraction, "5%",
     "smallest slowdown that counts as a regression, e.g. 5%% or 0.05 (default 5%%)"),
    ("--hostperf-measure", "hostperf_measure", str, "time",
     "what to measure: time (default), or time,instructions to also count instructions per call under "
     "valgrind (callgrind) natively and in docker, judged against counts of the same software; "
     "counted code runs ~50-100x slower. Example: --hostperf-measure=time,instructions"),
    ("--hostperf-instructions-tolerance", "hostperf_instructions_tolerance",
     lambda s: opt.parse_fraction(s, "instructions tolerance"), "1%",
     "smallest change of instructions per call that is a regression/improvement (default 1%%)"),
    ("--hostperf-alpha", "hostperf_alpha", opt.parse_alpha, "0.01",
     "family-wise false-alarm rate over all comparisons of a session (default 0.01)"),
    ("--hostperf-require", "hostperf_require", str, "",
     "environments that must work: if one cannot start, its tests error instead of being skipped. "
     "Example: --hostperf-require=docker,qemu"),
    ("--hostperf-max-overhead", "hostperf_max_overhead", str, "",
     "budgets for the ratio to native, e.g. docker=1.10,docker-bind=1.5,qemu:tcg=20; "
     "an item whose ratio's lower confidence bound exceeds its budget fails with verdict 'overhead'"),
    ("--hostperf-json", "hostperf_json", str, None,
     "write the JSON report (one record per test x env x mount) to PATH"),
    ("--hostperf-markdown", "hostperf_markdown", str, None, "write a Markdown report to PATH"),
    ("--hostperf-html", "hostperf_html", str, None,
     "write a self-contained HTML report with a chart per test to PATH (needs pip install "
     "'pytest-hostperf[html]'). Example: --hostperf-html=perf.html"),
    ("--hostperf-timeout", "hostperf_timeout", opt.parse_seconds, "300",
     "seconds one test may take in an environment before its agent is killed and restarted (default 300)"),
    ("--hostperf-history", "hostperf_history", lambda s: opt.parse_positive_int(s, "history"), "10",
     "saved sessions kept per test in a baseline (default 10)"),
    ("--hostperf-session-noise", "hostperf_session_noise", lambda s: opt.parse_fraction(s, "session noise"), "25%",
     "between-session noise assumed while a baseline has fewer than 3 saved sessions, unless the "
     "sessions themselves or the host's reference workload show more (default 25%%)"),
    ("--hostperf-blocks", "hostperf_blocks", lambda s: opt.parse_positive_int(s, "blocks"), "3",
     "interleaved blocks per test when several environments run it (default 3)"),
    ("--hostperf-pair-budget", "hostperf_pair_budget", lambda s: _pair_budget(s), "0.4",
     "seconds of measuring per side when a test's ratio to native comes from pairs (each environment "
     "against native, in random-order pairs of short fixed-work halves); 0 = interleaved blocks instead "
     "(default 0.4)"),
    ("--hostperf-pair-round", "hostperf_pair_round", lambda s: opt.parse_seconds(s, "pair round"), "0.002",
     "length of one half of a pair in seconds (default 0.002; a target with a CPU quota native does not "
     "have is measured on its own in sustained rounds instead)"),
    ("--hostperf-against", "hostperf_against", str, None,
     "compare the working tree with a git revision of the project in the same session: REV's tree is "
     "written to a temporary directory and every test runs there too, in random-order pairs with the "
     "working tree's, in each environment; the paired verdict gates the test. Example: "
     "--hostperf-against=origin/main (or HEAD, a tag, a commit id)"),
    ("--hostperf-confirm", "hostperf_confirm", lambda s: opt.parse_positive_int(s, "confirm", minimum=0), "2",
     "re-measure a test that reads as a regression up to N times, after a pause, and judge the fastest "
     "attempt: a machine's transient slowdown passes, a real regression stays (default 2; 0 = off)"),
    ("--hostperf-image", "hostperf_image", str, None,
     "Docker image to run the agent in, instead of the one hostperf builds (needs python3, pytest, pytest-benchmark)"),
    ("--hostperf-vm-image", "hostperf_vm_image", str, None,
     "bootable VM disk to use instead of the one hostperf builds"),
    ("--hostperf-ssh-python", "hostperf_ssh_python", str, None,
     "Python interpreter on ssh:HOST targets (default: python3 on the target's PATH)"),
    ("--hostperf-docker-cpus", "hostperf_docker_cpus", lambda s: opt.parse_cpus(s), None,
     "CPU limit for the container, like docker run --cpus (e.g. 0.5); default: no limit"),
    ("--hostperf-ssh-config", "hostperf_ssh_config", str, None,
     "OpenSSH config file for ssh:HOST environments (default: your ~/.ssh/config)"),
    ("--hostperf-accept-reason", "hostperf_accept_reason", str, None,
     "why the changes matched by --hostperf-accept are accepted; stored beside the saved session. "
     "Example: --hostperf-accept-reason='json parser switched to the safe mode (#123)'"),
    ("--hostperf-docker-pids", "hostperf_docker_pids", limits.parse_pids, str(limits.DEFAULT_PIDS),
     "most processes and threads a container may have, against fork loops (default 512; 0: no limit)"),
    ("--hostperf-docker-memory", "hostperf_docker_memory", limits.parse_amount, limits.DEFAULT_MEMORY,
     "memory limit of the container, e.g. 2g, 512m, or a percentage of the engine's memory "
     "(default 50%%; 0: no limit)"),
    ("--hostperf-docker-tmpfs-size", "hostperf_docker_tmpfs_size", limits.parse_amount, limits.DEFAULT_TMPFS_SIZE,
     "size of the container's tmpfs mount: a test that fills it gets ENOSPC, not the host's memory "
     "(default 25%% of the engine's memory; 0: no limit)"),
)


def _pair_budget(text: str) -> float:
    return 0.0 if text.strip().rstrip("s") in ("0", "0.0") else opt.parse_seconds(text, "pair budget")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hostperf", "environment-aware performance regression testing (pytest-hostperf)")
    group.addoption("--hostperf", action="store_true", default=False,
                    help="run every benchmark test in each environment and gate on regressions and overhead")
    group.addoption("--hostperf-save", action="store_true", default=False,
                    help="append this session's measurements to the baselines (per environment fingerprint)")
    group.addoption("--hostperf-network", action="store_true", default=False,
                    help="give containers and VMs a network (off by default)")
    group.addoption("--hostperf-strict", action="store_true", default=None,
                    help="an item the gate cannot cover (no baseline for its environment's fingerprint) fails "
                         "instead of passing ungated (ini hostperf_strict = true)")
    group.addoption("--hostperf-accept", action="append", default=None, metavar="NODEID_GLOB",
                    help="with --hostperf-save: accept the regressions/overheads of matching items into the "
                         "baseline instead of failing them; needs --hostperf-accept-reason. Repeatable. "
                         "Example: --hostperf-accept='tests/test_io.py::*' (ini hostperf_accept, one per line)")
    group.addoption("--hostperf-keep-aslr", action="store_true", default=None,
                    help="start native agents with address-space randomisation as usual; by default they start "
                         "without it (setarch -R, where the host allows it), because processes at random "
                         "addresses run the same loop up to ~17%% apart (ini hostperf_keep_aslr = true)")
    parser.addini("hostperf_strict", type="bool", default=False,
                  help="an item without a baseline fails (like --hostperf-strict)")
    parser.addini("hostperf_keep_aslr", type="bool", default=False,
                  help="native agents keep address-space randomisation (like --hostperf-keep-aslr)")
    parser.addini("hostperf_accept", type="linelist", default=[],
                  help="node-id globs whose failing verdicts --hostperf-save accepts (like --hostperf-accept)")
    parser.addini("hostperf_requirements", type="linelist", default=[],
                  help="pip requirements added to the docker/qemu image, one per line; a line naming an "
                       "installed distribution replaces its pin (the image gets every distribution installed "
                       "here, at its version)")
    parser.addini("hostperf_requirements_exclude", type="linelist", default=[],
                  help="installed distributions left out of the docker/qemu image, one name or glob per line "
                       "(like types-*); pytest and pytest-benchmark always stay")
    for name, ini, kind, default, text in _VALUE_OPTIONS:
        group.addoption(name, action="store", default=None, type=_argtype(kind), help=text)
        parser.addini(ini, help=text.replace("%%", "%"), default=default)


def _argtype(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return parse(text)  # ArgumentTypeError propagates: argparse prints it as a usage error

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_hostperf import builtin_environments, hookspecs

    pluginmanager.add_hookspecs(hookspecs)
    if not pluginmanager.is_registered(builtin_environments):
        pluginmanager.register(builtin_environments, "hostperf-builtin-environments")


@pytest.hookimpl(trylast=True)  # after other plugins settle their options (pytest-randomly's seed)
def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(fixtures_module):
        config.pluginmanager.register(fixtures_module, "hostperf-fixtures")
    if not config.getoption("hostperf") or os.environ.get("HOSTPERF_AGENT"):
        return
    _refuse_parallel_workers(config)
    from pytest_hostperf.controller import HostperfPlugin

    kinds = environment_kinds(config)
    config.pluginmanager.register(HostperfPlugin(config, _settings(config, kinds), kinds), "hostperf-controller")


def _refuse_parallel_workers(config: pytest.Config) -> None:
    """pytest-xdist's workers would each measure at once on the same CPUs: wrong numbers."""
    if hasattr(config, "workerinput"):
        raise pytest.UsageError("--hostperf cannot run inside a pytest-xdist worker: it measures one test at a "
                                "time; drop -n (or use -n 0)")
    workers = config.getoption("numprocesses", None)
    dist = config.getoption("dist", "no")
    if workers not in (None, 0) or dist not in (None, "no"):
        given = f"-n {workers}" if workers not in (None, 0) else f"--dist {dist}"
        raise pytest.UsageError(f"--hostperf measures one test at a time; {given} (pytest-xdist) would run "
                                "measurements in parallel on the same CPUs and skew every number: drop it, or "
                                "pass -n 0 (also when addopts in your ini sets -n)")


def environment_kinds(config: pytest.Config) -> opt.Kinds:
    """Every environment kind the installed plugins declare (the built-in ones included)."""
    try:
        # pluggy calls the last registered first; reversed, the built-in kinds come first.
        declared = reversed(config.hook.pytest_hostperf_environment_kinds())
        return opt.kinds_by_name(kind for kinds in declared for kind in kinds)
    except ValueError as exc:
        raise pytest.UsageError(f"pytest_hostperf_environment_kinds: {exc}") from None


def _value(config: pytest.Config, name: str, ini: str, parse: Callable[[str], Any]) -> Any:
    """The option's value, else the ini key's; an empty ini value is parsed like an empty option."""
    given = config.getoption(name)
    raw = given if given is not None else config.getini(ini)
    if raw is None or (raw == "" and parse is str):
        return None  # unset, or a path/name set to nothing
    where = f"{name}={raw!r}" if given is not None else f"ini option {ini} = {raw!r}"
    try:
        return parse(str(raw))
    except argparse.ArgumentTypeError as exc:
        raise pytest.UsageError(f"{where}: {exc}") from None


def _settings(config: pytest.Config, kinds: opt.Kinds = opt.BUILTIN) -> Settings:
    parsers: dict[str, Callable[[str], Any]] = {
        "hostperf_envs": lambda text: opt.parse_envs(text, kinds),
        "hostperf_require": lambda text: opt.parse_envs(text, kinds) if text.strip() else (),
        "hostperf_max_overhead": lambda text: opt.parse_budgets(text, kinds),
        "hostperf_measure": opt.parse_measure,
        "hostperf_mounts": lambda text: opt.parse_mounts(text, kinds),
    }
    values = {ini: _value(config, name, ini, parsers.get(ini, parse)) for name, ini, parse, _, _ in _VALUE_OPTIONS}
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
    save = bool(config.getoption("hostperf_save"))
    accept = tuple(config.getoption("hostperf_accept") or config.getini("hostperf_accept") or ())
    accept_reason = values["hostperf_accept_reason"] or None
    if accept and not save:
        raise pytest.UsageError("--hostperf-accept accepts changes into the baseline, so it needs --hostperf-save; "
                                "add --hostperf-save (or drop --hostperf-accept to only look)")
    if accept and not accept_reason:
        raise pytest.UsageError("--hostperf-accept needs a reason stored beside the saved session: add "
                                "--hostperf-accept-reason='TEXT' (for example the change or issue that explains it)")
    strict = config.getoption("hostperf_strict")
    keep_aslr = config.getoption("hostperf_keep_aslr")
    if values["hostperf_html"] and importlib.util.find_spec("plotly") is None:
        raise pytest.UsageError("--hostperf-html draws its charts with plotly, which is not installed: "
                                "pip install 'pytest-hostperf[html]' (or drop --hostperf-html)")

    requirements, requirements_exclude = _image_requirements(config)

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    return Settings(
        project_dir=root, envs=envs, baselines_dir=baselines, save=save,
        strict=bool(strict if strict is not None else config.getini("hostperf_strict")),
        keep_aslr=bool(keep_aslr if keep_aslr is not None else config.getini("hostperf_keep_aslr")),
        accept=accept, accept_reason=accept_reason,
        tolerance=values["hostperf_tolerance"], alpha=values["hostperf_alpha"], require=require,
        max_overhead=values["hostperf_max_overhead"] or {}, timeout_s=values["hostperf_timeout"],
        history=values["hostperf_history"], session_noise=values["hostperf_session_noise"],
        blocks=values["hostperf_blocks"], confirm=values["hostperf_confirm"],
        image=values["hostperf_image"], vm_image=values["hostperf_vm_image"],
        network=bool(config.getoption("hostperf_network")),
        requirements=requirements, requirements_exclude=requirements_exclude,
        json_path=path(values["hostperf_json"]), markdown_path=path(values["hostperf_markdown"]),
        html_path=path(values["hostperf_html"]),
        ssh_config=path(values["hostperf_ssh_config"]), docker_cpus=values["hostperf_docker_cpus"],
        ssh_python=values["hostperf_ssh_python"],
        docker_pids=values["hostperf_docker_pids"], docker_memory=values["hostperf_docker_memory"],
        docker_tmpfs_size=values["hostperf_docker_tmpfs_size"],
        measure=values["hostperf_measure"], instructions_tolerance=values["hostperf_instructions_tolerance"],
        mounts=values["hostperf_mounts"],
        pair_budget_s=values["hostperf_pair_budget"], pair_round_s=values["hostperf_pair_round"],
        against=_against(root, values["hostperf_against"]),
    )


def _image_requirements(config: pytest.Config) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``hostperf_requirements`` and ``hostperf_requirements_exclude``, each line checked now."""
    extra = tuple(config.getini("hostperf_requirements"))
    exclude = tuple(config.getini("hostperf_requirements_exclude"))
    if any(entry.strip().startswith("-r") for entry in extra):
        from pytest_hostperf.images.requirements import ImageBuildError, expand_requirement_entries

        try:
            extra = tuple(expand_requirement_entries(config.rootpath, extra))
        except (OSError, ImageBuildError) as exc:
            raise pytest.UsageError(f"ini option hostperf_requirements: {exc}") from None
    if extra or exclude:
        from pytest_hostperf.dependencies import RequirementError, check_entries

        try:
            check_entries(extra, exclude)
        except RequirementError as exc:
            raise pytest.UsageError(f"ini option {exc}") from None
    return extra, exclude


def _against(root: Path, rev: str | None) -> Revision | None:
    """REV resolved now, at configure: a usage error naming the fix before any environment starts."""
    if not rev:
        return None
    try:
        return revision.resolve(root, rev)
    except revision.RevisionError as exc:
        raise pytest.UsageError(str(exc)) from None
