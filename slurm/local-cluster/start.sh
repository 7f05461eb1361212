#!/usr/bin/env bash
# Start a real, single-host Slurm test cluster (as root, without systemd):
#
#   munged          its own, as user munge: socket, key, pid, log in $STATE/munge
#   slurmctld       controller, listening on 127.0.0.1:<free port>
#   slurmd -N n1    first "node",  <free port> \  both on this host, each node
#   slurmd -N n2    second "node", <free port> /  offers all the host's CPUs
#
# All state (generated config, munge key and socket, logs, pid files, spool
# dirs, controller state, job-completion file) lives in one state dir:
# $HPCPAR_SLURM_DIR, default /tmp/hpcpar-slurm.  Nothing outside it is
# written: no /etc/slurm, no /run/munge, no Slurm default ports, so another
# Slurm or munged on the machine is left alone.  Clients find this cluster
# through SLURM_CONF=$STATE/slurm.conf (also written to $STATE/env, for
# `. $STATE/env`); slurm.conf names the munge socket (AuthInfo=socket=...), so
# no other variable is needed.
#
# Idempotent: when the cluster is already running with the same config this is
# a no-op (it only re-checks the nodes); when it is partly running or the
# config changed, it is stopped (stop.sh) and started again.
#
# Usage: start.sh [--clean]
#   --clean   stop the cluster (if running) and wipe the state dir first
#             (controller state, job ids, logs, job-completion file).
#
# Environment:
#   HPCPAR_SLURM_DIR            state dir                 [/tmp/hpcpar-slurm]
#   HPCPAR_SLURM_START_TIMEOUT  seconds to wait for idle nodes         [90]
#   HPCPAR_SLURM_CTLD_PORT      slurmctld port         [a free port >= 20000]
#   HPCPAR_SLURM_CRED_EXPIRE    AuthInfo cred_expire (= requeue delay)  [30]
#   HPCPAR_SLURM_INSTALL=0      do not run install.sh when binaries are missing
set -euo pipefail
# The daemons live in /usr/sbin, which a non-login root shell may lack.
export PATH=$PATH:/usr/sbin:/sbin

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${HPCPAR_SLURM_DIR:-/tmp/hpcpar-slurm}
TIMEOUT=${HPCPAR_SLURM_START_TIMEOUT:-90}
CRED_EXPIRE=${HPCPAR_SLURM_CRED_EXPIRE:-30}
CONF=$STATE/slurm.conf
MUNGE_DIR=$STATE/munge
MUNGE_SOCK=$MUNGE_DIR/munge.socket
NODES=(n1 n2)
# Every Slurm command of this script (and of stop.sh) talks to this cluster only.
export SLURM_CONF=$CONF

log() { echo "start.sh: $*"; }
die() { echo "start.sh: ERROR: $*" >&2; exit 1; }

# Print the last lines of the cluster's logs (used on every failure path).
show_logs() {
    local f
    for f in "$STATE/log/slurmctld.log" "$STATE"/log/slurmd-*.log "$MUNGE_DIR/munged.log"; do
        [[ -f $f ]] || continue
        echo "----- last lines of $f (harmless mpi/pmix plugin errors filtered) -----" >&2
        grep -v -e 'mpi/pmix' -e 'mpi_pmix' "$f" | tail -n 20 >&2 || true
    done
}
fail() { echo "start.sh: ERROR: $*" >&2; show_logs; exit 1; }

clean=0
for arg in "$@"; do
    case $arg in
        --clean) clean=1 ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
        *) die "unknown argument '$arg' (usage: start.sh [--clean])" ;;
    esac
done

