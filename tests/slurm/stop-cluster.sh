#!/usr/bin/env bash
# Stop the cluster that start-cluster.sh started in STATE_DIR: cancel its jobs, then end slurmd,
# slurmctld and munged by the pids in their pid files (each checked to still be that daemon), and
# remove the /etc/slurm symlinks that point into STATE_DIR. Safe to run twice or after a failed
# start; it touches nothing it did not start.
#
# Usage: stop-cluster.sh [STATE_DIR]        (or SLURM_TEST_DIR=STATE_DIR stop-cluster.sh)
set -uo pipefail

STATE=${1:-${SLURM_TEST_DIR:-}}
[ -n "$STATE" ] || { echo "usage: $0 STATE_DIR (or SLURM_TEST_DIR=STATE_DIR $0)" >&2; exit 2; }
[ -d "$STATE" ] || { echo "stop-cluster.sh: no state directory $STATE; nothing to stop"; exit 0; }
STATE=$(cd "$STATE" && pwd)

ours() {  # is /etc/slurm/$1 a symlink into this state directory?
    [ -L "/etc/slurm/$1" ] && [ "$(readlink "/etc/slurm/$1")" = "$STATE/etc/$1" ]
}

alive() {  # alive PIDFILE NAME: prints the pid when the file names a running NAME process
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ "$(cat "/proc/$pid/comm" 2> /dev/null)" = "$2" ] || return 1
    echo "$pid"
}

# Jobs first, while slurmctld can still cancel them (their slurmstepd processes would outlive
# slurmd otherwise). Only when the config in /etc/slurm is this cluster's.
if ours slurm.conf && alive "$STATE/slurmctld.pid" slurmctld > /dev/null; then
    jobs=$(squeue -h -o %i 2> /dev/null || true)
    if [ -n "$jobs" ]; then
        echo "cancelling jobs: $(echo $jobs)"
        # shellcheck disable=SC2086
        scancel $jobs 2> /dev/null || true
        for _ in $(seq 1 30); do
            [ -z "$(squeue -h -t running,completing -o %i 2> /dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

status=0
for entry in "slurmd.pid slurmd" "slurmctld.pid slurmctld" "munge/run/munged.pid munged"; do
    set -- $entry
    pid=$(alive "$STATE/$1" "$2") || continue
    kill "$pid" 2> /dev/null || true
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2> /dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2> /dev/null; then
        echo "stop-cluster.sh: $2 ($pid) ignored SIGTERM for 10 s; sending SIGKILL" >&2
        kill -KILL "$pid" 2> /dev/null || status=1
    fi
    echo "stopped $2 (pid $pid)"
done

for conf in slurm.conf gres.conf; do
    if ours "$conf"; then rm -f "/etc/slurm/$conf"; fi
done
exit "$status"
