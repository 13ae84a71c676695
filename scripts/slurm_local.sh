#!/usr/bin/env bash
# A single-node SLURM on this machine, for tests and trying cluster sweeps (docs/cluster.md).
#
#   scripts/slurm_local.sh start    # munged (as the munge user), slurmctld, slurmd; idempotent
#   scripts/slurm_local.sh status   # exit 0 when it answers, 3 when it is not running
#   scripts/slurm_local.sh env      # prints: export SLURM_CONF=<state dir>/slurm.conf
#   scripts/slurm_local.sh stop     # cancels its jobs, stops what `start` started
#
# Needs root and Debian's packages (apt-get install -y slurm-wlm munge); no systemd. Everything
# it writes lives in $ATBPTT_SLURM_DIR (default /tmp/atbptt-slurm): slurm.conf, state, spool,
# logs and the pid files; only a missing /run/munge (and, if absent, /etc/munge/munge.key) is
# created outside it. Clients find the cluster through SLURM_CONF (`eval "$(... env)"`).
# A munged that was already running is used and left running. Settings: ATBPTT_SLURM_DIR,
# ATBPTT_SLURM_PARTITION (default debug), ATBPTT_SLURM_PORT (slurmctld; slurmd the next port,
# default 6817), ATBPTT_SLURM_CPUS (default: all cores).
# Bad input or a missing prerequisite: one line on stderr, exit 2.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

DIR="${ATBPTT_SLURM_DIR:-/tmp/atbptt-slurm}"
PARTITION="${ATBPTT_SLURM_PARTITION:-debug}"
PORT="${ATBPTT_SLURM_PORT:-6817}"
CPUS="${ATBPTT_SLURM_CPUS:-}"  # default: all cores (set in check_settings)
CONF="$DIR/slurm.conf"
NODE=""  # this host's short name (set in check_settings)
export SLURM_CONF="$CONF"
ME="slurm_local.sh"

die() { echo "$ME: error: $*" >&2; exit 2; }
say() { echo "$ME: $*"; }

need_packages() {
    local missing=()
    for cmd in munged munge unmunge slurmctld slurmd slurmstepd sbatch srun scontrol squeue scancel sinfo; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    [ ${#missing[@]} -eq 0 ] || die "${missing[*]} not found; install the packages first: apt-get update && apt-get install -y slurm-wlm munge"
}

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (the daemons run with SlurmUser=root; munged is started as the munge user)"
}

check_settings() {
    NODE="$(hostname -s)"
    CPUS="${CPUS:-$(nproc)}"
    [[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1024 ] && [ "$PORT" -le 65534 ] \
        || die "ATBPTT_SLURM_PORT=$PORT is not allowed; use a port in 1024..65534"
    [[ "$CPUS" =~ ^[1-9][0-9]*$ ]] || die "ATBPTT_SLURM_CPUS=$CPUS is not allowed; use an integer >= 1"
    [[ "$PARTITION" =~ ^[A-Za-z0-9_-]+$ ]] \
        || die "ATBPTT_SLURM_PARTITION=$PARTITION is not allowed; use letters, digits, '_' or '-'"
}

# pid of a daemon we started, if it is still alive and still that program
alive() {
    local name="$1" file="$DIR/$1.pid" pid
    [ -s "$file" ] || return 1
    pid="$(cat "$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm")" = "$name" ] || return 1
    echo "$pid"
}

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

answers() { alive slurmctld >/dev/null && alive slurmd >/dev/null && scontrol ping 2>/dev/null | grep -q UP; }

wait_for() {  # wait_for SECONDS COMMAND...: poll every 0.2 s
    local tries=$(( $1 * 5 )); shift
    for _ in $(seq "$tries"); do "$@" && return 0; sleep 0.2; done
    return 1
}

write_conf() {
    local mem
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    cat >"$CONF" <<EOF
# written by scripts/slurm_local.sh: a single-node cluster, no accounting, no cgroups
ClusterName=atbptt-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
ReturnToService=2
KillWait=2
MinJobAge=300
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if munge_works; then return 0; fi  # someone's munged: use it, leave it alone
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile /etc/munge/munge.key >/dev/null 2>&1 \
            || die "cannot create /etc/munge/munge.key (mungekey --create failed)"
        chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid \
        || die "munged did not start (see /var/log/munge/munged.log)"
    cp /run/munge/munged.pid "$DIR/munged.pid"  # ours: `stop` ends it
    wait_for 10 munge_works || die "munged started but munge -n | unmunge fails (see /var/log/munge/munged.log)"
}

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n1; }
node_idle() { case "$(node_state)" in idle*|mix*|alloc*) return 0;; *) return 1;; esac; }

start() {
    need_packages; need_root; check_settings
    if answers; then
        say "already running (partition $PARTITION, node $NODE); export SLURM_CONF=$CONF"
        return 0
    fi
    stop_daemons quiet  # a half-started earlier attempt
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    start_munge
    write_conf
    slurmctld -c -f "$CONF" || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
    wait_for 20 alive slurmctld >/dev/null || die "slurmctld exited (see $DIR/log/slurmctld.log)"
    slurmd -f "$CONF" || die "slurmd did not start (see $DIR/log/slurmd.log)"
    wait_for 20 answers || die "the controller does not answer scontrol ping (see $DIR/log/)"
    if ! wait_for 20 node_idle; then
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        wait_for 10 node_idle || die "node $NODE is '$(node_state)', not idle (see $DIR/log/slurmd.log)"
    fi
    say "running: partition $PARTITION, node $NODE, $CPUS CPUs; export SLURM_CONF=$CONF"
}

stop_pid() {  # stop_pid NAME: TERM, then KILL after 10 s
    local pid
    pid="$(alive "$1")" || { rm -f "$DIR/$1.pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    wait_for 10 test ! -e "/proc/$pid" || kill -KILL "$pid" 2>/dev/null || true
    wait_for 5 test ! -e "/proc/$pid" || true
    rm -f "$DIR/$1.pid"
}

stop_daemons() {
    local quiet="${1:-}" was=0
    if alive slurmctld >/dev/null || alive slurmd >/dev/null || alive munged >/dev/null; then was=1; fi
    if answers; then  # cancel this cluster's jobs so that no job process outlives slurmd
        scancel --partition="$PARTITION" >/dev/null 2>&1 || true
        wait_for 15 test -z "$(squeue -h -o %i 2>/dev/null)" || true
    fi
    stop_pid slurmd
    stop_pid slurmctld
    stop_pid munged
    if [ -z "$quiet" ]; then
        if [ "$was" -eq 1 ]; then say "stopped"; else say "not running"; fi
    fi
}

status() {
    if answers; then
        say "running: partition $PARTITION, node $NODE ($(node_state)); export SLURM_CONF=$CONF"
        squeue -h -o "%i %j %T" 2>/dev/null | sed "s/^/$ME:   job /"
        return 0
    fi
    say "not running"
    return 3
}

case "${1:-}" in
    start) start ;;
    stop) check_settings; stop_daemons ;;
    status) check_settings; status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "unknown command '${1:-}'; allowed: start, stop, status, env" ;;
esac