[[ $(id -u) -eq 0 ]] || die "must be run as root (starts munged/slurmctld/slurmd)"
[[ $STATE == /* ]] || die "HPCPAR_SLURM_DIR must be an absolute path (got '$STATE')"
[[ $STATE =~ ^[A-Za-z0-9_./-]+$ ]] || die "HPCPAR_SLURM_DIR contains unsupported characters: '$STATE'"

# --- 0. packages ------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sinfo >/dev/null || ! command -v munged >/dev/null; then
    [[ ${HPCPAR_SLURM_INSTALL:-1} != 0 ]] || die "Slurm/munge not installed (run install.sh)"
    log "Slurm/munge binaries missing; running install.sh"
    "$HERE/install.sh"
fi

# --- helpers ----------------------------------------------------------------
# pid_alive PIDFILE EXE: true if PIDFILE names a live process running EXE.
pid_alive() {
    local pidfile=$1 exe=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -e /proc/$pid ]] || return 1
    # /proc/PID/exe resolves to the real binary (e.g. slurmd-wlm for slurmd).
    [[ $(readlink -f "/proc/$pid/exe" 2>/dev/null) == "$(readlink -f "$(command -v "$exe")")" ]]
}

munge_ok() { munge -S "$MUNGE_SOCK" -n 2>/dev/null | unmunge -S "$MUNGE_SOCK" >/dev/null 2>&1; }

# free_ports N: N distinct TCP ports in 20000-32767 that nothing listens on (any
# address); Slurm's defaults (6817/6818) are never chosen.
free_ports() {
    python3 -c '
import random, socket, sys
want, found = int(sys.argv[1]), []
for port in random.sample(range(20000, 32768), 400):
    s = socket.socket()
    try:
        s.bind(("", port))
    except OSError:
        continue
    finally:
        s.close()
    found.append(port)
    if len(found) == want:
        break
print(*found)
' "$1"
}

# Node states as "name state" lines, e.g. "n1 idle".
node_states() { sinfo -h -N -p debug -o '%N %t' 2>/dev/null | sort -u; }

# wait_nodes MODE: wait until every node is idle (MODE=idle) or at least
# usable, i.e. not down/drained/not responding (MODE=up).
wait_nodes() {
    local mode=$1 deadline=$((SECONDS + TIMEOUT)) started=$SECONDS states ok n st
    while :; do
        states=$(node_states || true)
        ok=1
        for n in "${NODES[@]}"; do
            st=$(awk -v n="$n" '$1 == n {print $2}' <<<"$states")
            if [[ $mode == idle ]]; then
                [[ $st == idle ]] || ok=0
            else
                [[ $st =~ ^(idle|mix|alloc|comp)$ ]] || ok=0
            fi
        done
        [[ $ok == 1 ]] && return 0
        # On a fresh start, fail fast if a slurmd died (e.g. port in use).
        if [[ $mode == idle ]] && ((SECONDS >= started + 3)); then
            for n in "${NODES[@]}"; do
                pid_alive "$STATE/run/slurmd-$n.pid" slurmd \
                    || fail "slurmd -N $n is not running (see $STATE/log/slurmd-$n.log)"
            done
        fi
        if ((SECONDS >= deadline)); then
            echo "start.sh: sinfo -N:" >&2
            sinfo -N >&2 || true
            fail "nodes ${NODES[*]} not $mode after ${TIMEOUT}s (states: ${states:-<sinfo failed>})"
        fi
        sleep 1
    done
}

# --- 1. generate slurm.conf ---------------------------------------------------
HOST=$(hostname -s)
[[ -n $HOST ]] || die "hostname -s is empty"
# The node hardware as slurmd sees it, e.g.
#   NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
HW=$(slurmd -C 2>/dev/null | head -n1) || die "'slurmd -C' failed"
hw() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$HW"; }
CPUS=$(hw CPUs); SOCKETS=$(hw SocketsPerBoard); CORES=$(hw CoresPerSocket)
THREADS=$(hw ThreadsPerCore); MEM=$(hw RealMemory)
[[ -n $CPUS && -n $SOCKETS && -n $CORES && -n $THREADS && -n $MEM ]] \
    || die "could not parse 'slurmd -C' output: $HW"

# render_conf CTLD_PORT N1_PORT N2_PORT: the config, on stdout.
render_conf() {
cat <<EOF
# Generated by hpcpar slurm/local-cluster/start.sh -- do not edit (rewritten
# on every start).  State dir: $STATE
ClusterName=hpcpar
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$1
# Daemons run as root: no permission juggling on the state dir.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# This cluster's own munged (its socket); the credential lifetime, also the
# delay before a requeued job may start again (default 120 s).
AuthInfo=socket=$MUNGE_SOCK,cred_expire=$CRED_EXPIRE

StateSaveLocation=$STATE/ctld
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmctldDebug=info
# %n = node name (n1, n2): two slurmd on one host need separate files.
SlurmdSpoolDir=$STATE/spool/slurmd-%n
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmdDebug=info

# No cgroups, no systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Consumable CPUs: several small jobs can share a node.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Run the scheduler every 5 s (defaults 60 s / 30 s): a job whose BeginTime
# has passed (e.g. a requeued job) starts within ~5 s instead of up to 30 s.
SchedulerParameters=sched_interval=5,bf_interval=5
# srun --mpi=pmi2 by default (works with Debian's MPICH and the pip mpich wheel).
MpiDefault=pmi2
# Return DOWN nodes to service as soon as their slurmd registers.
ReturnToService=2
JobRequeue=1
# Finished jobs stay visible to scontrol/squeue for this many seconds.
MinJobAge=300
# Seconds between SIGTERM and SIGKILL on cancel/requeue/time limit (default 30).
KillWait=10
MailProg=/bin/true

# No accounting database; finished jobs are appended to a text file.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.txt

# Two "nodes" on this one host, each with all of the host's CPUs.
NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$2 CPUs=$CPUS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM State=UNKNOWN
NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$3 CPUs=$CPUS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
EOF
}
# conf_ports FILE: the controller's and the two nodes' ports of a generated config.
conf_ports() {
    local c n1 n2
    c=$(sed -n 's/^SlurmctldPort=\([0-9]*\)$/\1/p' "$1")
    n1=$(sed -n 's/^NodeName=n1 .* Port=\([0-9]*\) .*/\1/p' "$1")
    n2=$(sed -n 's/^NodeName=n2 .* Port=\([0-9]*\) .*/\1/p' "$1")
    [[ -n $c && -n $n1 && -n $n2 ]] && echo "$c $n1 $n2"
}

# --- 2. already running with this config? -> no-op ----------------------------
running() {
    pid_alive "$MUNGE_DIR/munged.pid" munged && munge_ok \
        && pid_alive "$STATE/run/slurmctld.pid" slurmctld \
        && pid_alive "$STATE/run/slurmd-n1.pid" slurmd \
        && pid_alive "$STATE/run/slurmd-n2.pid" slurmd
}
# The same config: the file as it would be rendered with the running cluster's ports.
if [[ $clean == 0 ]] && [[ -f $CONF ]] && ports=$(conf_ports "$CONF") && running \
   && [[ $(render_conf $ports) == "$(<"$CONF")" ]] && scontrol ping >/dev/null 2>&1; then
    log "already running (state dir $STATE); checking nodes"
    wait_nodes up
    log "cluster is up: $(node_states | tr '\n' ' ')"
    exit 0
fi

# Anything half-running (or running with another config) is stopped first.
log "stopping leftovers (if any)"
HPCPAR_SLURM_DIR=$STATE "$HERE/stop.sh" --quiet

if [[ $clean == 1 && -d $STATE ]]; then
    log "--clean: removing $STATE"
    rm -rf -- "$STATE"
fi

# --- 3. directories and config files -----------------------------------------
mkdir -p "$STATE"/{ctld,run,log,spool}
chmod 0755 "$STATE"
for n in "${NODES[@]}"; do mkdir -p "$STATE/spool/slurmd-$n"; done
if [[ -n ${HPCPAR_SLURM_CTLD_PORT:-} ]]; then
    ports="$HPCPAR_SLURM_CTLD_PORT $(free_ports 2)"
else
    ports=$(free_ports 3)
fi
[[ $(wc -w <<<"$ports") == 3 ]] || die "found no free TCP ports in 20000-32767 (got '$ports')"
# shellcheck disable=SC2086  # three port numbers
render_conf $ports >"$CONF"
printf 'export SLURM_CONF=%s\n' "$CONF" >"$STATE/env"
touch "$STATE/jobcomp.txt"

# --- 4. munge: this cluster's own munged, key and socket ------------------------
id munge >/dev/null 2>&1 || die "user 'munge' does not exist (is the munge package installed?)"
install -d -o munge -g munge -m 0711 "$MUNGE_DIR"
if [[ ! -s $MUNGE_DIR/munge.key ]]; then
    log "creating $MUNGE_DIR/munge.key"
    runuser -u munge -- mungekey --create --keyfile="$MUNGE_DIR/munge.key" \
        || die "mungekey --create failed"
fi
chown munge:munge "$MUNGE_DIR/munge.key"
chmod 0600 "$MUNGE_DIR/munge.key"
log "starting munged (socket $MUNGE_SOCK)"
rm -f "$MUNGE_DIR/munged.pid"
runuser -u munge -- munged --socket="$MUNGE_SOCK" --key-file="$MUNGE_DIR/munge.key" \
    --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" \
    --seed-file="$MUNGE_DIR/munged.seed" || fail "munged failed to start"
for _ in $(seq 50); do munge_ok && break; sleep 0.2; done
munge_ok || fail "munged started but 'munge -S $MUNGE_SOCK -n | unmunge' fails"

# --- 5. slurmctld and two slurmd ---------------------------------------------
log "starting slurmctld (log $STATE/log/slurmctld.log)"
slurmctld || fail "slurmctld failed to start"
deadline=$((SECONDS + TIMEOUT))
until scontrol ping 2>/dev/null | grep -q 'is UP'; do
    # slurmctld daemonizes at once; if it dies during startup its pid file is
    # left behind (or never written) -- fail fast with the log tail.
    if [[ -s $STATE/run/slurmctld.pid ]] && ! pid_alive "$STATE/run/slurmctld.pid" slurmctld; then
        fail "slurmctld exited during startup"
    fi
    ((SECONDS < deadline)) || fail "slurmctld not answering 'scontrol ping' after ${TIMEOUT}s"
    sleep 0.5
done

for n in "${NODES[@]}"; do
    log "starting slurmd -N $n (log $STATE/log/slurmd-$n.log)"
    slurmd -N "$n" || fail "slurmd -N $n failed to start"
done

# --- 6. wait for the nodes ---------------------------------------------------
log "waiting (up to ${TIMEOUT}s) for ${NODES[*]} to be idle"
wait_nodes idle
for n in "${NODES[@]}"; do
    pid_alive "$STATE/run/slurmd-$n.pid" slurmd || fail "slurmd -N $n is not running"
done
log "cluster is up: $(node_states | tr '\n' ' ')(state dir $STATE, ports $ports)"
log "clients: export SLURM_CONF=$CONF   (or: . $STATE/env)"
