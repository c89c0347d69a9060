#!/usr/bin/env bash
# A one-node Slurm cluster for the `slurm` tests: scripts/slurm-cluster.sh up | down | status | env
#
#   up      install slurm-wlm + munge from Debian if missing (needs root), write slurm.conf into a state folder,
#           start munged, slurmctld and slurmd, wait until the node is idle; prints `export SLURM_CONF=...`.
#           A cluster it started earlier with a different slurm.conf (an older version of this script) is
#           restarted with the new one (down, then up); one with the same configuration is left running.
#           Each daemon's pid is recorded as soon as it has one. When a daemon fails to start (or the node does
#           not become idle), up stops what it started before returning 1; what an earlier, failed up left running
#           (recorded, but no full cluster) is stopped before starting again. Recorded pids are only ever dropped
#           once their process is gone.
#   down    stop the daemons that `up` started (by the pids it recorded; nothing else) and remove the folder
#   status  sinfo of the cluster, or why there is none
#   env     print the export line for the running cluster (and a warning on stderr if its slurm.conf is out of date)
#
# Partitions (one node): debug (default, low priority, preempted jobs are requeued by Slurm), debug-cancel (low
# priority, preempted jobs get SIGTERM and $DWC_SLURM_GRACE (default 20) seconds, then are cancelled) and urgent
# (high priority: its jobs preempt the others'). See conf_text for the details.
#
# State lives in $DWC_SLURM_DIR (default /tmp/dwc-slurm): etc/slurm.conf, spool, state, logs, pids.
# Exit codes: 0 ok, 2 cannot start here (not root, not Debian, install failed), 1 a daemon failed to start.
set -euo pipefail

DIR="${DWC_SLURM_DIR:-/tmp/dwc-slurm}"
CONF="$DIR/etc/slurm.conf"
PIDS="$DIR/pids"
GRACE="${DWC_SLURM_GRACE:-20}" # seconds a job preempted in debug-cancel gets between SIGTERM and SIGKILL

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

ours() { # name pid: the pid is alive and is still that daemon (not a later process that reuses a dead one's pid)
    alive "${2:-}" && [ "$(cat "/proc/$2/comm" 2>/dev/null)" = "$1" ]
}

pid_of() { # name -> recorded pid
    [ -f "$PIDS" ] && awk -v n="$1" '$1 == n {print $2}' "$PIDS" | tail -n 1
}

running() {
    local p
    p="$(pid_of slurmctld)"
    ours slurmctld "$p" && p="$(pid_of slurmd)" && ours slurmd "$p"
}

stop_recorded() { # stop every daemon recorded in $PIDS, the last started first; 1 (keeping its line) if one survives
    [ -f "$PIDS" ] || return 0
    local name pid left=""
    while read -r name pid; do
        [ -n "${pid:-}" ] || continue
        if ours "$name" "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do ours "$name" "$pid" || break; sleep 0.2; done
            if ours "$name" "$pid"; then
                kill -KILL "$pid" 2>/dev/null || true
                sleep 0.5
            fi
            if ours "$name" "$pid"; then left="$left$name $pid"$'\n'; fi
        fi
    done < <(tac "$PIDS")
    printf '%s' "$left" >"$PIDS"
    [ -z "$left" ]
}

record() { # name pidfile: wait for the daemon's pid file and append "name pid" to $PIDS; 1 if none or it died
    local name="$1" file="$2" pid=""
    for _ in $(seq 50); do
        if [ -s "$file" ]; then
            pid="$(cat "$file")"
            break
        fi
        sleep 0.2
    done
    [ -n "$pid" ] || return 1
    echo "$name $pid" >>"$PIDS"
    ours "$name" "$pid"
}

fail_up() { # why: stop what this `up` started (its recorded pids), say why; the caller returns 1
    say "$1; stopping what this up started"
    stop_recorded || say "still running (recorded in $PIDS for down): $(tr '\n' ' ' <"$PIDS")"
}

