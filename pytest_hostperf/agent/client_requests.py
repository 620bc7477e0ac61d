"""Valgrind client requests and CPUID from pure Python: a few bytes of machine code.

Callgrind is steered from inside the counted process by *client requests*: a special
instruction sequence that does nothing on a real CPU and that valgrind's translator
recognises (``valgrind.h``). C programs include the header; we have no compiler on a
user's machine, so the same x86-64 bytes are written into an executable anonymous
page and called through :mod:`ctypes`. Natively the sequence returns its default
argument, so asking "am I under valgrind?" is safe anywhere.

Only x86-64 is supported: the bytes are checked against ``valgrind.h`` 3.19 compiled
with gcc (``objdump -d``), which cannot be done for other architectures on our
machines. Elsewhere :func:`unsupported_reason` says so and counting falls back to time.

Stdlib only: this module runs inside every environment.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
from typing import Final

#: ``mov rax, rdi; mov rdx, rsi``, the four ``rol rdi`` of valgrind's special-instruction
#: preamble (3+13+61+51 = 128 bits, so rdi is unchanged on a real CPU), ``xchg rbx, rbx``
#: (= "client request: rdx = request(rax)"), ``mov rax, rdx; ret``. As a C function:
#: ``uint64 request(uint64 *args, uint64 default)``.
_AMD64_CLIENT_REQUEST: Final = bytes.fromhex(
    "4889f8" "4889f2" "48c1c703" "48c1c70d" "48c1c73d" "48c1c733" "4887db" "4889d0" "c3")

#: ``void cpuid(uint32 leaf, uint32 subleaf, uint32 out[4])``: push rbx (callee-saved,
#: cpuid clobbers it); r8 = out; eax = leaf; ecx = subleaf; cpuid; store eax, ebx,
#: ecx, edx; pop rbx; ret.
_AMD64_CPUID: Final = bytes.fromhex(
    "53" "4989d0" "89f8" "89f1" "0fa2" "418900" "41895804" "41894808" "4189500c" "5b" "c3")

_RUNNING_ON_VALGRIND: Final = 0x1001
#: ``VG_USERREQ_TOOL_BASE('C', 'T')`` and callgrind's requests in the order of callgrind.h.
_CALLGRIND_BASE: Final = (ord("C") << 24) | (ord("T") << 16)
DUMP_STATS: Final = _CALLGRIND_BASE
ZERO_STATS: Final = _CALLGRIND_BASE + 1
TOGGLE_COLLECT: Final = _CALLGRIND_BASE + 2
DUMP_STATS_AT: Final = _CALLGRIND_BASE + 3
START_INSTRUMENTATION: Final = _CALLGRIND_BASE + 4
STOP_INSTRUMENTATION: Final = _CALLGRIND_BASE + 5

_Args = ctypes.c_uint64 * 6


def unsupported_reason() -> str | None:
    """Why client requests cannot be issued from this process, or None when they can."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return (f"instruction counting supports x86-64 only (this interpreter runs on {machine}); "
                f"the valgrind client-request helper has no verified {machine} encoding yet")
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        return "instruction counting needs a 64-bit interpreter (this one is 32-bit)"
    return None


class MachineCode:
    """Executable copies of the helpers above, callable through ctypes.

    The page is mapped read+write+execute once per process; a hardened kernel (PaX
    MPROTECT, SELinux ``execmem`` denied) refuses that, and :meth:`load` then raises
    :class:`OSError` with the reason, which the caller reports as "no counting here".
    """

    def __init__(self) -> None:
        reason = unsupported_reason()
        if reason:
            raise OSError(reason)
        try:
            self._page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot map an executable page for the valgrind client-request helper ({exc}); "
                          "a hardened kernel or security policy forbids it") from exc
        self._page.write(_AMD64_CLIENT_REQUEST.ljust(64, b"\xcc") + _AMD64_CPUID)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
        request_type = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64), ctypes.c_uint64)
        cpuid_type = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))
        self._request = request_type(base)
        self._cpuid = cpuid_type(base + 64)
        # Argument blocks built once: the toggle around every counted call must cost the
        # same few instructions each time (they cancel against the no-op arm).
        self._toggle_args = _Args(TOGGLE_COLLECT, 0, 0, 0, 0, 0)

    def request(self, code: int, arg1: int = 0, default: int = 0) -> int:
        """Issue one client request; natively the answer is ``default``."""
        return int(self._request(_Args(code, arg1, 0, 0, 0, 0), default))

    def running_on_valgrind(self) -> int:
        """How many valgrinds this process runs under (0 natively)."""
        return self.request(_RUNNING_ON_VALGRIND)

    def toggle_collect(self) -> None:
        """Flip callgrind's collection state (cheapest request: prebuilt arguments)."""
        self._request(self._toggle_args, 0)

    def dump_stats_at(self, label: bytes) -> None:
        """Write callgrind's costs since the last dump/zero to a new dump file, then zero them."""
        text = ctypes.create_string_buffer(label)
        self.request(DUMP_STATS_AT, ctypes.addressof(text))

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        """``(eax, ebx, ecx, edx)`` of CPUID as this process sees it (valgrind's CPU under valgrind)."""
        out = (ctypes.c_uint32 * 4)()
        self._cpuid(leaf, subleaf, out)
        return out[0], out[1], out[2], out[3]


def isa_level(code: MachineCode) -> str:
    """The x86-64 micro-architecture level the CPU offers: ``x86-64-v1`` .. ``x86-64-v4``.

    glibc (string functions), CPython's build and native extensions pick code paths by
    these features, so two machines count the same instructions only at the same level.
    Under valgrind this is the *simulated* CPU's level (valgrind 3.19 has no AVX-512), so
    it is the one that matters for counts. Levels as defined by the x86-64 psABI.
    """
    max_leaf = code.cpuid(0)[0]
    ecx1 = code.cpuid(1)[2]
    ebx7 = code.cpuid(7)[1] if max_leaf >= 7 else 0
    ecx_ext = code.cpuid(0x80000001)[2] if code.cpuid(0x80000000)[0] >= 0x80000001 else 0

    def bits(value: int, *positions: int) -> bool:
        return all(value >> p & 1 for p in positions)

    # v2: CX16, SSE3, SSSE3, SSE4.1, SSE4.2, POPCNT (leaf 1 ecx) and LAHF-SAHF (ext ecx 0).
    v2 = bits(ecx1, 0, 9, 13, 19, 20, 23) and bits(ecx_ext, 0)
    # v3: AVX, FMA, F16C, MOVBE, OSXSAVE (leaf 1 ecx), AVX2, BMI1, BMI2 (leaf 7 ebx), LZCNT (ext ecx 5).
    v3 = v2 and bits(ecx1, 12, 22, 27, 28, 29) and bits(ebx7, 3, 5, 8) and bits(ecx_ext, 5)
    # v4: AVX512F, DQ, CD, BW, VL (leaf 7 ebx).
    v4 = v3 and bits(ebx7, 16, 17, 28, 30, 31)
    return "x86-64-v4" if v4 else "x86-64-v3" if v3 else "x86-64-v2" if v2 else "x86-64-v1"
