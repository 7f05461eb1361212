#!/usr/bin/env bash
# tests/env/parallel-hdf5.sh — build a Python virtual environment with REAL
# parallel HDF5 for hpcpar's second test leg (`make test-parallel-hdf5`).
#
# Usage:  bash tests/env/parallel-hdf5.sh [VENV_DIR]     (default: <repo>/.venv-phdf5)
#
# What it does, on Debian 12 (bookworm):
#   1. apt: libhdf5-mpich-dev hdf5-tools mpich pkg-config (skipped when already
#      installed; `apt-get update` only when a package has no install candidate
#      or the first install attempt fails).
#   2. venv: python3 -m venv, current pip/setuptools/wheel, numpy (2.x), the
#      build tools Cython + pkgconfig, then mpi4py and h5py compiled from source
#      against Debian's MPICH and Debian's parallel HDF5 (hdf5-mpich).
#      Skipped when VENV_DIR already imports h5py + mpi4py with h5py.get_config().mpi.
#   3. verify (always): h5py is MPI-enabled, mpi4py and h5py use the same (Debian)
#      MPICH, and `mpiexec -n 2` writes one HDF5 file collectively (driver='mpio'),
#      whose contents h5dump confirms. Ends with a one-line summary.
#
# Environment knobs (all optional):
#   PYTHON=python3            interpreter used to create the venv
#   PHDF5_SKIP_APT=1          never call apt-get (fail if something is missing)
#   PHDF5_FORCE_REBUILD=1     rebuild the venv even if it looks fine
#
# Why the build is done this way (pitfalls found while writing it):
#   * Both compiles use --no-build-isolation. For h5py this matters: with
#     HDF5_MPI=ON, h5py's in-tree build backend adds "mpi4py==4.0.0" (Python
#     < 3.13) to its build requirements, so an isolated build installs a second,
#     older mpi4py into a throw-away env (compiling it too, ~3 min more, when
#     --no-binary=mpi4py is in effect) and compiles h5py against that one.
#     Building in the venv compiles h5py against exactly the mpi4py and numpy 2.x
#     it will run with. The price: the build requirements (setuptools>=77, wheel,
#     Cython>=3, pkgconfig, packaging, numpy, mpi4py) must be preinstalled: we do.
#   * pip (>=23.1) reuses locally built wheels from its cache even with
#     --no-binary. A cached h5py/mpi4py wheel built elsewhere against another
#     HDF5/MPI would be silently reused, so after installing we check the result
#     and, if it is not the right one, rebuild once with --no-cache-dir.
#   * /usr/bin/mpicc and /usr/bin/mpiexec are Debian "alternatives": if Open MPI
#     is ever installed too it wins them by priority. We use them only when they
#     resolve to MPICH, otherwise the explicit *.mpich names.
#   * mpiexec runs with HYDRA_LAUNCHER=fork: with SLURM_* variables in the
#     environment and slurm-client installed, Hydra would otherwise launch via
#     srun and hang. Running as root needs nothing special with MPICH.
#   * Debian's mpich package depends on libslurm38: purging slurm's libraries
#     also removes mpich and hdf5-mpich (and breaks this venv); step 1 then
#     reinstalls them on the next call.
set -euo pipefail

# ---------------------------------------------------------------- helpers ----
log() { printf '[parallel-hdf5 %3ss] %s\n' "$SECONDS" "$*" >&2; }   # elapsed seconds + message
die() { printf '[parallel-hdf5] ERROR: %s\n' "$*" >&2; exit 1; }
SECONDS=0

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-$REPO_ROOT/.venv-phdf5}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac   # make it absolute
PYTHON="${PYTHON:-python3}"
APT_PACKAGES=(libhdf5-mpich-dev hdf5-tools mpich pkg-config)

# Never let an outer environment (another venv, a PYTHONPATH) leak into the
# build or the checks: they must see only this venv.
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV || true

