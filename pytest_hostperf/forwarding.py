"""Which of the invocation's pytest options every agent gets too. Pure: no pytest import.

The agent is a pytest session of its own inside each environment. It reads the same ini
file (``-c``), but the command line and ``PYTEST_ADDOPTS`` are the controller's: an
option a conftest adds (``--size=77``), ``-W error::ResourceWarning``, ``-o key=value``,
``-p plugin``, ``--timeout=5`` must hold for the test body inside as they would in a
plain run, or the agent measures other work. So every option is forwarded except:

* test paths (the agent collects the files the controller gives it);
* what only the controller's session uses: selection and stopping (``-k``, ``-m``,
  ``-x``, ``--maxfail``, ``--lf``...), output and reports (``-v``, ``-q``, ``-r``,
  ``--tb``, ``--junitxml``...), debugging (``--pdb``), ``--collect-only``;
* what the agent sets itself: ``--rootdir``, ``-c``, capturing (its stdout is the
  protocol channel), ``--basetemp`` (a controller's path), pytest-xdist (the agent runs
  with ``-n 0``), pytest-randomly (the controller's seed is forwarded explicitly);
* hostperf's and pytest-benchmark's own options (each run request carries the ones that
  shape a measurement; ``--benchmark-json`` inside would write into the read-only project).

Only the arity of the options that are dropped is needed: everything else passes through
verbatim, values included; a bare word is a test path when it is one of the invocation's
paths (``config.args``), else the value of the option before it.
"""

from __future__ import annotations

import shlex
from typing import Final, Iterable, Sequence

#: Dropped options that take no value.
DROPPED_FLAGS: Final = frozenset({
    "-x", "--exitfirst", "-v", "--verbose", "-q", "--quiet", "-l", "--showlocals", "-s",
    "--lf", "--last-failed", "--ff", "--failed-first", "--nf", "--new-first", "--sw", "--stepwise",
    "--sw-skip", "--stepwise-skip", "--sw-reset", "--stepwise-reset", "--co", "--collect-only", "--collectonly",
    "--pdb", "--trace", "--setup-only", "--setup-plan", "--setup-show", "--fixtures", "--funcargs",
    "--fixtures-per-test", "--markers", "--version", "-V", "-h", "--help", "--cache-clear", "--cache-show",
    "--no-header", "--no-summary", "--pyargs", "--looponfail", "-f",
})
#: Dropped options that take a value (``--opt VALUE``, ``--opt=VALUE`` or ``-oVALUE``).
DROPPED_WITH_VALUE: Final = frozenset({
    "-k", "-m", "--maxfail", "--junitxml", "--junit-xml", "--junit-prefix", "--junitprefix", "-r", "--tb",
    "--durations", "--durations-min", "--deselect", "--basetemp", "--rootdir", "-c", "--config-file",
    "--inifile", "--capture", "--color", "--code-highlight", "--log-file", "--log-cli-level", "--report-log",
    "--lfnf", "--last-failed-no-failures", "--debug", "--pdbcls", "--verbosity", "--html", "--result-log",
    "-n", "--numprocesses", "--dist", "--maxprocesses", "--tx", "--rsyncdir", "--max-worker-restart",
    "--randomly-seed", "--timeout-method",
})
#: Dropped option families: everything that starts with one of these.
DROPPED_PREFIXES: Final = ("--hostperf", "--benchmark-", "--cov")
#: ``-p`` values that are the agent's own business.
DROPPED_PLUGINS: Final = frozenset({"randomly", "no:randomly", "xdist", "no:xdist", "no:cacheprovider"})


def forwarded_options(addopts: str, args: Sequence[str], paths: Iterable[str],
                      randomly_seed: int | None = None) -> list[str]:
    """The options of ``PYTEST_ADDOPTS`` then the command line ``args`` that agents get.

    ``paths``: the invocation's test paths (pytest's ``config.args``), dropped wherever
    they appear. ``randomly_seed``: pytest-randomly's seed in the controller, when that
    plugin is active; the agent then reseeds ``random`` before each test body as a plain
    run would (it runs with ``-p no:randomly`` otherwise).
    """
    given = shlex.split(addopts) + list(args)
    positional = set(paths)
    kept: list[str] = []
    index = 0
    while index < len(given):
        token = given[index]
        index += 1
        if not token.startswith("-") or token == "-":
            if token not in positional:
                kept.append(token)  # the value of an option we pass through (`--size 77`)
            continue
        if token == "--":
            break  # everything after it is a path
        name, has_value, _ = token.partition("=")
        if token in DROPPED_FLAGS or name.startswith(DROPPED_PREFIXES) or _flag_cluster(token):
            if name.startswith(DROPPED_PREFIXES) and not has_value and _takes_value(given, index, positional):
                index += 1  # `--hostperf-envs docker`, `--benchmark-max-time 0.5`
            continue
        if name in DROPPED_WITH_VALUE:
            index += 0 if has_value else 1
            continue
        if _attached_short_value(token):
            continue  # -kexpr, -mslow, -rA, -n2
        if token == "-p" and index < len(given) and given[index] in DROPPED_PLUGINS:
            index += 1
            continue
        if token.startswith("-p") and token[2:] in DROPPED_PLUGINS:
            continue
        kept.append(token)
    if randomly_seed is not None:
        kept += ["-p", "randomly", f"--randomly-seed={randomly_seed}"]
    return kept


def _flag_cluster(token: str) -> bool:
    """``-vx``, ``-qq``: short flags that are all dropped ones."""
    letters = token[1:]
    return (len(token) > 2 and not token.startswith("--") and letters.isalpha()
            and all(f"-{letter}" in DROPPED_FLAGS for letter in letters))


def _attached_short_value(token: str) -> bool:
    return len(token) > 2 and not token.startswith("--") and token[:2] in DROPPED_WITH_VALUE


def _takes_value(given: Sequence[str], index: int, positional: set[str]) -> bool:
    """Whether the word after a dropped ``--hostperf*``/``--benchmark-*`` option is its value."""
    return index < len(given) and not given[index].startswith("-") and given[index] not in positional
