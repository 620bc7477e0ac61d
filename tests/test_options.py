"""pytest_hostperf.options (value parsers) and pytest_hostperf.targets (marker, targets, budgets)."""

from __future__ import annotations

import argparse
import math

import pytest

from pytest_hostperf.options import (
    DEFAULT_MAX_OVERHEAD,
    parse_alpha,
    parse_budgets,
    parse_cpus,
    parse_envs,
    parse_fraction,
    parse_positive_int,
    parse_seconds,
)
from pytest_hostperf.targets import (
    MarkerError,
    MarkerSettings,
    Target,
    budget_for,
    parse_marker,
    plan_targets,
)

ATE = argparse.ArgumentTypeError


# -- parse_envs ------------------------------------------------------------------------------

def test_parse_envs_keeps_order_and_drops_duplicates():
    assert parse_envs("docker,native,qemu") == ("docker", "native", "qemu")
    assert parse_envs(" native , docker,native,,docker ") == ("native", "docker")
    assert parse_envs("ssh:box,ssh:lima-default,ssh:box") == ("ssh:box", "ssh:lima-default")
    assert parse_envs("ssh:me@host.example:22") == ("ssh:me@host.example:22",)


def test_parse_envs_unknown_env_names_it_and_lists_valid_ones():
    with pytest.raises(ATE) as info:
        parse_envs("native,podman")
    message = str(info.value)
    assert "'podman'" in message
    for valid in ("native", "docker", "qemu", "ssh:HOST"):
        assert valid in message


@pytest.mark.parametrize("text", ["ssh", "ssh:", "ssh:bad host", "ssh:a/b"])
def test_parse_envs_ssh_needs_a_host(text):
    with pytest.raises(ATE, match="needs a host"):
        parse_envs(text)


def test_parse_envs_only_ssh_takes_a_target():
    with pytest.raises(ATE, match="only ssh"):
        parse_envs("qemu:tcg")


@pytest.mark.parametrize("text", ["", " , ,"])
def test_parse_envs_empty(text):
    with pytest.raises(ATE, match="no environment"):
        parse_envs(text)


# -- parse_fraction / parse_alpha ------------------------------------------------------------

@pytest.mark.parametrize("text,value", [
    ("5%", 0.05), ("5 %", 0.05), (" 12.5% ", 0.125), ("0.05", 0.05), (0.05, 0.05), (0, 0.0), ("0", 0.0),
    ("150%", 1.5),
])
def test_parse_fraction(text, value):
    assert parse_fraction(text) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("text", ["five", "5%%", "%", "", "0.05x"])
def test_parse_fraction_not_a_number_gives_an_example(text):
    with pytest.raises(ATE) as info:
        parse_fraction(text)
    assert "not a number" in str(info.value)
    assert "5%" in str(info.value) and "0.05" in str(info.value)


@pytest.mark.parametrize("text", ["-5%", "-0.01", "1000%", "10", "nan", "inf", -1.0])
def test_parse_fraction_out_of_range(text):
    with pytest.raises(ATE) as info:
        parse_fraction(text)
    assert "out of range" in str(info.value) and "5%" in str(info.value)


def test_parse_fraction_names_what():
    with pytest.raises(ATE, match=r"^threshold 'x'"):
        parse_fraction("x", what="threshold")


@pytest.mark.parametrize("text,value", [("0.01", 0.01), ("0.05", 0.05), ("1e-3", 0.001), ("0.499", 0.499)])
def test_parse_alpha(text, value):
    assert parse_alpha(text) == value


@pytest.mark.parametrize("text", ["0", "0.5", "1", "-0.01", "nan"])
def test_parse_alpha_out_of_range(text):
    with pytest.raises(ATE, match="between 0 and 0.5"):
        parse_alpha(text)


def test_parse_alpha_not_a_number():
    with pytest.raises(ATE, match="not a number.*--hostperf-alpha=0.01"):
        parse_alpha("1%")


# -- parse_positive_int / parse_seconds ------------------------------------------------------

def test_parse_positive_int():
    assert parse_positive_int("3", "rounds") == 3
    with pytest.raises(ATE, match="rounds 'x' is not a whole number"):
        parse_positive_int("x", "rounds")
    with pytest.raises(ATE, match="rounds must be at least 1, got 0"):
        parse_positive_int("0", "rounds")
    with pytest.raises(ATE, match="not a whole number"):
        parse_positive_int("1.5", "rounds")


