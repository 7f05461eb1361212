#!/usr/bin/env bash
# Install the Debian packages needed for the local single-host Slurm test
# cluster (slurmctld, slurmd, the client tools and munge).
#
# Idempotent: if every package is already installed, nothing is done (no
# network access at all).  Otherwise `apt-get install` is tried first from the
# existing package lists and `apt-get update` is run only if that fails
# (fresh machines / CI images usually have empty or stale lists).
#
# Must run as root on Debian 12 (bookworm; Slurm 22.05.8).
set -euo pipefail
# The daemons live in /usr/sbin, which a non-login root shell may lack.
export PATH=$PATH:/usr/sbin:/sbin

PACKAGES=(slurmctld slurmd slurm-client munge)

die() { echo "install.sh: ERROR: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must be run as root (it runs apt-get)"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian/Ubuntu only"

# Which packages are not (fully) installed yet?
missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install.sh: already installed: ${PACKAGES[*]}"
    exit 0
fi

echo "install.sh: installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt_install() {
    apt-get install -y --no-install-recommends "${PACKAGES[@]}"
}
# Try without refreshing the package lists first; refresh only if needed.
if ! apt_install; then
    echo "install.sh: apt-get install failed; running apt-get update and retrying" >&2
    apt-get update || die "apt-get update failed (no access to the Debian mirrors?)"
    apt_install || die "apt-get install ${PACKAGES[*]} failed"
fi

# Sanity check: the binaries start.sh needs.
for b in slurmctld slurmd sinfo srun sbatch scontrol munged mungekey; do
    command -v "$b" >/dev/null || die "'$b' not found on PATH after installation"
done
echo "install.sh: done ($(slurmctld -V 2>/dev/null || echo 'slurm ?'))"
