"""The guest bootstrap: the first Python a hostperf VM runs (stdlib only, no site).

Started by the guest init (:file:`guest_init.sh`, or directly as PID 1 when the image
has no shell) as ``python -E -s -S -m pytest_hostperf.agent.boot`` from the directory
the VM disk builder copied this package into (``/opt/hostperf``). It

1. loads the kernel modules the disk builder listed, with ``finit_module(2)`` (so the
   image needs no kmod), and brings ``lo`` up;
2. opens the virtio-serial port :data:`~pytest_hostperf.agent.protocol.AGENT_PORT_NAME`
   and says hello (:data:`~pytest_hostperf.agent.protocol.BOOT_MARKER` + JSON);
3. reads the controller's launch message
   (:data:`~pytest_hostperf.agent.protocol.LAUNCH_PREFIX` + JSON): network, mounts,
   the agent's argv, environment and working directory;
4. mounts what it names, runs the agent with stdin/stdout on the port, and powers the
   VM off when the agent exits (so qemu ends instead of hanging).

Errors go to the console (the controller shows its tail) and, once the port is open, to
the controller as a ``fatal`` protocol event.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

from pytest_hostperf.agent import protocol

#: The directory the disk builder puts the guest files in (this package's grandparent).
GUEST_DIR: Final = Path(__file__).resolve().parent.parent.parent
#: Kernel modules to load at boot, one guest path a line, dependencies first.
MODULES_LIST: Final = "modules.list"
#: Modules loaded only when the controller asks for a network.
NETWORK_MODULES_LIST: Final = "modules-network.list"
#: The interpreter the guest init runs this module with (one line, a guest path).
PYTHON_FILE: Final = "python"

_MS_RDONLY: Final = 1
_EEXIST: Final = 17
_SYS_FINIT_MODULE: Final = 313            # x86_64
_LINUX_REBOOT_CMD_POWER_OFF: Final = 0x4321FEDC
_SIOCSIFFLAGS: Final = 0x8914
_SIOCSIFADDR: Final = 0x8916
_SIOCSIFNETMASK: Final = 0x891C
_SIOCADDRT: Final = 0x890B
_IFF_UP_RUNNING: Final = 0x1 | 0x40
_RTF_UP_GATEWAY: Final = 0x1 | 0x2
_DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BootError(Exception):
    """A step of the bootstrap failed; the message is what the controller shows."""

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)


def log(message: str) -> None:
    """One line on the VM console (the controller keeps its tail for error messages)."""
    try:
        with open("/dev/console", "w") as console:
            console.write(f"hostperf-boot: {message}\n")
    except OSError:
        pass


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def load_modules(listing: Path) -> None:
    """Load every module named in ``listing`` (already loaded or built in is fine)."""
    try:
        paths = listing.read_text().split()
    except OSError:
        return
    # The same disk also boots another kernel (the generic one of a 9p session, whose
    # initramfs has loaded what it needs): another kernel's modules would only fail.
    running = f"/lib/modules/{os.uname().release}/"
    libc = _libc()
    for path in paths:
        if path.startswith("/lib/modules/") and not path.startswith(running):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log(f"cannot open module {path}: {exc}")
            continue
        try:
            if libc.syscall(_SYS_FINIT_MODULE, fd, b"", 0) != 0:
                err = ctypes.get_errno()
                if err != _EEXIST:
                    log(f"loading {path} failed: {os.strerror(err)}")
        finally:
            os.close(fd)


def mount_flags(options: str) -> tuple[int, str]:
    """``mount(2)`` flags and data for a comma-separated option string (only ``ro`` is a flag)."""
    flags = 0
    data = []
    for option in options.split(","):
        if option == "ro":
            flags |= _MS_RDONLY
        elif option:
            data.append(option)
    return flags, ",".join(data)


def mount(source: str, target: str, fstype: str, options: str = "") -> None:
    os.makedirs(target, exist_ok=True)
    flags, data = mount_flags(options)
    if _libc().mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -t {fstype} {source} {target} ({options}): {os.strerror(err)}")


def find_port(name: str, timeout: float, sysfs: Path = Path("/sys/class/virtio-ports")) -> str:
    """The ``/dev`` node of the virtio-serial port called ``name``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            entries = sorted(os.listdir(sysfs))
        except OSError:
            entries = []
        for entry in entries:
            try:
                if (sysfs / entry / "name").read_text().strip() == name:
                    return f"/dev/{entry}"
            except OSError:
                continue
        time.sleep(0.02)
    raise BootError(f"virtio port {name!r} did not appear (is virtio_console loaded?)", 1)


def _ifreq_flags(name: bytes, flags: int) -> bytes:
    import struct

    return struct.pack("16sH14x", name, flags)


def _sockaddr(ip: str) -> bytes:
    import socket
    import struct

    return struct.pack("=H2x4s8x", socket.AF_INET, socket.inet_aton(ip))


def loopback_up() -> None:
    import fcntl
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, _ifreq_flags(b"lo", _IFF_UP_RUNNING))
    except OSError as exc:
        log(f"bringing lo up failed: {exc}")


