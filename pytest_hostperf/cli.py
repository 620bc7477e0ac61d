"""The ``hostperf`` command: doctor, compare, report, image, sweep.

Thin: each subcommand parses its arguments and calls library code; only this module
prints and chooses exit codes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pytest_hostperf import __version__
from pytest_hostperf.options import parse_alpha, parse_fraction

if TYPE_CHECKING:
    from pytest_hostperf.images import ImageDependencies

OK, FAIL = "ok", "--"


# -- doctor -----------------------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace) -> int:
    from pytest_hostperf.doctor import CHECKS, instructions_line

    failed = 0
    for name, check in CHECKS.items():
        try:
            ok, text = check()
        except Exception as exc:  # noqa: BLE001 - a broken check must not hide the others
            ok, text = False, f"check crashed: {exc!r}"
        failed += not ok
        print(f"[{OK if ok else FAIL}] {name:<11} {text}")
    try:
        ok, text = instructions_line(args.instructions)
    except Exception as exc:  # noqa: BLE001 - a broken check must not hide the others
        ok, text = False, f"check crashed: {exc!r}"
    # Informational: counting is optional, so it never fails --strict.
    print(f"[{OK if ok else FAIL}] instructions (--hostperf-measure=time,instructions): {text}")
    print(f"\n{len(CHECKS) - failed} of {len(CHECKS)} environments usable here.")
    return 0 if failed == 0 or not args.strict else 1


# -- compare ----------------------------------------------------------------------------------

def cmd_compare(args: argparse.Namespace) -> int:
    from pytest_hostperf.compare import CompareError, compare_against, compare_files, render, render_against

    try:
        if args.baseline is None:
            paired_rows = compare_against(Path(args.current), tolerance=args.tolerance)
            for line in render_against(paired_rows):
                print(line)
            return 1 if any(row.fails for row in paired_rows) else 0
        tolerance = args.tolerance if args.tolerance is not None else 0.05
        rows = compare_files(Path(args.current), Path(args.baseline), tolerance=tolerance, alpha=args.alpha)
    except CompareError as exc:
        print(f"hostperf compare: {exc}", file=sys.stderr)
        return 2
    for line in render(rows):
        print(line)
    return 1 if any(row.verdict.fails for row in rows) else 0


# -- report -----------------------------------------------------------------------------------

def cmd_report(args: argparse.Namespace) -> int:
    from pytest_hostperf.report.html import HtmlReportError, write_html
    from pytest_hostperf.report.json import ReportError, read_json

    source = Path(args.results)
    baselines = Path(args.baselines) if args.baselines else None
    output = Path(args.output) if args.output else source.with_suffix(".html")
    try:
        if baselines is not None and not baselines.is_dir():
            raise HtmlReportError(f"--baselines {baselines}: not a directory (give the directory of "
                                  "<env>-<fingerprint>.json files, e.g. baselines/)")
        if not source.exists():
            raise HtmlReportError(f"{source} does not exist (make it with pytest --hostperf --hostperf-json=PATH)")
        report = read_json(source)
        write_html(report, output, baselines)
    except (HtmlReportError, ReportError, OSError) as exc:
        print(f"hostperf report: {exc}", file=sys.stderr)
        return 2
    tests = len({r.get("test") for r in report["results"]})
    print(f"wrote {output} ({tests} tests, {output.stat().st_size / 1e6:.1f} MB)")
    return 0


# -- image ------------------------------------------------------------------------------------

def _reporter() -> Any:
    from pytest_hostperf.progress import Reporter

    return Reporter(lambda line: print(line, flush=True))


def cmd_image_base(args: argparse.Namespace) -> int:
    from pytest_hostperf import images
    from pytest_hostperf.environments.docker import docker_client

    image_id = images.build_base_image(docker_client(), tag=args.tag, reporter=_reporter())
    print(f"base image {args.tag}: {image_id}")
    return 0


def cmd_image_build(args: argparse.Namespace) -> int:
    from pytest_hostperf import images
    from pytest_hostperf.environments.docker import docker_client

    project = Path(args.project).resolve()
    try:
        ref = images.ensure_image(docker_client(), project, user_image=args.image, base=args.base,
                                  dependencies=_project_dependencies(project, args), reporter=_reporter())
    except images.ImageBuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"docker image: {ref.tag} ({ref.id[:19]})")
    if args.vm:
        from pytest_hostperf.environments.qemu import prepare_vm_disk

        disk = prepare_vm_disk(ref, reporter=_reporter().child("qemu"))
        print(f"vm disk: {disk.path}")
    if args.vm_docker:
        _build_docker_qemu(ref)
    return 0


def _build_docker_qemu(ref: Any) -> None:
    """docker@qemu's engine VM disk, its guest kernel and its /var/lib/docker with ``ref`` loaded."""
    from pytest_hostperf import images
    from pytest_hostperf.environments.docker import docker_client
    from pytest_hostperf.environments.qemu.engine_vm import EngineVM
    from pytest_hostperf.vm import engine_disk
    from pytest_hostperf.vm.guest_kernel import ensure_guest_kernel

    reporter = _reporter().child("docker@qemu")
    kernel = ensure_guest_kernel(progress=reporter.step)
    client = docker_client()
    disk = engine_disk.ensure_engine_disk(client, images.BASE_TAG, reporter=reporter)
    data = EngineVM(disk, kernel, session_id="image-build", host_client=client, images=[ref.tag],
                    reporter=reporter).ensure_data_disk(timeout=1800)
    print(f"docker@qemu: engine disk {disk.path}, data disk {data}, kernel {kernel.kernel}")


