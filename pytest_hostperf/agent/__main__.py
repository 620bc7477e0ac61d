"""Entry point of the agent: ``python -m pytest_hostperf.agent --env NAME --rootdir DIR -- ARGS``.

Starts one pytest session inside the environment, collects the given test files once,
then runs tests on request until told to stop (see :mod:`.worker`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback

from pytest_hostperf.agent.channel import AgentChannel


def main(argv: list[str] | None = None) -> int:
    startup_modules = list(sys.modules)  # the interpreter's own set-up, before the agent imports anything
    parser = argparse.ArgumentParser(prog="python -m pytest_hostperf.agent")
    parser.add_argument("--env", required=True, help="environment name, reported back")
    parser.add_argument("--rootdir", required=True, help="project root inside the environment")
    parser.add_argument("--channel", default="stdio", help="'stdio' or a device path (VM serial port)")
    parser.add_argument("--import-root", action="append", default=[], metavar="REL",
                        help="a directory of the project, relative to --rootdir, to import the project's "
                             "code from ahead of site-packages (repeatable, in priority order)")
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" belongs to pytest, untouched by our parser.
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    pytest_args = argv[split + 1:]

    _exit_when_orphaned()
    channel = AgentChannel.from_stdio() if args.channel == "stdio" else AgentChannel.from_device(args.channel)
    # The controller's plugin, if installed here, must stay inert inside the agent.
    os.environ["HOSTPERF_AGENT"] = args.env
    os.chdir(args.rootdir)
    try:
        # Before pytest is imported: it imports pluggy and iniconfig, which may be the project.
        _put_import_roots_first(args.rootdir, args.import_root)
        import pytest

        from pytest_hostperf.agent.worker import AgentWorker

        worker = AgentWorker(channel, args.env, args.rootdir, startup_modules)
        code = pytest.main(
            [
                "--rootdir", args.rootdir,
                "-p", "no:cacheprovider",     # the project is mounted read-only
                "-p", "no:randomly",
                "--continue-on-collection-errors",
                "-q",
                *pytest_args,
                *_serial_if_xdist(),
            ],
            plugins=[worker],
        )
        if not worker.announced:
            channel.send({"event": "fatal", "message": f"pytest exited with code {int(code)} before the agent "
                          "was ready (bad arguments or configuration?); see the environment log"})
            return 2
        return 0
    except BaseException:  # noqa: BLE001 - anything is reported to the controller, then re-raised
        channel.send({"event": "fatal", "message": traceback.format_exc(limit=20)})
        raise
    finally:
        channel.close()


def _put_import_roots_first(rootdir: str, roots: list[str]) -> None:
    """The project's import roots at the front of sys.path (and of PYTHONPATH, for subprocesses).

    A released distribution of the same name in the environment's site-packages then never
    shadows the project's own code. Stdlib-only on purpose: nothing may be imported first.
    """
    paths = [_import_root_path(rootdir, root) for root in roots]
    if not paths:
        return
    sys.path[:] = paths + [entry for entry in sys.path if entry not in paths]
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in paths]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + inherited)


def _serial_if_xdist() -> list[str]:
    """``-n 0`` where pytest-xdist is installed: an ``addopts = -n 2`` in the project's ini
    would otherwise hand the agent's collection to worker processes (every request then
    finds no item). Last on the command line, so it wins over addopts; ``-p no:xdist``
    would instead make that ``-n`` an unknown option."""
    import importlib.util

    return ["-n", "0"] if importlib.util.find_spec("xdist") is not None else []


def _import_root_path(rootdir: str, relative: str) -> str:
    # A root comes from the controller's command line: it must name a directory of the
    # mounted project, never one outside it.
    if os.path.isabs(relative) or ".." in relative.replace("\\", "/").split("/"):
        raise ValueError(f"--import-root {relative!r}: expected a directory inside the project, relative "
                         "to --rootdir (like 'src' or '.'), without '..'")
    return os.path.normpath(os.path.join(rootdir, relative))


def _exit_when_orphaned(interval_s: float = 0.5) -> None:
    """End this agent (and the test's children) as soon as the process that started it dies.

    A SIGKILLed controller cannot stop its agents, and an agent busy in a test body does
    not read the closed stdin: without this it ran on to the end of the body (minutes).
    PR_SET_PDEATHSIG cannot do it: it follows the parent's *thread*, and agents are
    started from threads that end long before the session does.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        if os.getpgrp() == os.getpid():   # our own process group (native): the test's children too
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(3)

    threading.Thread(target=watch, name="hostperf-orphan-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
