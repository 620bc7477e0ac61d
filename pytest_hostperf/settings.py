"""The validated configuration of a hostperf session (from options and ini keys)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # settings stay importable without the environments package
    from pytest_hostperf.revision import Revision


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the session needs from the command line and ini, already validated."""

    project_dir: Path
    envs: tuple[str, ...]
    baselines_dir: Path
    save: bool
    tolerance: float
    alpha: float
    require: tuple[str, ...]
    max_overhead: Mapping[str, float]
    timeout_s: float
    history: int
    session_noise: float
    blocks: int
    confirm: int = 2          # re-measurements of a regression before it is reported
    strict: bool = False      # an item without a baseline fails instead of passing ungated
    keep_aslr: bool = False   # native agents keep address-space randomisation (default: setarch -R)
    #: --hostperf-accept: node-id globs whose failing verdicts are accepted into the baseline
    accept: tuple[str, ...] = ()
    accept_reason: str | None = None
    image: str | None = None
    vm_image: str | None = None
    network: bool = False
    requirements: tuple[str, ...] = ()          # hostperf_requirements: added to the image's (or replace pins)
    requirements_exclude: tuple[str, ...] = ()  # hostperf_requirements_exclude: names/globs left out
    json_path: Path | None = None
    markdown_path: Path | None = None
    html_path: Path | None = None
    ssh_config: Path | None = None
    docker_cpus: float | None = None
    ssh_python: str | None = None
    docker_pids: int | None = None           # processes in a container (None: 512, 0: no limit)
    docker_memory: str | None = None         # "2g", "50%" of the engine's memory, "0" (None: 50%)
    docker_tmpfs_size: str | None = None     # size of the tmpfs mount, same forms (None: 25%)
    #: --hostperf-mounts: the mounts of every test using hostperf_dir (None: each kind's defaults)
    mounts: tuple[str, ...] | None = None
    #: The ratio to native from pairs (run.paired): seconds of halves per side and
    #: comparison of a test (0: interleaved blocks instead), and the length of one half.
    pair_budget_s: float = 0.4
    pair_round_s: float = 0.002
    #: --hostperf-against: the git revision the working tree is compared with, in pairs.
    against: Revision | None = None
    measure: tuple[str, ...] = ("time",)     # --hostperf-measure: "time", "instructions"
    instructions_tolerance: float = 0.01     # a count beyond this change is a regression/improvement

    @property
    def counts_instructions(self) -> bool:
        return "instructions" in self.measure
