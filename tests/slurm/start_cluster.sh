#!/usr/bin/env bash
# Start a real single-host Slurm (Debian's slurm-wlm + munge) for the sbatch tests.
#   tests/slurm/start_cluster.sh STATE_DIR     -> prints the slurm.conf path; export SLURM_CONF to use it
#   tests/slurm/start_cluster.sh --stop STATE_DIR
# Installs the Debian packages when they are missing and we are root; exits 3 when Slurm cannot be had.
set -euo pipefail

if [[ "${1:-}" == "--stop" ]]; then
  dir=$2
  for pidfile in "$dir"/slurmd.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
    [[ -f "$pidfile" ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  exit 0
fi

dir=$(realpath -m "${1:?usage: start_cluster.sh STATE_DIR}")
mkdir -p "$dir"/{spool,state,log,munge}

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  if [[ $(id -u) -ne 0 ]]; then echo "slurm-wlm/munge missing and not root" >&2; exit 3; fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >"$dir/log/apt.log" 2>&1 \
    || { echo "could not install slurm-wlm/munge (see $dir/log/apt.log)" >&2; exit 3; }
fi

# munge: a private key and socket in the state dir, so nothing system-wide is touched
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.sock" --pid-file="$dir/munged.pid" \
  --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed" --force
host=$(hostname -s)
cpus=$(nproc --all)  # plain nproc honours OMP_NUM_THREADS
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$dir/slurm.conf" <<CONF
ClusterName=affectverse-test
SlurmctldHost=$host
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
GresTypes=gpu
SlurmctldPort=$(( 16817 + RANDOM % 1000 ))
SlurmdPort=$(( 17817 + RANDOM % 1000 ))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
KillWait=10
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 1 60); do
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then echo "$SLURM_CONF"; exit 0; fi
  sleep 1
done
echo "slurm did not come up; logs in $dir/log" >&2
exit 3