def test_parse_seconds():
    assert parse_seconds("300") == 300.0
    assert parse_seconds("2.5s") == 2.5
    with pytest.raises(ATE, match="not a number of seconds"):
        parse_seconds("5m")
    with pytest.raises(ATE, match="must be positive"):
        parse_seconds("0")


def test_parse_cpus():
    assert parse_cpus("0.5") == 0.5
    assert parse_cpus("2") == 2.0
    with pytest.raises(ATE, match="not a number; for example 0.5"):
        parse_cpus("two")
    with pytest.raises(ATE, match="must be positive"):
        parse_cpus("-1")


@pytest.mark.parametrize("parse", [parse_seconds, parse_cpus])
def test_nan_is_rejected(parse):
    with pytest.raises(ATE):
        parse("nan")


# -- parse_budgets ---------------------------------------------------------------------------

def test_parse_budgets_string():
    assert parse_budgets("docker=1.10,docker-bind=1.5,qemu:tcg=20") == {
        "docker": 1.10, "docker-bind": 1.5, "qemu:tcg": 20.0}


def test_parse_budgets_whitespace_newlines_and_x_suffix():
    assert parse_budgets(" docker = 1.2x ,\nqemu:kvm=2\n ssh:my-host=1.3 ,") == {
        "docker": 1.2, "qemu:kvm": 2.0, "ssh:my-host": 1.3}


def test_parse_budgets_mapping():
    assert parse_budgets({"docker-volume": 1.25, "qemu": "3", "native": 1}) == {
        "docker-volume": 1.25, "qemu": 3.0, "native": 1.0}
    assert parse_budgets({}) == {}
    assert parse_budgets("") == {}


@pytest.mark.parametrize("text", ["podman=1.2", "=1.2", "vm-bind=2", "Docker=1.2"])
def test_parse_budgets_bad_key(text):
    with pytest.raises(ATE) as info:
        parse_budgets(text)
    assert "unknown environment" in str(info.value)
    assert "docker=1.10" in str(info.value)  # an example of the right form


@pytest.mark.parametrize("text", ["docker", "docker=", "docker=fast", "docker=1.2=3"])
def test_parse_budgets_bad_value(text):
    with pytest.raises(ATE) as info:
        parse_budgets(text)
    assert "not a ratio" in str(info.value) and "docker=1.25" in str(info.value)


@pytest.mark.parametrize("budgets", ["docker=0.9", {"qemu": 0.5}, "docker=-2"])
def test_parse_budgets_below_one(budgets):
    with pytest.raises(ATE, match="below 1.0x"):
        parse_budgets(budgets)


def test_parse_budgets_rejects_nan():
    with pytest.raises(ATE):
        parse_budgets("docker=nan")


def test_parse_budgets_rejects_unknown_mount():
    with pytest.raises(ATE):
        parse_budgets("docker-bnd=1.2")


def test_default_budgets_are_valid_budgets():
    assert parse_budgets(dict(DEFAULT_MAX_OVERHEAD)) == dict(DEFAULT_MAX_OVERHEAD)


# -- parse_marker ----------------------------------------------------------------------------

def test_parse_marker_empty():
    assert parse_marker({}) == MarkerSettings(None, None, None, None)


def test_parse_marker_unknown_key_is_named():
    with pytest.raises(MarkerError) as info:
        parse_marker({"envs": ["native"], "toleranse": "5%", "budget": 2})
    message = str(info.value)
    assert "budget" in message and "toleranse" in message
    assert "allowed: envs, mounts, max_overhead, tolerance" in message


def test_parse_marker_positional_args_rejected():
    with pytest.raises(MarkerError, match="keyword arguments only"):
        parse_marker({}, args=("docker",))


def test_parse_marker_envs_str_or_list():
    assert parse_marker({"envs": "docker"}).envs == ("docker",)
    assert parse_marker({"envs": ["native", "docker", "native"]}).envs == ("native", "docker")
    assert parse_marker({"envs": ("ssh:box",)}).envs == ("ssh:box",)


