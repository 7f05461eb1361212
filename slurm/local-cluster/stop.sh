#!/usr/bin/env bash
# Stop the local Slurm test cluster started by start.sh and leave nothing
# running:
#   1. cancel every job in the cluster (so that no job processes survive)
#      and wait (bounded) until the queue is empty,
#   2. stop slurmd n1 and n2, then slurmctld (SIGTERM via their pid files,
#      bounded wait, then SIGKILL),
#   3. kill stray slurmstepd processes of this cluster, if any,
#   4. stop this cluster's munged ($STATE/munge/munged.pid).
# Only daemons that start.sh started are stopped, by the pids in their pid
# files (checked against the binary); another Slurm or munged on the machine is
# never touched.  The state dir (config, logs, controller state, jobcomp file)
# is kept; `start.sh --clean` wipes it.
#
# Usage: stop.sh [--quiet]   (--quiet: do not report daemons that are not running)
# Environment: HPCPAR_SLURM_DIR  state dir  [/tmp/hpcpar-slurm]
set -euo pipefail
# The daemons live in /usr/sbin, which a non-login root shell may lack.
export PATH=$PATH:/usr/sbin:/sbin

STATE=${HPCPAR_SLURM_DIR:-/tmp/hpcpar-slurm}
NODES=(n1 n2)
# Slurm commands below talk to this cluster only.
export SLURM_CONF=$STATE/slurm.conf
quiet=0
for arg in "$@"; do
    case $arg in
        --quiet|-q) quiet=1 ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
        *) echo "stop.sh: ERROR: unknown argument '$arg' (usage: stop.sh [--quiet])" >&2; exit 1 ;;
    esac
done

# log: actions (always shown); info: "not running" notes (hidden by --quiet).
log() { echo "stop.sh: $*"; }
info() { [[ $quiet == 1 ]] || echo "stop.sh: $*"; }
warn() { echo "stop.sh: WARNING: $*" >&2; }

[[ $(id -u) -eq 0 ]] || { echo "stop.sh: ERROR: must be run as root" >&2; exit 1; }

# pid_of PIDFILE EXE: print the pid in PIDFILE if that process is alive and
# runs EXE (guards against stale pid files and recycled pids).
pid_of() {
    local pidfile=$1 exe=$2 pid path
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ && -e /proc/$pid ]] || return 1
    path=$(command -v "$exe" 2>/dev/null) || return 1
    [[ $(readlink -f "/proc/$pid/exe" 2>/dev/null) == "$(readlink -f "$path")" ]] || return 1
    echo "$pid"
}

# stop_pid NAME PID [TIMEOUT]: SIGTERM, wait up to TIMEOUT s, then SIGKILL.
stop_pid() {
    local name=$1 pid=$2 timeout=${3:-20} i
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < timeout * 5; i++)); do
        [[ -e /proc/$pid ]] || return 0
        # A zombie counts as gone.
        [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && return 0
        sleep 0.2
    done
    warn "$name (pid $pid) still alive after ${timeout}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 25; i++)); do [[ -e /proc/$pid ]] || return 0; sleep 0.2; done
    warn "$name (pid $pid) survived SIGKILL"
}

# stop_daemon NAME PIDFILE EXE [TIMEOUT]
stop_daemon() {
    local pid
    if pid=$(pid_of "$2" "$3"); then
        stop_pid "$1" "$pid" "${4:-20}"
    else
        info "$1 not running"
    fi
    rm -f "$2"
}

ctld_pid=$(pid_of "$STATE/run/slurmctld.pid" slurmctld || true)

# --- 1. cancel all jobs --------------------------------------------------------
if [[ -n $ctld_pid && -f $SLURM_CONF ]] && scontrol ping 2>/dev/null | grep -q 'is UP'; then
    if [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
        log "cancelling all jobs in partition debug"
        scancel -p debug 2>/dev/null || true
        # Running jobs get SIGTERM, then SIGKILL after KillWait (10 s); wait
        # for them (including the COMPLETING state) to leave the queue.
        for ((i = 0; i < 40; i++)); do
            [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
            sleep 1
        done
        [[ -z $(squeue -h -o %i 2>/dev/null) ]] \
            || warn "jobs still in the queue after 40 s: $(squeue -h -o '%i %T' | tr '\n' ' ')"
    fi
fi

# --- 2. slurmd x2, slurmctld ---------------------------------------------------
for n in "${NODES[@]}"; do
    stop_daemon "slurmd $n" "$STATE/run/slurmd-$n.pid" slurmd 20
done
# slurmctld saves its state on SIGTERM; give it a little longer.
stop_daemon slurmctld "$STATE/run/slurmctld.pid" slurmctld 30

# --- 3. stray slurmstepd of this cluster (after a crash) ------------------------
# Normally none are left after step 1.  If slurmctld/slurmd died, step daemons
# and the job processes under them survive; kill those process trees.  A
# slurmstepd of this cluster keeps its node's log file
# ($STATE/log/slurmd-<node>.log) open; only those are touched.
stray=()
for p in /proc/[0-9]*; do
    [[ $(readlink "$p/exe" 2>/dev/null) == */slurmstepd* ]] || continue
    for fd in "$p"/fd/*; do
        if [[ $(readlink "$fd" 2>/dev/null) == "$STATE"/log/slurmd-*.log ]]; then
            stray+=("${p#/proc/}")
            break
        fi
    done
done
if [[ ${#stray[@]} -gt 0 ]]; then
    # Collect the stray step daemons and all their descendants (the jobs'
    # processes) before killing anything: once a slurmstepd is gone its
    # children are re-parented and can no longer be found this way.
    tree=("${stray[@]}")
    ppids=$(awk '{print $1, $4}' /proc/[0-9]*/stat 2>/dev/null || true)
    for ((i = 0; i < ${#tree[@]}; i++)); do
        while read -r child; do
            [[ -n $child ]] && tree+=("$child")
        done < <(awk -v pp="${tree[i]}" '$2 == pp {print $1}' <<<"$ppids")
    done
    warn "killing stray slurmstepd processes and their jobs: ${tree[*]}"
    # Job processes get SIGTERM first; slurmstepd itself ignores SIGTERM.
    for pid in "${tree[@]:${#stray[@]}}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 2
    for pid in "${tree[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.5
fi

# --- 4. munged -------------------------------------------------------------------
stop_daemon munged "$STATE/munge/munged.pid" munged 10

info "stopped (logs kept in $STATE/log)"
