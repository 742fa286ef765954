#!/usr/bin/env bash
# Start a throw-away one-node SLURM cluster on 127.0.0.1 for tests/test_slurm.py:
# munged, slurmctld and slurmd from Debian's packages, one fake GRES GPU (File=/dev/null), no
# accounting database. Everything the daemons write (config, state, logs, pid files, the munge key
# and socket) lives under STATE_DIR; the only files outside it are the symlinks
# /etc/slurm/slurm.conf and /etc/slurm/gres.conf (Slurm's commands inside a Snakemake job do not
# see SLURM_CONF, so the config has to sit at the default path).
#
# Usage: start-cluster.sh [STATE_DIR]        (or SLURM_TEST_DIR=STATE_DIR start-cluster.sh)
# Stop:  stop-cluster.sh STATE_DIR           (kills every daemon started here by its pid)
#
# Exit status: 0 cluster up and the node idle; 3 this machine cannot host it (not root, no
# apt-get, Slurm config or daemons already present); 1 anything else (logs are printed).
set -euo pipefail

STATE=${1:-${SLURM_TEST_DIR:-}}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

cannot() {
    echo "start-cluster.sh: cannot start SLURM here: $*" >&2
    exit 3
}

[ -n "$STATE" ] || { echo "usage: $0 STATE_DIR (or SLURM_TEST_DIR=STATE_DIR $0)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || cannot "must run as root (uid is $(id -u))"
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
case "$STATE" in
    *[!A-Za-z0-9_./-]*) cannot "state directory '$STATE' has characters slurm.conf cannot take" ;;
esac

# --- 1. packages -------------------------------------------------------------------------------
missing=0
for tool in munged slurmctld slurmd sinfo sbatch squeue scontrol; do
    command -v "$tool" > /dev/null || missing=1
done
if [ "$missing" = 1 ]; then
    command -v apt-get > /dev/null || cannot "slurm-wlm/munge are not installed and there is no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' maintainer scripts from starting daemons of their own (they would hold
    # the ports and the default munge socket): a policy-rc.d that says no, unless one exists.
    own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=/usr/sbin/policy-rc.d
    fi
    status=0
    { apt-get update -q && apt-get install -y -q slurm-wlm munge; } || status=$?
    [ -z "$own_policy" ] || rm -f "$own_policy"
    [ "$status" = 0 ] || { echo "start-cluster.sh: apt-get failed (status $status)" >&2; exit 1; }
fi

# --- 2. nothing else may be in the way ----------------------------------------------------------
for conf in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
    if [ -e "$conf" ] && [ ! -L "$conf" ]; then
        cannot "$conf is a real file (a Slurm installation of this machine); not touching it"
    fi
done
for port in 6817 6818; do
    if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
        cannot "something already listens on 127.0.0.1:$port (another slurmctld/slurmd?)"
    fi
done

# From here on a failure stops whatever was started.
trap 'status=$?; echo "start-cluster.sh: failed (status $status); logs follow" >&2;
      tail -n 30 "$STATE"/log/*.log "$STATE"/munge/munged.log >&2 2> /dev/null || true;
      "$HERE/stop-cluster.sh" "$STATE" >&2 || true; exit 1' ERR

# --- 3. munge: its own key, socket and pid file under the state directory ----------------------
# munged wants execute permission for everybody on the socket's directory and all above it.
chmod 755 "$STATE"
dir=$(dirname "$STATE")
while [ "$dir" != / ]; do
    perms=$(stat -c %A "$dir")
    case "${perms:9:1}" in
        x | t) ;;
        *) cannot "munged needs o+x on every directory above its socket; $dir is $perms" ;;
    esac
    dir=$(dirname "$dir")
done
mkdir -p -m 755 "$STATE/munge" "$STATE/munge/run"
MUNGE_SOCKET="$STATE/munge/run/munge.socket"
if [ -s "$STATE/munge/run/munged.pid" ] && kill -0 "$(cat "$STATE/munge/run/munged.pid")" 2> /dev/null; then
    cannot "a munged from an earlier start still runs in $STATE; run stop-cluster.sh $STATE first"
fi
rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"  # left over by a munged that was killed
if [ ! -s "$STATE/munge/munge.key" ]; then
    (umask 077 && dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none)
fi
munged --socket="$MUNGE_SOCKET" --key-file="$STATE/munge/munge.key" \
    --log-file="$STATE/munge/munged.log" --pid-file="$STATE/munge/run/munged.pid" \
    --seed-file="$STATE/munge/munged.seed"
munge -S "$MUNGE_SOCKET" -n | unmunge -S "$MUNGE_SOCKET" > /dev/null

# --- 4. slurm.conf and gres.conf ----------------------------------------------------------------
HOST=$(hostname -s)
CPUS=$(nproc)
# The node's memory as SLURM sees it. Nothing enforces it here (no cgroups), so it is declared
# generously (with SlurmdParameters=config_overrides) for the profile's real --mem requests to be
# schedulable on a small CI runner; SLURM_TEST_NODE_MEM_MB sets it.
MEM_MB=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 - 1024 }' /proc/meminfo)
MEM_MB=${SLURM_TEST_NODE_MEM_MB:-$((MEM_MB > 32768 ? MEM_MB : 32768))}
mkdir -p "$STATE/etc" "$STATE/ctld" "$STATE/spool" "$STATE/log"
cat > "$STATE/etc/slurm.conf" << EOF
# Written by tests/slurm/start-cluster.sh: one node on 127.0.0.1, one fake GPU, no accounting.
ClusterName=snakemake-test
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${MUNGE_SOCKET}
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${STATE}/ctld
SlurmdSpoolDir=${STATE}/spool
SlurmctldPidFile=${STATE}/slurmctld.pid
SlurmdPidFile=${STATE}/slurmd.pid
SlurmctldLogFile=${STATE}/log/slurmctld.log
SlurmdLogFile=${STATE}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# No cgroups in containers/sandboxes: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue/scontrol this long (seconds); without accounting, the
# Snakemake plugin's squeue status command depends on it.
MinJobAge=600
# A job that asks for no memory gets this much per CPU (not the whole node).
DefMemPerCPU=1000
GresTypes=gpu
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
# A second, non-default partition: a job lands here only when asked for (-p test).
PartitionName=test Nodes=${HOST} Default=NO MaxTime=INFINITE State=UP
EOF
# A GPU needs a device file, or slurmd drops it and the node is INVAL; /dev/null stands in.
echo "NodeName=${HOST} Name=gpu File=/dev/null" > "$STATE/etc/gres.conf"
mkdir -p /etc/slurm
ln -sfn "$STATE/etc/slurm.conf" /etc/slurm/slurm.conf
ln -sfn "$STATE/etc/gres.conf" /etc/slurm/gres.conf

# --- 5. daemons (they fork; their pids end up in the pid files above) ---------------------------
slurmctld
slurmd
for _ in $(seq 1 60); do
    [ "$(sinfo -h -N -o %T 2> /dev/null | sort -u)" = idle ] && break
    sleep 0.5
done
if [ "$(sinfo -h -N -o %T 2> /dev/null | sort -u)" != idle ]; then
    sinfo -N -l >&2 || true
    false  # -> the ERR trap: logs, stop-cluster.sh, exit 1
fi
trap - ERR
sinfo -o '%P %N %T %c %m %G'
echo "SLURM is up; state in $STATE; stop it with: $HERE/stop-cluster.sh $STATE"