def cmd_image_kernel(args: argparse.Namespace) -> int:
    from pytest_hostperf.vm.guest_kernel import ensure_guest_kernel

    kernel = ensure_guest_kernel(progress=_reporter().step, offline=args.offline)
    print(f"guest kernel {kernel.version} ({', '.join(kernel.features)}): {kernel.kernel}, {kernel.initrd}")
    return 0


def _project_dependencies(project: Path, args: argparse.Namespace) -> ImageDependencies:
    """The image's dependencies as a session in this environment plans them.

    This interpreter's installed distributions, with ``hostperf_requirements`` and
    ``hostperf_requirements_exclude`` read from the project's ini the way pytest reads
    them, plus ``--requirement``/``--exclude``: the same image (and cache key) a session builds.
    """
    from pytest_hostperf.images import ImageDependencies, requirements_from_project

    extra = requirements_from_project(project) + list(args.requirement or [])
    exclude = requirements_from_project(project, "hostperf_requirements_exclude") + list(args.exclude or [])
    return ImageDependencies(project, tuple(extra), tuple(exclude))


def cmd_image_prune(args: argparse.Namespace) -> int:
    from pytest_hostperf.environments.ship import human_size
    from pytest_hostperf.images import ImageBuildError
    from pytest_hostperf.images.prune import apply_prune, plan_prune

    project = Path(args.project).resolve()
    try:
        from pytest_hostperf.environments.docker import docker_client

        client: Any = docker_client()
    except Exception as exc:  # noqa: BLE001 - without an engine the VM disks are still listed
        print(f"docker: {str(exc).splitlines()[0]}; images are not listed")
        client = None
    try:
        requirements = _project_dependencies(project, args).requirements()
    except ImageBuildError as exc:
        print(f"{exc}\nnothing is removed: the project image this project uses is not known", file=sys.stderr)
        return 1
    entries = plan_prune(client, project, requirements, base=args.base)
    if not entries:
        print("nothing built by hostperf here.")
        return 0
    for entry in entries:
        print(f"{'remove' if entry.remove else 'keep  '}  {entry.what:<14} {human_size(entry.size_bytes):>9}  "
              f"{entry.name}  ({entry.reason})")
    doomed = [e for e in entries if e.remove]
    total = human_size(sum(e.size_bytes for e in doomed))
    if args.dry_run:
        print(f"\n{len(doomed)} item(s), {total}, would be removed (--dry-run: nothing removed).")
        return 0
    failed = 0
    for entry, outcome in apply_prune(client, entries):
        if outcome != "removed":
            failed += 1
            print(f"{entry.name}: {outcome}")
    print(f"\n{len(doomed) - failed} of {len(doomed)} item(s) removed ({total} listed).")
    return 1 if failed else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    removed: list[str] = []
    try:
        from pytest_hostperf.environments.docker import docker_client, sweep_stale

        removed += sweep_stale(docker_client())
    except Exception as exc:  # noqa: BLE001
        print(f"docker: not swept ({str(exc).splitlines()[0]})")
    try:
        from pytest_hostperf.environments.qemu import sweep_stale as sweep_vms

        # The NFS servers of dead sessions go with the VMs (their state dirs are listed too).
        removed += [f"{'NFS server state' if 'nfs' in path.parent.name else 'VM work dir'} {path}"
                    for path in sweep_vms()]
    except Exception as exc:  # noqa: BLE001
        print(f"qemu: not swept ({exc})")
    from pytest_hostperf.run import workdir
    from pytest_hostperf.vm import default_cache_dir, sweep_build_dirs

    removed += [f"VM disk build leftover {path}" for path in sweep_build_dirs(default_cache_dir())]
    removed += [f"temp dir {path}" for path in workdir.sweep_stale()]
    from pytest_hostperf import revision

    removed += [f"--hostperf-against checkout {path}" for path in revision.sweep_stale()]
    for thing in removed:
        print(f"removed {thing}")
    print(f"{len(removed)} leftover resource(s) removed.")
    return 0