def network_up(net: dict[str, str]) -> None:
    """eth0 with qemu user networking's fixed addresses, a default route and DNS."""
    import fcntl
    import socket
    import struct

    load_modules(GUEST_DIR / NETWORK_MODULES_LIST)
    deadline = time.monotonic() + 10
    names: list[str] = []
    while not names and time.monotonic() < deadline:
        names = [n for n in os.listdir("/sys/class/net") if n != "lo"]
        if not names:
            time.sleep(0.05)
    if not names:
        raise BootError("network requested but no network interface appeared", 5)
    ifname = names[0].encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fd = sock.fileno()
        fcntl.ioctl(fd, _SIOCSIFADDR, struct.pack("16s16s", ifname, _sockaddr(net["address"])))
        fcntl.ioctl(fd, _SIOCSIFNETMASK, struct.pack("16s16s", ifname, _sockaddr(net["netmask"])))
        fcntl.ioctl(fd, _SIOCSIFFLAGS, _ifreq_flags(ifname, _IFF_UP_RUNNING))
        # struct rtentry, native layout: pad, dst, gateway, genmask, flags, ..., dev
        route = struct.pack("@L16s16s16sHhLPhPLH", 0, _sockaddr("0.0.0.0"), _sockaddr(net["gateway"]),
                            _sockaddr("0.0.0.0"), _RTF_UP_GATEWAY, 0, 0, 0, 0, 0, 0, 0)
        fcntl.ioctl(fd, _SIOCADDRT, route)
    try:
        Path("/etc/resolv.conf").write_text(f"nameserver {net['dns']}\n")
    except OSError as exc:
        log(f"writing /etc/resolv.conf failed: {exc}")
    log(f"network: {names[0]} {net['address']}/{net['netmask']} via {net['gateway']}")


def read_line(fd: int, limit: int = protocol.MAX_LINE_BYTES) -> bytes:
    """One line from ``fd``, byte by byte (nothing read past it); b"" at end of stream."""
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise BootError(f"a line on the agent port is longer than {limit} bytes", 2)
    return bytes(buf)


def read_launch(fd: int) -> dict[str, Any]:
    """Skip anything before the controller's launch line and decode it."""
    while True:
        line = read_line(fd)
        if not line:
            raise BootError("the agent port closed before the launch message arrived", 2)
        start = line.find(protocol.LAUNCH_PREFIX)
        if start >= 0:
            launch = json.loads(line[start + len(protocol.LAUNCH_PREFIX):])
            if not isinstance(launch, dict) or not isinstance(launch.get("argv"), list):
                raise BootError(f"malformed launch message: {line[:200]!r}", 2)
            return launch


def write_all(fd: int, data: bytes) -> None:
    """Write everything: a virtio port takes at most 32 KiB per ``write(2)``."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except InterruptedError:
            continue


def relay(source: int, port: int) -> None:
    """Copy the agent's stdout to the port until it ends."""
    while True:
        try:
            data = os.read(source, 65536)
        except OSError:
            return
        if not data:
            return
        try:
            write_all(port, data)
        except OSError as exc:
            log(f"writing to the agent port failed: {exc}")
            return


def fatal(port: int, message: str) -> None:
    """Tell the controller why the guest gives up (it fails the environment with this)."""
    log(message)
    try:
        write_all(port, protocol.encode({"event": "fatal", "message": f"guest: {message}"}))
    except OSError:
        pass


def run_agent(port: int, launch: dict[str, Any]) -> int:
    """Network, mounts, then the agent itself; returns the bootstrap's exit status."""
    if launch.get("network"):
        try:
            network_up(launch["network"])
        except BootError:
            raise
        except Exception as exc:  # noqa: BLE001 - an ioctl refused: say which step failed
            raise BootError(f"network setup failed: {exc}", 5) from None
    for entry in launch.get("mounts", []):
        try:
            mount(entry["source"], entry["target"], entry["fstype"], entry.get("options", ""))
        except OSError as exc:
            raise BootError(str(exc), 3) from None
    env = {str(k): str(v) for k, v in dict(launch.get("environ", {})).items()}
    env.setdefault("PATH", _DEFAULT_PATH)
    env.setdefault("HOME", "/root")
    env.setdefault("LANG", "C.UTF-8")
    console = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY)
    log("starting agent: " + " ".join(launch["argv"]))
    # The agent's stdout goes through a pipe that relay() copies to the port: a writer
    # that does not retry partial writes would lose the rest of a large message.
    out_r, out_w = os.pipe()
    try:
        proc = subprocess.Popen(launch["argv"], stdin=port, stdout=out_w, stderr=console, env=env,
                                cwd=launch.get("cwd") or "/")
    except OSError as exc:
        raise BootError(f"cannot start the agent: {exc}", 4) from None
    os.close(out_w)
    copier = threading.Thread(target=relay, args=(out_r, port), daemon=True)
    copier.start()
    code = proc.wait()
    copier.join(5)
    log(f"agent exited with status {code}")
    return 0


def main() -> int:
    started = time.monotonic()
    load_modules(GUEST_DIR / MODULES_LIST)
    loopback_up()
    port = os.open(find_port(protocol.AGENT_PORT_NAME, 60), os.O_RDWR | os.O_NOCTTY)
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    hello = {"uptime": uptime, "boot_s": time.monotonic() - started}
    write_all(port, protocol.BOOT_MARKER + json.dumps(hello).encode() + b"\n")
    try:
        return run_agent(port, read_launch(port))
    except BootError as exc:
        fatal(port, str(exc))
        return exc.status
    except Exception as exc:  # noqa: BLE001 - anything else is also the controller's to show
        fatal(port, f"{type(exc).__name__}: {exc}")
        return 1


def power_off(status: int) -> None:
    """As PID 1, end the VM (exiting would panic the kernel); else exit with ``status``."""
    os.sync()
    if os.getpid() == 1:
        _libc().reboot(_LINUX_REBOOT_CMD_POWER_OFF)
    sys.exit(status)


if __name__ == "__main__":
    try:
        exit_status = main()
    except BaseException:  # noqa: BLE001 - whatever happens, the VM must end
        import traceback

        log("bootstrap failed: " + traceback.format_exc())
        exit_status = 1
    power_off(exit_status)
