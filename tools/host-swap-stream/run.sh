#!/bin/bash
# The host kernel's ratio for the bench row "write + read of 4x RAM (1024MiB on 256MiB) vs
# enough RAM": the same stream (stream.c) run by the host kernel in a memory cgroup of 256 MiB
# with zram swap, against the same stream without a limit, alternately, REPS times each.
# Needs root, /sys/block/zram0 (zram module) and the cgroup v1 memory controller or cgroup v2.
# It changes the host while it runs (zram0 becomes a swap device) and undoes it on exit;
# do not run it beside anything that needs the host's memory. See docs/bench.md.
set -euo pipefail
RAM_MIB=${RAM_MIB:-256}
SET_MIB=${SET_MIB:-1024}
REPS=${REPS:-5}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
cc -O2 -o "$work/stream" "$here/stream.c"
[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (zram and a memory cgroup)" >&2; exit 2; }
[ -e /sys/block/zram0 ] || modprobe zram 2>/dev/null || true
[ -e /sys/block/zram0 ] || { echo "run.sh: no /sys/block/zram0" >&2; exit 2; }
grep -q '^/dev/zram0 ' /proc/swaps && { echo "run.sh: zram0 is already a swap device" >&2; exit 2; }
# An unused device only (disksize 0): one set up for something else is never touched.
[ "$(cat /sys/block/zram0/disksize)" = 0 ] || { echo "run.sh: zram0 is in use (disksize set)" >&2; exit 2; }

if [ -d /sys/fs/cgroup/memory ]; then
    cg=/sys/fs/cgroup/memory/hmm-host-swap-stream
    mkdir -p "$cg"; echo $((RAM_MIB << 20)) > "$cg/memory.limit_in_bytes"
else
    cg=/sys/fs/cgroup/hmm-host-swap-stream
    echo +memory > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    mkdir -p "$cg"; echo $((RAM_MIB << 20)) > "$cg/memory.max"
fi
claimed=0
cleanup() {
    if [ "$claimed" = 1 ]; then
        swapoff /dev/zram0 2>/dev/null || true
        echo 1 > /sys/block/zram0/reset 2>/dev/null || true
    fi
    rmdir "$cg" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
echo $((2 * SET_MIB))M > /sys/block/zram0/disksize
claimed=1
mkswap /dev/zram0 > /dev/null
swapon /dev/zram0

tight=(); roomy=()
for _ in $(seq "$REPS"); do
    tight+=("$(sh -c "echo \$\$ > $cg/cgroup.procs && exec $work/stream $SET_MIB")")
    roomy+=("$("$work/stream" "$SET_MIB")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
mt=$(median "${tight[@]}"); mr=$(median "${roomy[@]}")
echo "host kernel, ${SET_MIB} MiB stream in ${RAM_MIB} MiB with zram swap: ${tight[*]} ns/page (median $mt)"
echo "host kernel, the same with enough RAM:                        ${roomy[*]} ns/page (median $mr)"
awk -v t="$mt" -v r="$mr" 'BEGIN { printf "ratio %.2f (the bench row target: <= 3)\n", t / r }'
