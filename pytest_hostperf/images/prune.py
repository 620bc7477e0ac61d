"""``hostperf image prune``: what hostperf built that the current project no longer uses.

Images and VM disks pile up as requirements, the interpreter or hostperf itself change
(each change makes a new project image, and a new VM disk from it). :func:`plan_prune`
lists everything hostperf keeps on this machine with its size and whether it stays:

* the base image stays (every project image is built from it);
* the project image the current project would use now stays, every other one goes;
* VM disks stay when they were made from that image, others go (without a Docker
  engine there is no telling, and they all stay);
* staging directories of VM disk builds that were killed go;
* an image a container still uses stays (the engine refuses, and we do not force).

:func:`apply_prune` removes what the plan marks; nothing else is ever touched (images
without hostperf's labels, other users' caches).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pytest_hostperf.images.ref import BASE_TAG, COUNTING_BASE_TAG, LABEL_KIND
from pytest_hostperf.vm.cache import cached_disks, default_cache_dir, disk_usage, sweep_build_dirs

if TYPE_CHECKING:
    import docker


@dataclasses.dataclass(frozen=True)
class PruneEntry:
    """One thing hostperf keeps on disk, and whether prune removes it."""

    what: str          # "image", "VM disk", "build leftover"
    name: str          # image tag (or id), or a directory
    size_bytes: int
    remove: bool
    reason: str
    ref: str = ""      # image id or directory path to remove


def plan_prune(client: docker.DockerClient | None, project_dir: Path, requirements: Sequence[str] = (),
               cache_dir: Path | None = None, base: str = BASE_TAG) -> list[PruneEntry]:
    """Everything hostperf built here, each marked keep or remove with the reason."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    entries: list[PruneEntry] = []
    current_id: str | None = None
    if client is not None:
        image_entries, current_id = _plan_images(client, base, requirements)
        entries += image_entries
    for disk in cached_disks(cache_dir):
        if client is None:
            keep, reason = True, "no Docker engine: cannot tell which image this disk was made from"
        elif current_id is not None and disk.key == current_id:
            keep, reason = True, "made from the image this project uses"
        else:
            keep, reason = False, f"made from {disk.key[:19] or 'an unknown source'}, not this project's image"
        entries.append(PruneEntry("VM disk", str(disk.directory), disk.size_bytes, not keep, reason,
                                  str(disk.directory)))
    for staging in sweep_build_dirs(cache_dir, dry_run=True):
        entries.append(PruneEntry("build leftover", str(staging), disk_usage(staging), True,
                                  "staging directory of a VM disk build that was killed", str(staging)))
    return entries


def _plan_images(client: docker.DockerClient, base: str,
                 requirements: Sequence[str]) -> tuple[list[PruneEntry], str | None]:
    from pytest_hostperf.images.project import host_interpreter, plan_project_image

    try:
        current_tag: str | None = plan_project_image(client, base, requirements, host_interpreter()).tag
    except Exception:  # noqa: BLE001 - no base image: no project image can be current
        current_tag = None
    used = {container.attrs.get("Image") for container in client.containers.list(all=True)}
    entries = []
    current_id = None
    for image in client.images.list(filters={"label": LABEL_KIND}):
        kind = (image.labels or {}).get(LABEL_KIND)
        if kind not in ("base", "project"):
            continue  # build leftovers belong to the sweep, which knows whether their build runs
        name = ", ".join(image.tags) or image.short_id
        size = int(image.attrs.get("Size") or 0)
        if current_tag is not None and current_tag in image.tags:
            current_id = str(image.id)
            keep, reason = True, "the image this project uses"
        elif kind == "base" and base in image.tags:
            keep, reason = True, "the base every project image is built from"
        elif kind == "base" and COUNTING_BASE_TAG in image.tags:
            keep, reason = True, "the base with valgrind of sessions that count instructions"
        elif image.id in used:
            keep, reason = True, "a container still uses it"
        else:
            keep, reason = False, "not the image this project uses now"
        entries.append(PruneEntry("image", name, size, not keep, reason, str(image.id)))
    return entries, current_id


def apply_prune(client: docker.DockerClient | None, entries: Sequence[PruneEntry]) -> list[tuple[PruneEntry, str]]:
    """Remove what ``entries`` mark; return (entry, "removed" or why not) for each of them."""
    results = []
    for entry in entries:
        if not entry.remove:
            continue
        try:
            if entry.what == "image":
                assert client is not None
                client.images.remove(entry.ref, noprune=False)
            else:
                shutil.rmtree(entry.ref)
            results.append((entry, "removed"))
        except Exception as exc:  # noqa: BLE001 - one failure (image in use, permission) must not stop the rest
            results.append((entry, f"not removed: {_first_line(exc)}"))
    return results


def _first_line(exc: Any) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
