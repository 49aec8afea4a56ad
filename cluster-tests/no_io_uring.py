#!/usr/bin/env python3
"""Runs a command with io_uring_setup(2) refused with EPERM, as Docker's or
another runtime's seccomp profile, or kernel.io_uring_disabled = 2, refuses
it: the tests use it to check that a node falls back to epoll.

Usage: no_io_uring.py COMMAND [ARG...]

The seccomp filter needs no privilege (no_new_privs is set first) and is
inherited through execve and by every thread the command starts.
"""
import ctypes
import os
import platform
import struct
import sys

# io_uring_setup has the same number on every architecture that has it.
IO_URING_SETUP = 425
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
# AUDIT_ARCH_* of the architectures where the number above holds.
ARCHES = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# Classic BPF opcodes.
LD_W_ABS = 0x20
JEQ_K = 0x15
RET_K = 0x06


def insn(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: no_io_uring.py COMMAND [ARG...]")
    arch = ARCHES.get(platform.machine())
    if arch is None:
        sys.exit(f"no_io_uring.py: unsupported architecture {platform.machine()}")
    # seccomp_data: nr at offset 0, arch at 4. Another architecture's
    # calls (none expected) pass unfiltered.
    program = b"".join(
        [
            insn(LD_W_ABS, 0, 0, 4),
            insn(JEQ_K, 0, 3, arch),
            insn(LD_W_ABS, 0, 0, 0),
            insn(JEQ_K, 0, 1, IO_URING_SETUP),
            insn(RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),
            insn(RET_K, 0, 0, SECCOMP_RET_ALLOW),
        ]
    )
    buf = ctypes.create_string_buffer(program, len(program))
    prog = SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        sys.exit(f"no_io_uring.py: PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        sys.exit(f"no_io_uring.py: PR_SET_SECCOMP: {os.strerror(ctypes.get_errno())}")
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
