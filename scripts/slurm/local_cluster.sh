#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (tests, trying the sbatch scripts on a laptop).
#   bash scripts/slurm/local_cluster.sh start [DIR]   # prints `export SLURM_CONF=DIR/slurm.conf`
#   bash scripts/slurm/local_cluster.sh stop  [DIR]
# Needs root and the Debian packages slurm-wlm (or slurmctld + slurmd + slurm-client) and munge. Everything it
# writes (munge key and socket, slurm.conf, state, logs, pid files) lives in DIR (default /tmp/llm4trx-slurm);
# stop ends exactly the daemons whose pid files are in DIR.
set -euo pipefail
action=${1:-}
dir=${2:-${LLM4TRX_SLURM_DIR:-/tmp/llm4trx-slurm}}
case $action in start|stop) ;; *) echo "usage: $0 start|stop [DIR]" >&2; exit 2 ;; esac

stop_pidfile() {  # stop_pidfile FILE: TERM the process named in FILE, wait until it is gone
  local pid
  [[ -f $1 ]] || return 0
  pid=$(cat "$1")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

if [[ $action == stop ]]; then
  for daemon in slurmd slurmctld munged; do stop_pidfile "$dir/$daemon.pid"; done
  exit 0
fi

for bin in munged slurmctld slurmd sbatch; do
  command -v "$bin" >/dev/null || { echo "local_cluster.sh: '$bin' not found; install the Debian packages: apt-get install -y slurm-wlm munge" >&2; exit 3; }
done
[[ $(id -u) == 0 ]] || { echo "local_cluster.sh: must run as root (slurmd and munged here run as root)" >&2; exit 3; }

mkdir -p "$dir"/{state,spool}
chmod 700 "$dir"
[[ -f $dir/munge.key ]] || { dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none; chmod 400 "$dir/munge.key"; }
host=$(hostname -s)
# The node line as slurmd itself detects this machine (CPUs, sockets, cores, memory), so slurmd accepts it.
node=$(slurmd -C | head -1)
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s); one machine
# with one clock needs little margin, so a requeue (tests/test_slurm.py) restarts in seconds, not minutes.
# A requeued job becomes eligible then (EligibleTime) but is started only by the main scheduler's next periodic
# pass (measured: 46 s after it with the default sched_interval of 60 s, 1 s with 2 s); one node and a handful
# of jobs make frequent passes cheap.
cat > "$dir/slurm.conf" <<CONF
ClusterName=llm4trx-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket,cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=${LLM4TRX_SLURMCTLD_PORT:-6817}
SlurmdPort=${LLM4TRX_SLURMD_PORT:-6818}
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
MinJobAge=300
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf

munged --force --socket="$dir/munge.socket" --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
  --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"

# Ready when the controller answers and the node takes jobs.
for _ in $(seq 100); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
  [[ $state == idle || $state == mixed || $state == allocated ]] && { echo "export SLURM_CONF=$SLURM_CONF"; exit 0; }
  sleep 0.2
done
echo "local_cluster.sh: node $host did not become idle (state '${state:-no answer}'); see $dir/slurmctld.log and $dir/slurmd.log" >&2
exit 1