# ------------------------------------------------------- 1. apt packages ----
pkg_installed() {  # true when dpkg says "install ok installed"
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

install_apt_packages() {
    command -v dpkg-query >/dev/null || die "dpkg-query not found: this script expects Debian 12 (bookworm)."
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do pkg_installed "$p" || missing+=("$p"); done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "apt: ${APT_PACKAGES[*]} already installed, skipping apt-get."
        return 0
    fi
    [ "${PHDF5_SKIP_APT:-0}" = 1 ] && die "missing Debian packages (${missing[*]}) and PHDF5_SKIP_APT=1."

    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "need root (or sudo) to apt-get install: ${missing[*]}"
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Wait for a concurrent apt/dpkg (other jobs on the machine) instead of failing.
    local apt=("${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)

    # `apt-get update` only when needed: empty package lists / no install candidate.
    local need_update=0 cand
    for p in "${missing[@]}"; do
        cand="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')"
        if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; fi
    done
    if [ "$need_update" = 1 ]; then
        log "apt: package lists lack ${missing[*]}; running apt-get update"
        "${apt[@]}" update -qq || die "apt-get update failed"
    fi
    log "apt: installing ${missing[*]}"
    if ! "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}"; then
        # Stale lists (404 on a superseded .deb) are the usual cause: refresh once.
        log "apt: install failed; retrying after apt-get update"
        "${apt[@]}" update -qq || die "apt-get update failed"
        "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" \
            || die "apt-get install ${missing[*]} failed"
    fi
    for p in "${APT_PACKAGES[@]}"; do pkg_installed "$p" || die "Debian package $p is still not installed"; done
}

install_apt_packages

# ----------------------------------------- locate Debian's MPICH tool chain ----
# Use /usr/bin/mpicc and /usr/bin/mpiexec when they are MPICH's (the normal case
# with only mpich installed); otherwise the explicit MPICH names.
pick_mpich_tool() {  # $1 = generic path, $2 = explicit MPICH path
    local generic="$1" explicit="$2" target
    if [ -x "$generic" ]; then
        target="$(readlink -f "$generic")"
        case "$target" in *mpich*|*hydra*) echo "$generic"; return 0 ;; esac
        log "warning: $generic -> $target is not MPICH (Open MPI alternative?); using $explicit"
    fi
    [ -x "$explicit" ] || die "$explicit not found: is Debian's mpich / libmpich-dev installed?"
    echo "$explicit"
}
MPICC="$(pick_mpich_tool /usr/bin/mpicc /usr/bin/mpicc.mpich)"
MPIEXEC="$(pick_mpich_tool /usr/bin/mpiexec /usr/bin/mpiexec.mpich)"
command -v h5dump >/dev/null || die "h5dump not found (Debian package hdf5-tools)"
pkg-config --exists hdf5-mpich || die "pkg-config does not know hdf5-mpich (libhdf5-mpich-dev)"
HDF5_DEB_VERSION="$(pkg-config --modversion hdf5-mpich)"

# ------------------------------------------------------- 2. the venv -------
VPY="$VENV/bin/python"

venv_ok() {  # the cheap "already built" test from the spec
    [ -x "$VPY" ] && "$VPY" -c 'import h5py, mpi4py; assert h5py.get_config().mpi' >/dev/null 2>&1
}

# Is the installed mpi4py linked to Debian's libmpich (and not a cached wheel
# built against something else)?
mpi4py_ok() {
    "$VPY" - <<'EOF' >/dev/null 2>&1
import os, subprocess, mpi4py.MPI as M
out = subprocess.run(["ldd", M.__file__], capture_output=True, text=True, check=True).stdout
libs = [os.path.realpath(l.split("=>")[1].split("(")[0].strip())
        for l in out.splitlines() if "libmpi" in l and "=>" in l]
# Debian's library: /usr/lib/<triplet>/libmpich.so.12.* (/lib is /usr/lib on merged-/usr)
assert len(libs) == 1 and libs[0].startswith("/usr/lib/") and "libmpich.so" in libs[0], out
EOF
}

pip_install() { "$VPY" -m pip install --disable-pip-version-check "$@"; }

build_venv() {
    if [ -e "$VENV" ]; then
        # Refuse to wipe something that is not a venv (e.g. a typo'd path).
        if [ -f "$VENV/pyvenv.cfg" ] || [ -z "$(ls -A "$VENV")" ]; then
            log "venv: $VENV exists but is incomplete; recreating it"
            rm -rf "$VENV"
        else
            die "$VENV exists and is not a virtual environment; refusing to delete it"
        fi
    fi
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
    log "venv: creating $VENV with $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv' failed (on Debian's own python3: apt-get install python3-venv python3-dev)"

    log "venv: upgrading pip, setuptools, wheel; installing numpy and build tools"
    pip_install --upgrade pip setuptools wheel
    # Build requirements of mpi4py and h5py, preinstalled because both are built
    # with --no-build-isolation (see header).
    pip_install numpy 'Cython>=3' pkgconfig packaging

    log "venv: building mpi4py from source with MPICC=$MPICC"
    MPICC="$MPICC" pip_install --no-build-isolation --no-binary=mpi4py 'mpi4py>=4.1' \
        || die "building mpi4py against Debian's MPICH failed"
    if ! mpi4py_ok; then
        log "venv: mpi4py is not linked to Debian's libmpich (stale wheel in pip's cache?); rebuilding without cache"
        MPICC="$MPICC" pip_install --no-build-isolation --no-binary=mpi4py --no-cache-dir \
            --force-reinstall --no-deps 'mpi4py>=4.1' || die "rebuilding mpi4py failed"
        mpi4py_ok || die "mpi4py is still not linked to Debian's libmpich"
    fi

    log "venv: building h5py from source against parallel HDF5 $HDF5_DEB_VERSION (hdf5-mpich)"
    local h5env=(CC="$MPICC" HDF5_MPI=ON HDF5_PKGCONFIG_NAME=hdf5-mpich)
    env "${h5env[@]}" "$VPY" -m pip install --disable-pip-version-check \
        --no-build-isolation --no-binary=h5py h5py \
        || die "building h5py against hdf5-mpich failed"
    if ! venv_ok; then
        log "venv: h5py is not MPI-enabled (stale serial wheel in pip's cache?); rebuilding without cache"
        env "${h5env[@]}" "$VPY" -m pip install --disable-pip-version-check \
            --no-build-isolation --no-binary=h5py --no-cache-dir --force-reinstall --no-deps h5py \
            || die "rebuilding h5py failed"
        venv_ok || die "h5py in $VENV is still not built with MPI (h5py.get_config().mpi is False)"
    fi
}

if [ "${PHDF5_FORCE_REBUILD:-0}" != 1 ] && venv_ok; then
    log "venv: $VENV already has MPI-enabled h5py + mpi4py; skipping the build"
else
    [ "${PHDF5_FORCE_REBUILD:-0}" = 1 ] && [ -f "$VENV/pyvenv.cfg" ] && rm -rf "$VENV"
    build_venv
fi

# ---------------------------------------------------------- 3. verify ------
log "verify: checking MPI / HDF5 linkage"
MPICH_DEB_VERSION="$(dpkg-query -W -f='${Version}' libmpich12 2>/dev/null || echo unknown)"
# Prints "key=value" lines consumed below; fails loudly on any mismatch.
INFO="$("$VPY" - "$VENV" "$HDF5_DEB_VERSION" "$MPICH_DEB_VERSION" <<'EOF'
import os, re, subprocess, sys
venv, hdf5_deb, mpich_deb = sys.argv[1:4]
def fail(msg):
    sys.exit(f"[parallel-hdf5] ERROR: {msg}")

import numpy, h5py, mpi4py
from mpi4py import MPI
import h5py.h5p  # noqa: F401  (h5py's module that binds the MPI-IO driver)

for mod in (numpy, h5py, mpi4py):
    if not os.path.realpath(mod.__file__).startswith(os.path.realpath(venv) + os.sep):
        fail(f"{mod.__name__} comes from {mod.__file__}, not from {venv}")
if not h5py.get_config().mpi:
    fail("h5py.get_config().mpi is False: h5py was built without MPI")
if h5py.version.hdf5_version != hdf5_deb:
    fail(f"h5py runs HDF5 {h5py.version.hdf5_version}, Debian's hdf5-mpich is {hdf5_deb}")

libver = MPI.Get_library_version()
m = re.search(r"MPICH Version:\s*(\S+)", libver)
if not m:
    fail(f"mpi4py is not running MPICH:\n{libver}")
mpich_ver = m.group(1)
if mpich_deb != "unknown" and not mpich_deb.startswith(mpich_ver):
    fail(f"mpi4py runs MPICH {mpich_ver}, Debian's libmpich12 is {mpich_deb}")

def libs(path, pattern):
    """Resolved paths of the shared libraries matching pattern that path loads (ldd)."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        parts = line.split("=>")
        if len(parts) == 2 and re.search(pattern, parts[0]):
            target = parts[1].split("(")[0].strip()
            if not target or target == "not found":
                fail(f"{path}: {parts[0].strip()} not found")
            found.add(os.path.realpath(target))
    return found

import h5py.defs  # a compiled h5py module; all of them link libhdf5
h5ext = h5py.defs.__file__
mpi_of_mpi4py = libs(MPI.__file__, r"libmpi(ch)?\.so")
hdf5_of_h5py = libs(h5ext, r"libhdf5")
mpi_of_h5py = set().union(*(libs(p, r"libmpi(ch)?\.so") for p in hdf5_of_h5py)) if hdf5_of_h5py else set()
if len(mpi_of_mpi4py) != 1:
    fail(f"mpi4py links {sorted(mpi_of_mpi4py) or 'no MPI library'} (expected Debian's libmpich)")
if mpi_of_mpi4py != mpi_of_h5py:
    fail(f"different MPI libraries: mpi4py -> {sorted(mpi_of_mpi4py)}, h5py's HDF5 -> {sorted(mpi_of_h5py)}")
if not all("mpich" in p for p in hdf5_of_h5py):
    fail(f"h5py links a non-MPICH HDF5: {sorted(hdf5_of_h5py)}")

# In this very process exactly one MPI library must be mapped.
with open("/proc/self/maps") as f:
    mapped = {l.split()[-1] for l in f if re.search(r"/libmpi(ch)?\.so", l)}
if {os.path.realpath(p) for p in mapped} != mpi_of_mpi4py:
    fail(f"process maps MPI libraries {sorted(mapped)}, expected only {sorted(mpi_of_mpi4py)}")

print(f"python={sys.version.split()[0]}")
print(f"numpy={numpy.__version__}")
print(f"h5py={h5py.__version__}")
print(f"hdf5={h5py.version.hdf5_version}")
print(f"mpi4py={mpi4py.__version__}")
print(f"mpich={mpich_ver}")
print(f"libmpi={next(iter(mpi_of_mpi4py))}")
print(f"libhdf5={' '.join(sorted(hdf5_of_h5py))}")
EOF
)" || die "linkage checks failed (see above)"
get() { printf '%s\n' "$INFO" | sed -n "s/^$1=//p"; }
log "verify: numpy $(get numpy), h5py $(get h5py), HDF5 $(get hdf5), mpi4py $(get mpi4py), MPICH $(get mpich)"
log "verify: mpi4py and h5py both use $(get libmpi); HDF5 library $(get libhdf5)"

# The launcher must be the same MPICH as the library, or ranks start as singletons.
HYDRA_VERSION="$("$MPIEXEC" --version 2>/dev/null | sed -n 's/^ *Version: *//p' | head -n1)"
[ "$HYDRA_VERSION" = "$(get mpich)" ] \
    || die "$MPIEXEC is Hydra '$HYDRA_VERSION' but mpi4py runs MPICH $(get mpich)"

log "verify: collective write with $MPIEXEC -n 2 (driver='mpio')"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/phdf5-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
H5FILE="$WORK/collective.h5"
cat >"$WORK/write.py" <<'EOF'
import sys
import numpy as np
import h5py
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
if size != 2:
    sys.exit(f"expected 2 MPI ranks, got {size}: mpiexec and mpi4py are different MPIs")
with h5py.File(sys.argv[1], "w", driver="mpio", comm=comm) as f:
    assert f.driver == "mpio", f.driver
    dset = f.create_dataset("data", (size, 4), dtype="i4")   # collective: all ranks
    with dset.collective:                                     # collective MPI-IO write
        dset[rank] = np.arange(4, dtype="i4") + 10 * rank
# Read it back collectively too: every rank must see both rows.
with h5py.File(sys.argv[1], "r", driver="mpio", comm=comm) as f:
    got = f["data"][...]
assert got.tolist() == [[0, 1, 2, 3], [10, 11, 12, 13]], got
# Report from rank 0 only (ranks' stdout would interleave), one line per rank.
seen = comm.gather((rank, MPI.Get_processor_name(), got.tolist()), root=0)
if rank == 0:
    for r, host, rows in seen:
        sys.stdout.write(f"rank {r}/{size} on {host}: wrote row {r}, read back {rows}\n")
    sys.stdout.flush()
EOF
# HYDRA_LAUNCHER=fork: all ranks on this host, no ssh/slurm bootstrap probing.
# `timeout` so that a hung MPI job fails CI instead of stalling it.
if ! MPI_OUT="$(HYDRA_LAUNCHER=fork timeout 120 "$MPIEXEC" -n 2 "$VPY" "$WORK/write.py" "$H5FILE" 2>&1)"; then
    printf '%s\n' "$MPI_OUT" >&2
    die "'$MPIEXEC -n 2 $VPY write.py' failed"
fi
printf '%s\n' "$MPI_OUT" | sed 's/^/[parallel-hdf5]   /' >&2

# Independent check with HDF5's own tool: -y no indices, -w 0 no line wrapping.
DUMP="$(h5dump -d /data -y -w 0 "$H5FILE")" || die "h5dump could not read $H5FILE"
# The lines between "DATA {" and "}" joined into one, whitespace squeezed and trimmed.
VALUES="$(printf '%s\n' "$DUMP" | sed -n '/DATA {/,/}/p' | sed '1d;$d' | tr '\n' ' ' \
          | tr -s ' ' | sed 's/^ //; s/ $//')"
[ "$VALUES" = "0, 1, 2, 3, 10, 11, 12, 13" ] \
    || { printf '%s\n' "$DUMP" >&2; die "h5dump shows unexpected values: '$VALUES'"; }
log "verify: h5dump /data = [$VALUES]"

echo "parallel-hdf5 OK: venv=$VENV python=$(get python) numpy=$(get numpy) h5py=$(get h5py) HDF5=$(get hdf5) (mpio) mpi4py=$(get mpi4py) MPICH=$(get mpich) (Debian $MPICH_DEB_VERSION); mpiexec -n 2 collective write verified by h5dump (${SECONDS}s)"
