"""Who owns an output file: root's lock, taken before anything is truncated; disk space reserved first.

:class:`hpcpar.Output` never destroys a file another process is writing. Before
HDF5 opens the file, root opens it itself (``O_RDWR | O_CREAT``, never
``O_TRUNC``) and takes an *open file description* lock (Linux ``F_OFD_SETLK``,
elsewhere a POSIX ``lockf`` lock) on it, which it holds until the Output is
closed; then it checks, with a ``flock`` probe, that no other program holds
HDF5's own lock on it (h5py, ``h5dump -w``, another serial hpcpar job). Only
then does HDF5 open and, for ``mode="w"``, truncate the file. The OFD lock does
not conflict with HDF5's ``flock`` in the same process and survives the open and
close of other descriptors of the file (the serial path's token passing).

:func:`reserve` makes the file system allocate the blocks a write is about to
use (``posix_fallocate``), so a full disk or a file-size limit is found before
HDF5 writes anything, and the file stays consistent. On the MPI-IO path root
reserves with :func:`allocate` (``fallocate(2)`` itself, never glibc's emulation,
which would write a byte per block), or checks the free space with
:func:`check_room` where the file system cannot; :func:`give_back` frees the
blocks of a write that failed all the same, so that HDF5 has room for the
metadata it writes when the file is closed.

Everything here is **local** (root calls it); nothing communicates.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import sys

__all__ = ["allocate", "check_room", "FileLock", "give_back", "make_room", "reserve", "trim", "hosted",
           "RESERVE_MARGIN", "INCOMPLETE"]

#: Attribute of a dataset whose data is being written; left in place when the write fails.
INCOMPLETE = "hpcpar_incomplete"

#: Bytes reserved beyond a write's data for the metadata HDF5 adds with it.
RESERVE_MARGIN = 256 * 2**10

_OFD = getattr(fcntl, "F_OFD_SETLK", None)


def _ofd_lock(fd: int) -> None:
    """An exclusive whole-file lock owned by the open file description ``fd``."""
    if _OFD is None:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    # struct flock {short l_type; short l_whence; off_t l_start; off_t l_len; pid_t l_pid;}
    arg = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    fcntl.fcntl(fd, _OFD, arg)


def _busy(exc: OSError) -> bool:
    return exc.errno in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK)


class FileLock:
    """Root's hold on an output file while an :class:`hpcpar.Output` has it open. **Local**.

    Args:
        path: the file.
        exclusive_create: fail when the file exists (``mode="w-"``).

    Attributes:
        created: whether this lock created the (empty) file.

    Raises:
        FileExistsError: with ``exclusive_create``, when the file exists.
        BlockingIOError: when another process holds the file (message says what to do).
        OSError: when the file cannot be opened.
    """

    def __init__(self, path: str, *, exclusive_create: bool = False):
        self.path = path
        self.created = False
        flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if exclusive_create else 0)
        if not exclusive_create:
            try:
                self.fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                self.fd = os.open(path, flags | os.O_EXCL, 0o666)
                self.created = True
        else:
            self.fd = os.open(path, flags, 0o666)
            self.created = True
        try:
            self._take()
        except BaseException:
            os.close(self.fd)
            raise

    def _take(self) -> None:
        held = (f"{self.path} is open for writing in another process (another job, h5py, "
                "an HDF5 tool); nothing was changed. Wait for it to finish, or write to "
                "another path")
        try:
            _ofd_lock(self.fd)
        except OSError as exc:
            if _busy(exc):
                raise BlockingIOError(exc.errno, held) from None
            if exc.errno not in (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise  # file systems without locks: rely on the probe below
        probe = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(probe, fcntl.LOCK_UN)
        except OSError as exc:
            if _busy(exc):
                raise BlockingIOError(exc.errno, held) from None
        finally:
            os.close(probe)

    def keep_for_mpi_io(self) -> None:
        """Trade the record lock for a ``flock`` on the whole file. **Local** (root).

        MPI-IO (ROMIO) takes record locks on byte ranges while it writes; a record lock
        held here would block the other ranks. A ``flock`` does not meet those (on
        local file systems), and another writer still finds the file held (HDF5's own
        file lock, and :class:`FileLock`'s probe, are ``flock`` locks).
        """
        held = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(held)
            self.release()  # cannot hold it this way: HDF5's own lock guards the open file
            return
        old, self.fd = self.fd, held
        os.close(old)

    def release(self) -> None:
        """Drop the lock (closing the descriptor); safe to call twice."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def reserve(lock: FileLock, end: int) -> None:
    """Make sure the first ``end`` bytes of the locked file have disk blocks. **Local**.

    Raises:
        OSError: ``ENOSPC`` (disk or quota full), ``EFBIG`` (file-size limit), ...,
            with a message naming the file and the size; nothing was written.
    """
    if end <= 0 or lock.fd < 0:
        return
    try:
        os.posix_fallocate(lock.fd, 0, end)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return  # no fallocate here: the write itself will find out
        raise OSError(exc.errno, f"cannot reserve {end:,} bytes for {lock.path}: "
                      f"{os.strerror(exc.errno or 0)}; free space (or raise the limit) and write "
                      "again; what was written before is kept") from None


def check_room(path: str, nbytes: int) -> None:
    """Make sure the file system of ``path`` has ``nbytes`` free, without touching the file.
    **Local**. The MPI-IO path's form of :func:`reserve`: HDF5's mpio driver sets the file's
    size collectively at close, so no single rank may change it.

    Raises:
        OSError: ``ENOSPC``, with the same message as :func:`reserve`.
    """
    if nbytes <= 0:
        return
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
    except OSError:
        return  # cannot tell: the write itself will find out
    if st.f_bavail * st.f_frsize < nbytes:
        raise OSError(errno.ENOSPC, f"cannot reserve {nbytes:,} bytes for {path}: "
                      f"{os.strerror(errno.ENOSPC)}; free space (or raise the limit) and write "
                      "again; what was written before is kept")


#: fallocate(2) modes: free a byte range's blocks, keeping the file's size.
_PUNCH_HOLE, _KEEP_SIZE = 0x02, 0x01


def _fallocate(path: str, mode: int, offset: int, length: int) -> int:
    """``fallocate(2)`` on ``path``: 0, or the errno (``EOPNOTSUPP`` off Linux). **Local**."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return errno.EOPNOTSUPP
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return errno.EOPNOTSUPP
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fd = os.open(path, os.O_WRONLY)
    try:
        return 0 if fn(fd, mode, offset, length) == 0 else ctypes.get_errno()
    finally:
        os.close(fd)


def allocate(path: str, nbytes: int) -> bool:
    """Make the file system allocate ``nbytes`` past the current end of ``path``. **Local**.

    The MPI-IO path's form of :func:`reserve`: only ``fallocate(2)`` itself, so a file
    system without it costs nothing (False: then use :func:`check_room`). The file's
    size stays HDF5's (``FALLOC_FL_KEEP_SIZE``): calls without a write between them
    reserve the same blocks again, and :func:`trim` frees what is left after the close.

    Raises:
        OSError: ``ENOSPC`` (disk or quota full), ``EFBIG``, ..., with the message of
            :func:`reserve`; the blocks a failed call took are given back.
    """
    if nbytes <= 0:
        return True
    end = os.stat(path).st_size
    err = _fallocate(path, _KEEP_SIZE, end, nbytes)
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    if err:
        _fallocate(path, _PUNCH_HOLE | _KEEP_SIZE, end, nbytes)  # what it took before failing
        raise OSError(err, f"cannot reserve {end + nbytes:,} bytes for {path}: {os.strerror(err)}; "
                      "free space (or raise the limit) and write again; what was written before is kept")
    return True


def make_room(path: str, nbytes: int) -> None:
    """Root's reservation on the MPI-IO path: :func:`allocate`, or :func:`check_room` on a
    file system that cannot allocate. **Local**. Raises as they do."""
    if not allocate(path, nbytes):
        check_room(path, nbytes)


def give_back(path: str, offset: int, length: int) -> bool:
    """Free the disk blocks of ``length`` bytes of ``path`` from ``offset``, keeping its size.
    **Local**; best effort: whether the blocks were freed (``fallocate(2)`` with
    ``FALLOC_FL_PUNCH_HOLE``; not every file system has it). The range reads as zeros.
    """
    return offset >= 0 and length > 0 and _fallocate(path, _PUNCH_HOLE | _KEEP_SIZE, offset, length) == 0


#: The HDF5 superblock's signature (at offset 0 of a file without a user block).
_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def trim(path: str) -> None:
    """Give back what :func:`reserve` and :func:`allocate` allocated beyond the end of a
    closed HDF5 file. **Local**.

    Reads the end-of-file address from the superblock and truncates the file to
    it (a file it cannot parse, e.g. one with a user block, keeps its size), then
    frees the blocks allocated past its end.
    """
    _trim_to_eoa(path)
    st = os.stat(path)
    if st.st_blocks * 512 > st.st_size:  # possibly blocks past the end
        os.truncate(path, st.st_size)  # frees them on ext4, XFS, ...
        give_back(path, st.st_size, st.st_blocks * 512)  # ... and on tmpfs


def _trim_to_eoa(path: str) -> None:
    with open(path, "rb+") as f:
        head = f.read(96)
        if not head.startswith(_SIGNATURE) or len(head) < 16:
            return
        version = head[8]
        if version in (0, 1):
            size, at = head[13], 24 + (4 if version == 1 else 0)
        elif version in (2, 3):
            size, at = head[9], 12
        else:
            return
        if size not in (2, 4, 8) or len(head) < at + 3 * size:
            return
        base = int.from_bytes(head[at:at + size], "little")
        end = base + int.from_bytes(head[at + 2 * size:at + 3 * size], "little")
        if 0 < end < os.fstat(f.fileno()).st_size:
            os.ftruncate(f.fileno(), end)


def hosted(problem: tuple[str, str] | None) -> tuple[str, str] | None:
    """An I/O problem with this host's name added (usage problems stay as they are). **Local**."""
    if problem is None or problem[0] in ("ValueError", "KeyError", "TypeError"):
        return problem
    return problem[0], f"{problem[1]} (on host {socket.gethostname()})"
