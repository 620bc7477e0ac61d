"""Removing what killed docker sessions left: containers, volumes, bind dirs, build leftovers.

Called when a session starts using docker (and by ``hostperf sweep``). A resource goes
only when its owner is provably gone (:mod:`pytest_hostperf.environments.labels`); a
resource of another boot of this machine goes once nothing of its session still runs
(a shared engine may hold a live session of another machine that has our host name).
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Final

from pytest_hostperf.environments import labels
from pytest_hostperf.environments.labels import Liveness, Owner

if TYPE_CHECKING:
    import docker

#: Name prefix of the host directories behind ``bind`` mounts (only such dirs are removed).
BIND_PREFIX: Final = "docker-bind-"


def sweep_stale(client: docker.DockerClient) -> list[str]:
    """Remove containers/volumes of sessions whose controller is gone; return what went.

    Cached images are kept on purpose (they are the cache; ``hostperf image prune``
    removes old ones); leftovers of killed builds are removed.
    """
    from pytest_hostperf.images import sweep_build_leftovers

    here = Owner.current()
    removed: list[str] = []
    running_sessions: set[str] = set()
    session_filter = {"label": labels.SESSION}
    for container in client.containers.list(all=True, filters=session_filter):
        state = _liveness(container.labels, here)
        if state is Liveness.DEAD or (state is Liveness.OTHER_BOOT and container.status != "running"):
            _quietly(functools.partial(container.remove, force=True))
            removed.append(f"container {container.name}")
            _remove_bind_dir(container.labels.get(labels.BIND_DIR, ""))
        else:
            running_sessions.add(container.labels.get(labels.SESSION, ""))
    for volume in client.volumes.list(filters=session_filter):
        volume_labels = volume.attrs.get("Labels") or {}
        state = _liveness(volume_labels, here)
        if state is Liveness.DEAD or (state is Liveness.OTHER_BOOT
                                      and volume_labels.get(labels.SESSION) not in running_sessions):
            _quietly(functools.partial(volume.remove, force=True))
            removed.append(f"volume {volume.name}")
    removed += sweep_build_leftovers(client)
    return removed


def _liveness(resource_labels: dict[str, str], here: Owner) -> Liveness | None:
    owner = Owner.from_labels(resource_labels)
    return owner.liveness(here) if owner is not None else None


def _remove_bind_dir(path: str) -> None:
    # Only directories we made (by name); a label could have been edited by hand.
    if path and Path(path).name.startswith(BIND_PREFIX):
        shutil.rmtree(path, ignore_errors=True)


def _quietly(action: Callable[[], Any]) -> None:
    try:
        action()
    except Exception:  # noqa: BLE001 - sweeping is best effort; a race with another sweep is fine
        pass
