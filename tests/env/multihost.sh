#!/usr/bin/env bash
# Several "hosts" on this machine, then a command that runs jobs across them.
#
# Every host is a Linux network namespace with its own address on a bridge (one
# veth pair each), its own hostname (a UTS namespace) and its own /dev/shm and
# /etc/hosts (a mount namespace): MPI ranks on two hosts cannot share memory and
# must talk over the network. A small "ssh" (the file ssh in the work dir) runs a
# command on a host by entering its namespaces; MPICH's launcher is told to use
# it (-launcher ssh -launcher-exec WORKDIR/ssh). The root namespace keeps the
# bridge's address (a "login node" every host reaches, e.g. for a web server).
#
# Usage: multihost.sh NHOSTS COMMAND [ARGS...]
#   Builds NHOSTS hosts (h1, h2, ...), runs COMMAND in the root namespace with
#   the variables below, then removes everything it created (also on failure or
#   Ctrl-C): every process in its namespaces (ip netns pids), the namespaces,
#   the veths, the bridge, the work dir.
#
# Exported to COMMAND:
#   HPCPAR_MH_HOSTS       h1,h2,...          the host names
#   HPCPAR_MH_SSH         WORKDIR/ssh        `ssh HOST CMD...` runs CMD on HOST
#   HPCPAR_MH_BRIDGE_IP   the root namespace's address on the bridge
#   HPCPAR_MH_VETHS       the root-side veth of every host (byte counters)
#   HPCPAR_MH_ANCHORS     h1=PID,...         a process in each host's namespaces
#   HPCPAR_MH_NETNS       h1=NETNS,...       each host's network namespace
#
# Needs root, iproute2 and util-linux (unshare, nsenter). Every name it creates
# starts with hpm<id>, the id being this script's pid; nothing else is touched.
set -euo pipefail

die() { echo "multihost.sh: ERROR: $*" >&2; exit 2; }
[[ $# -ge 2 ]] || die "usage: multihost.sh NHOSTS COMMAND [ARGS...]"
NHOSTS=$1; shift
[[ $NHOSTS =~ ^[1-9]$ ]] || die "NHOSTS must be 1..9, got '$NHOSTS'"
[[ $(id -u) -eq 0 ]] || die "must run as root (creates network namespaces)"
for tool in ip unshare nsenter mount; do
    command -v "$tool" >/dev/null || die "'$tool' not found"
done

ID=hpm$(($$ % 100000))
BR=${ID}br
WORK=$(mktemp -d "/tmp/${ID}-XXXXXX")
# A /24 of 10.213.0.0/16 that no route of this machine covers.
SUBNET=
for third in $(shuf -i 1-250 -n 40); do
    candidate=10.213.$third
    if ! ip route show | grep -q "^10\.213\.$third\.\|^10\.213\.0\.0/16\|^10\.0\.0\.0/8"; then
        SUBNET=$candidate
        break
    fi
done
[[ -n $SUBNET ]] || die "no free 10.213.x.0/24 subnet"

hosts=()
netns=()
anchors=()
cleanup() {
    local rc=$? ns pid
    trap - EXIT INT TERM
    for ns in "${netns[@]}"; do
        # Everything that runs in the host: its anchor, proxies, ranks, servers.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    for pid in "${anchors[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.2
    for ns in "${netns[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    ip link del "$BR" 2>/dev/null || true
    rm -rf -- "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip link add "$BR" type bridge
ip addr add "$SUBNET.1/24" dev "$BR"
ip link set "$BR" up

{
    echo "127.0.0.1 localhost"
    for ((i = 1; i <= NHOSTS; i++)); do echo "$SUBNET.$((10 + i)) h$i"; done
    echo "$SUBNET.1 login"
} >"$WORK/hosts"

veths=()
anchor_list=()
ns_list=()
for ((i = 1; i <= NHOSTS; i++)); do
    h=h$i ns=${ID}-h$i veth=${ID}v$i
    ip netns add "$ns"
    netns+=("$ns")
    ip link add "$veth" type veth peer name "${ID}p$i"
    ip link set "${ID}p$i" netns "$ns"
    ip link set "$veth" master "$BR" up
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "${ID}p$i" name eth0
    ip -n "$ns" addr add "$SUBNET.$((10 + i))/24" dev eth0
    ip -n "$ns" link set eth0 up
    # The anchor holds the host's UTS and mount namespaces: its hostname, its own
    # /dev/shm (ranks of different hosts share no memory) and /etc/hosts.
    ip netns exec "$ns" unshare --uts --mount --propagation private bash -c \
        "hostname $h && mount -t tmpfs -o size=2g,mode=1777 hpm-shm /dev/shm \
         && mount --bind '$WORK/hosts' /etc/hosts && touch '$WORK/$h.ready' && exec sleep infinity" &
    anchors+=("$!")
    disown "$!"
    for _ in $(seq 100); do [[ -e $WORK/$h.ready ]] && break; sleep 0.05; done
    [[ -e $WORK/$h.ready ]] || die "host $h did not come up"
    # The anchor is unshare's child after exec (unshare forks nothing: it execs bash).
    pid=${anchors[-1]}
    echo "$pid" >"$WORK/$h.pid"
    hosts+=("$h")
    veths+=("$veth")
    anchor_list+=("$h=$pid")
    ns_list+=("$h=$ns")
done

# The ssh stand-in: `ssh [-OPTIONS...] HOST COMMAND...` runs COMMAND (one shell
# line, as ssh does) on HOST, in its namespaces, in the current directory.
cat >"$WORK/ssh" <<EOF
#!/usr/bin/env bash
while [[ \${1:-} == -* ]]; do shift; done
host=\${1:?usage: ssh HOST COMMAND}; shift
pidfile=$WORK/\$host.pid
[[ -s \$pidfile ]] || { echo "ssh: \$host: no such host" >&2; exit 255; }
pid=\$(<"\$pidfile")
[[ -e /proc/\$pid ]] || { echo "ssh: connect to host \$host: host is down" >&2; exit 255; }
exec nsenter -t "\$pid" -u -m -n --wd="\$PWD" -- /bin/bash -c "\$*"
EOF
chmod 0755 "$WORK/ssh"

# Every host reaches the bridge's address by name, over its veth.
python3 -c '
import socket, sys
s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(16); s.settimeout(10)
print(s.getsockname()[1], flush=True)
for _ in range(int(sys.argv[2])):
    s.accept()[0].close()
' "$SUBNET.1" "$NHOSTS" >"$WORK/probe.port" &
probe=$!
for _ in $(seq 50); do [[ -s $WORK/probe.port ]] && break; sleep 0.1; done
for ((i = 1; i <= NHOSTS; i++)); do
    "$WORK/ssh" "h$i" "python3 -c 'import socket; socket.create_connection((\"login\", $(<"$WORK/probe.port")), 5)'" \
        || die "h$i cannot reach login ($SUBNET.1) over the bridge"
done
wait "$probe" || die "the reachability probe failed"

export HPCPAR_MH_HOSTS
HPCPAR_MH_HOSTS=$(IFS=,; echo "${hosts[*]}")
export HPCPAR_MH_SSH=$WORK/ssh HPCPAR_MH_BRIDGE_IP=$SUBNET.1
export HPCPAR_MH_VETHS="${veths[*]}" HPCPAR_MH_ANCHORS="${anchor_list[*]}" HPCPAR_MH_NETNS="${ns_list[*]}"
echo "multihost.sh: $NHOSTS hosts ($HPCPAR_MH_HOSTS) on bridge $BR $SUBNET.0/24, login $SUBNET.1"
"$@"