@pytest.mark.parametrize("envs,match", [
    (["native", "vbox"], "vbox"),
    (["native", 3], "list of names"),
    (3, "list of names"),
    ({"docker"}, "list of names"),
])
def test_parse_marker_bad_envs(envs, match):
    with pytest.raises(MarkerError, match=match):
        parse_marker({"envs": envs})


def test_parse_marker_mounts():
    assert parse_marker({"mounts": "bind"}).mounts == ("bind",)
    assert parse_marker({"mounts": ["bind", "guest", "tmpfs"]}).mounts == ("bind", "guest", "tmpfs")
    with pytest.raises(MarkerError) as info:
        parse_marker({"mounts": ["bind", "nfs"]})
    assert "nfs" in str(info.value) and "bind" in str(info.value).split("known:")[1]
    with pytest.raises(MarkerError, match="list of names"):
        parse_marker({"mounts": 1})


def test_parse_marker_max_overhead_float_or_mapping():
    assert parse_marker({"max_overhead": 1.2}).max_overhead == {"docker": 1.2, "qemu": 1.2, "docker@qemu": 1.2,
                                                                "ssh": 1.2}
    assert parse_marker({"max_overhead": 2}).max_overhead == {"docker": 2.0, "qemu": 2.0, "docker@qemu": 2.0,
                                                              "ssh": 2.0}
    assert parse_marker({"max_overhead": {"docker-bind": 1.5, "qemu:tcg": "30"}}).max_overhead == {
        "docker-bind": 1.5, "qemu:tcg": 30.0}
    assert parse_marker({"max_overhead": "docker=1.1"}).max_overhead == {"docker": 1.1}
    with pytest.raises(MarkerError, match="unknown environment"):
        parse_marker({"max_overhead": {"vm": 2}})
    with pytest.raises(MarkerError, match="below 1.0x"):
        parse_marker({"max_overhead": {"docker": 0.5}})


def test_parse_marker_numeric_max_overhead_is_validated_like_a_mapping():
    with pytest.raises(MarkerError, match="below 1.0x"):
        parse_marker({"max_overhead": 0.5})


def test_parse_marker_tolerance():
    assert parse_marker({"tolerance": "10%"}).tolerance == pytest.approx(0.10)
    assert parse_marker({"tolerance": 0.2}).tolerance == pytest.approx(0.2)
    with pytest.raises(MarkerError, match="not a number"):
        parse_marker({"tolerance": "lots"})
    with pytest.raises(MarkerError, match="out of range"):
        parse_marker({"tolerance": -0.1})


# -- Target / plan_targets -------------------------------------------------------------------

def test_target_ids():
    assert Target("native", None).id == "native"
    assert Target("native", "host").id == "native"
    assert Target("docker", None).id == "docker"
    assert Target("docker", "bind").id == "docker-bind"
    assert Target("qemu", "guest").id == "qemu-guest"
    assert Target("ssh:box", None).id == "ssh:box"
    assert Target("ssh:box", "remote").id == "ssh:box"
    assert Target("ssh:box", "remote").kind == "ssh"
    assert str(Target("docker", "tmpfs")) == "docker-tmpfs"


def test_plan_native_only():
    assert plan_targets(["native"], MarkerSettings(), uses_dir=False) == [Target("native", None)]
    assert plan_targets(["native"], MarkerSettings(), uses_dir=True) == [Target("native", "host")]


def test_plan_docker_without_dir_has_no_mount_axis():
    targets = plan_targets(["native", "docker"], MarkerSettings(), uses_dir=False)
    assert [t.id for t in targets] == ["native", "docker"]
    assert all(t.mount is None for t in targets)


def test_plan_docker_with_dir_has_mount_axis():
    targets = plan_targets(["native", "docker", "qemu", "ssh:box"], MarkerSettings(), uses_dir=True)
    assert [t.id for t in targets] == [
        "native",
        "docker-bind", "docker-volume", "docker-tmpfs", "docker-layer",
        "qemu-guest", "qemu-share", "qemu-tmpfs",
        "ssh:box",
    ]
    assert targets[0] == Target("native", "host")
    assert targets[-1] == Target("ssh:box", "remote")