# -- entry point ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hostperf", description="pytest-hostperf companion command.")
    parser.add_argument("--version", action="version", version=f"pytest-hostperf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    doctor = sub.add_parser("doctor", help="which environments work here, and why not")
    doctor.add_argument("--strict", action="store_true", help="exit 1 when any environment is unusable")
    doctor.add_argument("--instructions", action="store_true",
                        help="probe instruction counting for real in each environment (valgrind, ~20 s each)")
    doctor.set_defaults(func=cmd_doctor)

    compare = sub.add_parser("compare", help="compare a JSON report or baseline file against a baseline, offline, "
                                             "or judge a report's comparisons with a git revision again",
                             description="Exit code 1 when any comparison is a regression. Examples: "
                                         "hostperf compare report.json baselines/native-1a2b3c4d5e6f.json; "
                                         "hostperf compare report.json --tolerance=2%% (a report made with "
                                         "--hostperf-against=REV: its paired comparisons, judged at 2%%)")
    compare.add_argument("current", help="a JSON report (--hostperf-json) or a baseline file")
    compare.add_argument("baseline", nargs="?", default=None,
                         help="a baseline file from baselines/; without it, the report's --hostperf-against pairs")
    compare.add_argument("--tolerance", type=parse_fraction, default=None,
                         help="default 5%% (with a baseline), each item's own (the report's pairs)")
    compare.add_argument("--alpha", type=parse_alpha, default=0.01, help="default 0.01")
    compare.set_defaults(func=cmd_compare)

    report = sub.add_parser("report", help="render a JSON report as one self-contained HTML file with charts",
                            description="Example: hostperf report perf.json -o perf.html. The file needs no "
                                        "network to view. Needs plotly: pip install 'pytest-hostperf[html]'.")
    report.add_argument("results", help="a JSON report (pytest --hostperf --hostperf-json=PATH)")
    report.add_argument("--baselines", default=None, metavar="DIR",
                        help="baselines directory for the history charts (default: the one the session used)")
    report.add_argument("-o", "--output", default=None, metavar="PATH.html",
                        help="where to write the HTML (default: RESULTS with .html instead of .json)")
    report.set_defaults(func=cmd_report)

    image = sub.add_parser("image", help="prepare what the docker and qemu environments need (offline)")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    base = image_sub.add_parser("base", help="make the base image from Debian packages (debootstrap)")
    base.add_argument("--tag", default="hostperf-base:bookworm")
    base.set_defaults(func=cmd_image_base)
    build = image_sub.add_parser("build", help="build (or reuse) the project image; --vm also the VM disk")
    build.add_argument("--project", default=".", help="project directory (default: .)")
    build.add_argument("--base", default="hostperf-base:bookworm",
                       help="local base image (default: hostperf-base:bookworm)")
    build.add_argument("--image", default=None, help="use this image as it is instead of building one")
    build.add_argument("--requirement", "-r", action="append",
                       help="pip requirement added to the image, or replacing an installed one's pin (repeatable)")
    build.add_argument("--exclude", action="append", metavar="NAME",
                       help="installed distribution (name or glob) left out of the image (repeatable)")
    build.add_argument("--vm", action="store_true", help="also build the bootable VM disk from the image")
    build.add_argument("--vm-docker", action="store_true",
                       help="also build docker@qemu's engine VM disk (as root) and its /var/lib/docker with the image")
    build.set_defaults(func=cmd_image_build)
    kernel = image_sub.add_parser("kernel", help="fetch Debian's generic kernel and build the initramfs the share-9p "
                                                 "mount and docker@qemu boot with (cached; scripts/setup.sh does it)")
    kernel.add_argument("--offline", action="store_true", help="use only the packages already in the cache")
    kernel.set_defaults(func=cmd_image_kernel)
    prune = image_sub.add_parser(
        "prune", help="remove images and VM disks the current project no longer uses (lists them with sizes)",
        description="Keeps the base image, the project image this project uses now and the VM disk made "
                    "from it; removes other hostperf project images, VM disks and killed builds' leftovers.")
    prune.add_argument("--project", default=".", help="the project whose image stays (default: .)")
    prune.add_argument("--base", default="hostperf-base:bookworm", help="base image (default: hostperf-base:bookworm)")
    prune.add_argument("--requirement", "-r", action="append", help="extra pip requirement the project image has")
    prune.add_argument("--exclude", action="append", metavar="NAME",
                       help="distribution left out of the project image (as for image build)")
    prune.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    prune.set_defaults(func=cmd_image_prune)

    sweep = sub.add_parser("sweep", help="remove containers, volumes, VMs and temp dirs left by killed sessions")
    sweep.set_defaults(func=cmd_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: Any = args.func(args)
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
