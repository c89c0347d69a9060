#!/usr/bin/env bash
# A one-node Slurm cluster for the `slurm` tests: scripts/slurm-cluster.sh up | down | status | env
#
#   up      install slurm-wlm + munge from Debian if missing (needs root), write slurm.conf into a state folder,
#           start munged, slurmctld and slurmd, wait until the node is idle; prints `export SLURM_CONF=...`
#   down    stop the daemons that `up` started (by the pids it recorded; nothing else) and remove the folder
#   status  sinfo of the cluster, or why there is none
#   env     print the export line for the running cluster
#
# State lives in $DWC_SLURM_DIR (default /tmp/dwc-slurm): etc/slurm.conf, spool, state, logs, pids.
# Exit codes: 0 ok, 2 cannot start here (not root, not Debian, install failed), 1 a daemon failed to start.
set -euo pipefail

DIR="${DWC_SLURM_DIR:-/tmp/dwc-slurm}"
CONF="$DIR/etc/slurm.conf"
PIDS="$DIR/pids"

say() { printf 'slurm-cluster: %s\n' "$*" >&2; }

can_start() {
    if [ "$(id -u)" != 0 ]; then
        echo "not root (uid $(id -u)): a test cluster needs root to run slurmd and install packages"
        return 1
    fi
    if [ ! -f /etc/debian_version ]; then
        echo "not a Debian system: install Slurm and munge yourself and export SLURM_CONF"
        return 1
    fi
    return 0
}

install_if_missing() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null &&
        command -v sbatch >/dev/null; then
        return 0
    fi
    say "installing slurm-wlm and munge with apt-get"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >"$DIR/apt.log" 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$DIR/apt.log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >>"$DIR/apt.log" 2>&1 || {
            say "apt-get install slurm-wlm munge failed (log: $DIR/apt.log)"
            return 1
        }
    fi
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

pid_of() { # name -> recorded pid
    [ -f "$PIDS" ] && awk -v n="$1" '$1 == n {print $2}' "$PIDS" | tail -n 1
}

running() {
    local p
    p="$(pid_of slurmctld)"
    alive "$p" && p="$(pid_of slurmd)" && alive "$p"
}

write_conf() {
    local host cpus mem plugdir
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run" "$DIR/munge"
    chmod 755 "$DIR" "$DIR/munge"
    cat >"$CONF" <<EOF
# written by scripts/slurm-cluster.sh — a one-node test cluster
ClusterName=dwc
SlurmctldHost=$host
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${DWC_SLURM_PORT:-6917}
SlurmdPort=$((${DWC_SLURM_PORT:-6917} + 1))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
KillWait=10
MinJobAge=600
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
}

up() {
    local why
    if ! why="$(can_start)"; then
        say "cannot start a test cluster: $why"
        return 2
    fi
    mkdir -p "$DIR"
    if running; then
        say "already up ($CONF)"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    install_if_missing || return 2
    write_conf
    : >"$PIDS"
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
    fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    munged --force --socket="$DIR/munge/munge.socket" --pid-file="$DIR/run/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed" || {
        say "munged failed to start (log: $DIR/log/munged.log)"
        return 1
    }
    echo "munged $(cat "$DIR/run/munged.pid")" >>"$PIDS"
    export SLURM_CONF="$CONF"
    slurmctld -f "$CONF" || { say "slurmctld failed (log: $DIR/log/slurmctld.log)"; return 1; }
    for _ in $(seq 50); do [ -s "$DIR/run/slurmctld.pid" ] && break; sleep 0.2; done
    echo "slurmctld $(cat "$DIR/run/slurmctld.pid")" >>"$PIDS"
    slurmd -f "$CONF" || { say "slurmd failed (log: $DIR/log/slurmd.log)"; return 1; }
    for _ in $(seq 50); do [ -s "$DIR/run/slurmd.pid" ] && break; sleep 0.2; done
    echo "slurmd $(cat "$DIR/run/slurmd.pid")" >>"$PIDS"
    for _ in $(seq 60); do
        if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            say "up: $(sinfo -h -o '%N %t %c CPUs' 2>/dev/null)"
            echo "export SLURM_CONF=$CONF"
            return 0
        fi
        sleep 0.5
    done
    say "the node did not become idle in 30 s (logs: $DIR/log/)"
    return 1
}

down() {
    if [ ! -f "$PIDS" ]; then
        say "not up (no $PIDS)"
        return 0
    fi
    export SLURM_CONF="$CONF"
    if command -v scancel >/dev/null; then scancel --quiet --partition=debug 2>/dev/null || true; fi
    local name pid
    for name in slurmd slurmctld munged; do
        pid="$(pid_of "$name")"
        if alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do alive "$pid" || break; sleep 0.2; done
            if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        fi
    done
    rm -rf "$DIR"
    say "down"
}

status() {
    if running; then
        SLURM_CONF="$CONF" sinfo
        return 0
    fi
    local why
    if ! why="$(can_start)"; then
        echo "no test cluster: $why"
    else
        echo "no test cluster running (start one: scripts/slurm-cluster.sh up)"
    fi
    return 1
}

case "${1:-}" in
up) up ;;
down) down ;;
status) status ;;
env) running && echo "export SLURM_CONF=$CONF" ;;
*)
    echo "usage: $0 up | down | status | env" >&2
    exit 2
    ;;
esac