conf_text() { # the slurm.conf this script wants, on stdout
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    cat <<EOF
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
# Preemption on one node: a job of the high-priority partition "urgent" (PriorityTier 10) that needs CPUs held by
# jobs of a low-priority partition preempts them:
#  - "debug" (the default) requeues them at once: SIGTERM, KillWait seconds, then the same job id is pending again
#    (held for AuthInfo's cred_expire, 120 s by default: Reason=BeginTime), then restarts with SLURM_RESTART_COUNT + 1;
#  - "debug-cancel" cancels them after a grace time: their own --signal (dwc's B:TERM, to the batch script) at
#    once (preempt_send_user_signal), SIGKILL after GraceTime seconds. A job that checkpoints and exits in time
#    ends FAILED/COMPLETED with a PreemptTime; one still running at the end ends PREEMPTED. (Without
#    preempt_send_user_signal Slurm signals only job steps: a batch script with no srun step hears nothing until
#    it is killed.)
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4 PriorityTier=1 PreemptMode=REQUEUE
PartitionName=debug-cancel Nodes=$host MaxTime=INFINITE State=UP OverSubscribe=FORCE:4 PriorityTier=1 PreemptMode=CANCEL GraceTime=$GRACE
PartitionName=urgent Nodes=$host MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=10 PreemptMode=OFF
EOF
}

write_conf() {
    mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run" "$DIR/munge"
    chmod 755 "$DIR" "$DIR/munge"
    conf_text >"$CONF"
}

stale() { # the running cluster's slurm.conf is not the one this script writes now (an older version of it)
    [ -f "$CONF" ] && ! conf_text | cmp -s - "$CONF"
}

up() {
    local why
    if ! why="$(can_start)"; then
        say "cannot start a test cluster: $why"
        return 2
    fi
    mkdir -p "$DIR"
    if running; then
        if ! stale; then
            say "already up ($CONF)"
            echo "export SLURM_CONF=$CONF"
            return 0
        fi
        # started by an older version of this script (e.g. without the preemption partitions): restart it
        say "the running cluster's slurm.conf is out of date: restarting it (its jobs are cancelled)"
        down
        mkdir -p "$DIR"
    fi
    install_if_missing || return 2
    if [ -s "$PIDS" ]; then # an earlier up that failed partway, or a cluster whose slurmctld or slurmd died
        say "stopping what an earlier up left running ($(tr '\n' ' ' <"$PIDS"))"
        if ! stop_recorded; then
            say "cannot start: these recorded daemons did not stop: $(tr '\n' ' ' <"$PIDS")"
            return 1
        fi
    fi
    write_conf
    touch "$PIDS"
    rm -f "$DIR/run/munged.pid" "$DIR/run/slurmctld.pid" "$DIR/run/slurmd.pid" # a stale one would be recorded
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
    fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    if ! munged --force --socket="$DIR/munge/munge.socket" --pid-file="$DIR/run/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed" ||
        ! record munged "$DIR/run/munged.pid"; then
        fail_up "munged failed to start (log: $DIR/log/munged.log)"
        return 1
    fi
    export SLURM_CONF="$CONF"
    if ! slurmctld -f "$CONF" || ! record slurmctld "$DIR/run/slurmctld.pid"; then
        fail_up "slurmctld failed to start (log: $DIR/log/slurmctld.log)"
        return 1
    fi
    if ! slurmd -f "$CONF" || ! record slurmd "$DIR/run/slurmd.pid"; then
        fail_up "slurmd failed to start (log: $DIR/log/slurmd.log)"
        return 1
    fi
    for _ in $(seq 60); do
        if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            say "up: $(sinfo -h -o '%N %t %c CPUs' 2>/dev/null)"
            echo "export SLURM_CONF=$CONF"
            return 0
        fi
        sleep 0.5
    done
    fail_up "the node did not become idle in 30 s (logs: $DIR/log/)"
    return 1
}

down() {
    if [ ! -f "$PIDS" ]; then
        say "not up (no $PIDS)"
        return 0
    fi
    export SLURM_CONF="$CONF"
    if command -v scancel >/dev/null; then
        for part in debug debug-cancel urgent; do scancel --quiet --partition="$part" 2>/dev/null || true; done
    fi
    if ! stop_recorded; then
        say "these daemons did not stop (kept in $PIDS): $(tr '\n' ' ' <"$PIDS")"
        return 1
    fi
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
env)
    running || exit 1
    if stale; then say "warning: the running cluster's slurm.conf is out of date; restart it: $0 up"; fi
    echo "export SLURM_CONF=$CONF"
    ;;
*)
    echo "usage: $0 up | down | status | env" >&2
    exit 2
    ;;
esac
