#!/usr/bin/env bash
# Remove MPICH shared-memory segments (/dev/shm/mpich_shm_*) that no running process
# maps. A rank killed with SIGKILL - the fault tests do that on purpose - cannot
# remove its own, and /dev/shm lives in RAM, so the leftovers of many runs add up.
# Only this user's segments older than a minute are touched.
set -u
now=$(date +%s)
maps=$(cat /proc/[0-9]*/maps 2>/dev/null | grep -o '/dev/shm/[^ ]*' | sort -u)
removed=0
for f in /dev/shm/mpich_shm_*; do
  [ -f "$f" ] && [ -O "$f" ] || continue
  grep -qxF "$f" <<<"$maps" && continue
  [ $((now - $(stat -c %Y "$f"))) -ge 60 ] || continue
  rm -f "$f" && removed=$((removed + 1))
done
echo "clean-shm: removed $removed stale MPICH shared-memory segments"
