"""A seccomp filter for sandboxed programs: no memfd, no System V shared memory, no foreign syscall ABIs.

Why: memory in a memfd or a System V segment is not mapped, so RLIMIT_AS does not count it (128 memfds held 1.9 GB
under a 1 GB limit); a memory cgroup does count it, but a cgroup is not always available, and the filter makes the
program behave the same with or without one. The other ABIs (i386 `int 0x80`, x32) are refused so that the
numbers checked here cannot be bypassed through another syscall table. Refused calls fail with EPERM.

Stdlib only: imported by `_sandbox_launch.py` (run with `python -I -S`). The BPF program is built by hand (a few
instructions) because libseccomp's Python binding is not on PyPI.
"""
import ctypes
import os
import struct

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
EPERM = 1
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x06
X32_SYSCALL_BIT = 0x40000000

# machine -> (AUDIT_ARCH value, refused syscall numbers: memfd_create, memfd_secret, shmget)
_ARCHES = {
    "x86_64": (0xC000003E, (319, 447, 29)),
    "aarch64": (0xC00000B7, (279, 447, 194)),
}


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def program() -> bytes | None:
    """The filter for this machine, or None where its syscall numbers are not known here."""
    arch = _ARCHES.get(os.uname().machine)
    if arch is None:
        return None
    audit_arch, refused = arch
    deny = SECCOMP_RET_ERRNO | EPERM
    n = len(refused)
    insns = [
        _insn(BPF_LD_W_ABS, 0, 0, 4),                      # A = seccomp_data.arch
        _insn(BPF_JEQ_K, 1, 0, audit_arch),                # our ABI: skip the next instruction
        _insn(BPF_RET_K, 0, 0, deny),                      # another ABI (i386 via int 0x80): refuse
        _insn(BPF_LD_W_ABS, 0, 0, 0),                      # A = seccomp_data.nr
        _insn(BPF_JGE_K, n + 1, 0, X32_SYSCALL_BIT),       # x32 ABI on x86_64: jump to deny
    ]
    for i, nr in enumerate(refused):                       # each refused number jumps to the deny at the end
        insns.append(_insn(BPF_JEQ_K, n - i, 0, nr))
    insns.append(_insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    insns.append(_insn(BPF_RET_K, 0, 0, deny))
    return b"".join(insns)


def install(libc) -> bool:
    """Set no_new_privs and load the filter into this process (inherited by children and across exec).
    Returns False where the machine is not supported; raises OSError if the kernel refuses."""
    prog = program()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if prog is None:
        return False
    buf = ctypes.create_string_buffer(prog, len(prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
    return True
