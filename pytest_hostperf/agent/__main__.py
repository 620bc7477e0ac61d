"""Entry point of the agent: ``python -m pytest_hostperf.agent --env NAME --rootdir DIR -- ARGS``.

Starts one pytest session inside the environment, collects the given test files once,
then runs tests on request until told to stop (see :mod:`.worker`).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from pytest_hostperf.agent.channel import AgentChannel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_hostperf.agent")
    parser.add_argument("--env", required=True, help="environment name, reported back")
    parser.add_argument("--rootdir", required=True, help="project root inside the environment")
    parser.add_argument("--channel", default="stdio", help="'stdio' or a device path (VM serial port)")
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" belongs to pytest, untouched by our parser.
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    pytest_args = argv[split + 1:]

    channel = AgentChannel.from_stdio() if args.channel == "stdio" else AgentChannel.from_device(args.channel)
    # The controller's plugin, if installed here, must stay inert inside the agent.
    os.environ["HOSTPERF_AGENT"] = args.env
    os.chdir(args.rootdir)
    try:
        import pytest

        from pytest_hostperf.agent.worker import AgentWorker

        worker = AgentWorker(channel, args.env)
        code = pytest.main(
            [
                "--rootdir", args.rootdir,
                "-p", "no:cacheprovider",     # the project is mounted read-only
                "-p", "no:randomly",
                "--continue-on-collection-errors",
                "-q",
                *pytest_args,
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


if __name__ == "__main__":
    sys.exit(main())
