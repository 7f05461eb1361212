#!/usr/bin/env bash
# A Slurm cluster over the namespace hosts of multihost.sh: one slurmd per host,
# then COMMAND, then everything it started is stopped (by pid, also on failure).
#
# Usage (inside multihost.sh): multihost-slurm.sh COMMAND [ARGS...]
#
#   slurmctld   in the root namespace, on the bridge's address, a free port
#   munged      its own: socket and key in the state dir (AuthInfo=socket=...);
#               the socket is a file, so slurmd in the hosts reach it too
#   slurmd      one per host, NodeName = the host's name (its UTS hostname),
#               NodeAddr = its address on the bridge. slurmd needs a cgroup
#               file system it can see: each host gets a tmpfs on /sys/fs/cgroup
#               with a private, named cgroup v1 hierarchy (in the host's own
#               mount namespace, so the machine's cgroups are untouched).
#               Each node has all of the machine's CPUs (slurmd -C), so that
#               --ntasks-per-node 2 fits on a 2-core machine.
#   requeue     a requeued job (hpcpar.slurm.requeue after SIGUSR1) starts
#               again ~25 s later (cred_expire=20, scheduler every 5 s).
#
# Exported to COMMAND: SLURM_CONF (this cluster's config), HPCPAR_MH_KEEP_PIDS
# (the slurmd daemons, which a cleanup between tests must spare) and
# HPCPAR_MH_SLURM=ok, or HPCPAR_MH_SLURM=unavailable:REASON when Slurm is not
# installed or the cluster did not come up (COMMAND still runs, so that the
# other multi-host tests do).
set -uo pipefail
export PATH=$PATH:/usr/sbin:/sbin
: "${HPCPAR_MH_SSH:?run inside tests/env/multihost.sh}"

STATE=$(mktemp -d /tmp/hpm-slurm-XXXXXX)
chmod 0755 "$STATE"
pids=()
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for f in "$STATE"/run/*.pid "$STATE/munge/munged.pid"; do
        [[ -s $f ]] && pids+=("$(<"$f")")
    done
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf -- "$STATE"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

setup() {
    local h hosts n ip cpus port
    for b in slurmctld slurmd srun sinfo munged mungekey; do
        command -v "$b" >/dev/null || { echo "'$b' not installed (slurm/local-cluster/install.sh)"; return 1; }
    done
    id munge >/dev/null 2>&1 || { echo "no user munge"; return 1; }
    mkdir -p "$STATE"/{ctld,run,log,spool}
    install -d -o munge -g munge -m 0711 "$STATE/munge"
    runuser -u munge -- mungekey --create --keyfile="$STATE/munge/munge.key" >/dev/null 2>&1 \
        || { echo "mungekey failed"; return 1; }
    runuser -u munge -- munged --socket="$STATE/munge/munge.socket" --key-file="$STATE/munge/munge.key" \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
        --seed-file="$STATE/munge/munged.seed" || { echo "munged failed"; return 1; }
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
    cpus=$(slurmd -C 2>/dev/null | sed -n '1s/.* CPUs=\([0-9]*\).*/\1/p')
    IFS=, read -r -a hosts <<<"$HPCPAR_MH_HOSTS"
    {
        echo "ClusterName=hpcparmh"
        echo "SlurmctldHost=$(hostname -s)($HPCPAR_MH_BRIDGE_IP)"
        echo "SlurmctldPort=$port"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "CredType=cred/munge"
        # The credential lifetime is also the delay before a requeued job may start again
        # (default 120 s); the scheduler runs every 5 s (defaults 60/30 s), so a requeued
        # job starts again about 25 s after its requeue.
        echo "AuthInfo=socket=$STATE/munge/munge.socket,cred_expire=20"
        echo "StateSaveLocation=$STATE/ctld"
        echo "SlurmctldPidFile=$STATE/run/slurmctld.pid"
        echo "SlurmctldLogFile=$STATE/log/slurmctld.log"
        echo "SlurmdSpoolDir=$STATE/spool/%n"
        echo "SlurmdPidFile=$STATE/run/slurmd-%n.pid"
        echo "SlurmdLogFile=$STATE/log/slurmd-%n.log"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_CPU"
        echo "SchedulerType=sched/backfill"
        echo "SchedulerParameters=sched_interval=5,bf_interval=5"
        echo "JobRequeue=1"
        echo "MinJobAge=300"
        echo "MpiDefault=pmi2"
        echo "ReturnToService=2"
        echo "KillWait=5"
        echo "AccountingStorageType=accounting_storage/none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "MailProg=/bin/true"
        for h in "${hosts[@]}"; do
            ip=$("$HPCPAR_MH_SSH" "$h" "getent hosts $h" | awk '{print $1}')
            # The port is free here; inside each host's own network namespace it is free too.
            echo "NodeName=$h NodeAddr=$ip Port=$((port + 1)) CPUs=$cpus State=UNKNOWN"
            mkdir -p "$STATE/spool/$h"
        done
        echo "PartitionName=debug Nodes=$HPCPAR_MH_HOSTS Default=YES MaxTime=INFINITE State=UP"
    } >"$STATE/slurm.conf"
    printf 'CgroupPlugin=cgroup/v1\nIgnoreSystemd=yes\n' >"$STATE/cgroup.conf"
    slurmctld || { echo "slurmctld failed (log $STATE/log/slurmctld.log)"; return 1; }
    for _ in $(seq 40); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.25; done
    for h in "${hosts[@]}"; do
        "$HPCPAR_MH_SSH" "$h" "mountpoint -q /sys/fs/cgroup || { mount -t tmpfs hpm-cg /sys/fs/cgroup \
            && mkdir /sys/fs/cgroup/freezer && mount -t cgroup -o none,name=hpm$$ hpm-cgv1 /sys/fs/cgroup/freezer; } \
            && SLURM_CONF=$SLURM_CONF slurmd -N $h" \
            || { tail -n 5 "$STATE/log/slurmd-$h.log"; echo "slurmd on $h failed"; return 1; }
    done
    for _ in $(seq 60); do
        [[ $(sinfo -h -N -o '%t' 2>/dev/null | grep -c '^idle$') == "${#hosts[@]}" ]] && return 0
        sleep 0.5
    done
    sinfo -N
    echo "nodes not idle after 30 s"
    return 1
}

export SLURM_CONF=$STATE/slurm.conf
if why=$(setup 2>&1); then
    export HPCPAR_MH_SLURM=ok
    # The tests' cleanup between tests ends every process on the hosts but these daemons.
    HPCPAR_MH_KEEP_PIDS=$(cat "$STATE"/run/slurmd-*.pid | tr '\n' ' ')
    export HPCPAR_MH_KEEP_PIDS
    echo "multihost-slurm.sh: slurmctld on $HPCPAR_MH_BRIDGE_IP, one slurmd per host ($HPCPAR_MH_HOSTS); SLURM_CONF=$SLURM_CONF"
else
    export HPCPAR_MH_SLURM="unavailable: $(tail -n 1 <<<"$why")"
    echo "multihost-slurm.sh: no Slurm across the hosts: $why" >&2
fi
"$@"