def test_plan_marker_narrows_envs():
    settings = parse_marker({"envs": ["docker", "ssh:box"]})
    targets = plan_targets(["native", "docker", "qemu", "ssh:box", "ssh:other"], settings, uses_dir=False)
    assert [t.id for t in targets] == ["docker", "ssh:box"]
    # the marker cannot add an environment the session does not run
    assert plan_targets(["native"], parse_marker({"envs": "docker"}), uses_dir=False) == []


def test_plan_marker_narrows_mounts_default_mount_for_others():
    settings = parse_marker({"mounts": ["bind", "tmpfs"]})
    targets = plan_targets(["native", "docker", "qemu"], settings, uses_dir=True)
    # native offers neither: still runs on its default mount; qemu has tmpfs only.
    assert [t.id for t in targets] == ["native", "docker-bind", "docker-tmpfs", "qemu-tmpfs"]
    # an explicit mounts list gives a mount axis even if the fixture is not used
    targets = plan_targets(["docker"], parse_marker({"mounts": "volume"}), uses_dir=False)
    assert targets == [Target("docker", "volume")]


def test_plan_marker_envs_and_mounts_together():
    settings = parse_marker({"envs": "docker", "mounts": ["layer", "bind"]})
    targets = plan_targets(["native", "docker"], settings, uses_dir=True)
    assert [t.id for t in targets] == ["docker-bind", "docker-layer"]  # MOUNTS order, not marker order


# -- budget_for ------------------------------------------------------------------------------

def test_budget_for_precedence_within_a_source():
    source = {"docker-bind": 1.3, "docker": 1.1, "qemu:tcg": 30.0, "qemu": 2.5,
              "ssh:box": 1.7, "ssh": 1.9}
    assert budget_for(Target("docker", "bind"), None, source) == 1.3    # target id
    assert budget_for(Target("docker", "volume"), None, source) == 1.1  # env
    assert budget_for(Target("docker", None), None, source) == 1.1
    assert budget_for(Target("qemu", "guest"), "tcg", source) == 30.0   # kind:accelerator
    assert budget_for(Target("qemu", "guest"), "kvm", source) == 2.5    # kind
    assert budget_for(Target("qemu", None), None, source) == 2.5
    assert budget_for(Target("ssh:box", "remote"), None, source) == 1.7  # env (== target id)
    assert budget_for(Target("ssh:other", None), None, source) == 1.9   # kind
    assert budget_for(Target("native", None), None, source) is None


def test_budget_for_target_id_beats_accelerator():
    source = {"qemu-guest": 5.0, "qemu:tcg": 30.0, "qemu": 2.0}
    assert budget_for(Target("qemu", "guest"), "tcg", source) == 5.0
    assert budget_for(Target("qemu", "share"), "tcg", source) == 30.0


def test_budget_for_first_source_wins():
    marker = {"docker": 1.2}
    config = {"docker-bind": 1.5, "qemu": 3.0}
    assert budget_for(Target("docker", "bind"), None, marker, config, DEFAULT_MAX_OVERHEAD) == 1.2
    assert budget_for(Target("qemu", "guest"), "tcg", marker, config, DEFAULT_MAX_OVERHEAD) == 3.0
    assert budget_for(Target("qemu", "guest"), "tcg", None, {}, DEFAULT_MAX_OVERHEAD) == 40.0
    assert budget_for(Target("qemu", "guest"), "kvm", None, DEFAULT_MAX_OVERHEAD) == 2.0
    assert budget_for(Target("docker", "tmpfs"), None, None, DEFAULT_MAX_OVERHEAD) == 1.5
    assert budget_for(Target("native", None), None, marker, config, DEFAULT_MAX_OVERHEAD) is None
    assert budget_for(Target("docker", None), None) is None


def test_budget_for_marker_number_reaches_every_kind():
    overhead = parse_marker({"max_overhead": 1.25}).max_overhead
    for target, accel in [(Target("docker", "bind"), None), (Target("qemu", None), "tcg"),
                          (Target("ssh:box", None), None)]:
        assert budget_for(target, accel, overhead, DEFAULT_MAX_OVERHEAD) == 1.25
    assert not math.isnan(budget_for(Target("docker", None), None, DEFAULT_MAX_OVERHEAD))
