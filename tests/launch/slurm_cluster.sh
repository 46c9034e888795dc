#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests/launch/test_slurm.py.
#
#   bash tests/launch/slurm_cluster.sh install   # apt-get the Debian packages (root)
#   bash tests/launch/slurm_cluster.sh start     # munged + slurmctld + slurmd, wait until the node is idle
#   bash tests/launch/slurm_cluster.sh stop      # stop the three daemons this script started
#   bash tests/launch/slurm_cluster.sh status    # exit 0 if the cluster answers
#
# Everything lives under $DTRAIN_SLURM_DIR (default /tmp/dtrain-slurm): slurm.conf, state,
# spool, logs, pid files. Clients find the cluster through SLURM_CONF=$DTRAIN_SLURM_DIR/slurm.conf
# (the test suite sets it; jobs inherit it). No systemd, no accounting database.
set -euo pipefail

DIR=${DTRAIN_SLURM_DIR:-/tmp/dtrain-slurm}
NODE=$(hostname -s)
CPUS=${DTRAIN_SLURM_CPUS:-8}  # advertised CPUs (more than the host has, so a few tasks fit at once)
export SLURM_CONF=$DIR/slurm.conf

write_conf() {
  mkdir -p "$DIR"/{ctld,spool,munge}
  chmod 755 "$DIR" "$DIR/munge"  # the munge socket dir must be world-executable or clients cannot connect
  cat > "$SLURM_CONF" <<EOF
# Written by tests/launch/slurm_cluster.sh: one node, root, no accounting.
ClusterName=dtrain
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=${DTRAIN_SLURMCTLD_PORT:-16817}
SlurmdPort=${DTRAIN_SLURMD_PORT:-16818}
# linuxproc tracks every descendant by its parent pid: no cgroups needed in a container.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Fast turnaround for tests: scheduler passes, requeue, kill of a finished step.
SchedulerParameters=sched_interval=1,defer_batch
MessageTimeout=20
KillWait=10
MinJobAge=600
SlurmdTimeout=60
# The node advertises $CPUS CPUs whatever the host has (config_overrides), and 4 GPUs that are
# only a count (no device files): the templates' --gpus-per-node requests are granted and
# SLURM_GPUS_ON_NODE is set, while the recipes run with device=cpu.
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=1000 Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  # Stand-ins for /dev/nvidia0..3: slurmd wants one character device per GPU and, with
  # task/none, only checks that it exists. Nothing opens them.
  printf "NodeName=$NODE Name=gpu File=%s\n" /dev/null /dev/zero /dev/full /dev/urandom > "$DIR/gres.conf"
}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  command -v slurmctld >/dev/null || { echo "slurmctld not installed: run '$0 install' (root)" >&2; exit 1; }
  write_conf
  # A fresh controller state: no jobs or drained node left over from an earlier start.
  running "$DIR/slurmctld.pid" || rm -rf "${DIR:?}"/ctld/* "${DIR:?}"/spool/*
  if ! running "$DIR/munged.pid"; then
    [[ -f /etc/munge/munge.key ]] || mungekey --create --keyfile /etc/munge/munge.key
    munged --force --socket "$DIR/munge/munge.socket" --pid-file "$DIR/munged.pid" \
      --log-file "$DIR/munged.log" --seed-file "$DIR/munged.seed"
  fi
  running "$DIR/slurmctld.pid" || slurmctld -f "$SLURM_CONF"
  running "$DIR/slurmd.pid" || slurmd -f "$SLURM_CONF" -N "$NODE"
  for _ in $(seq 60); do
    if state=$(sinfo -h -N -o %t 2>/dev/null) && [[ $state == idle* || $state == mix* ]]; then
      echo "slurm cluster up: node $NODE ($state), SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 1
  done
  echo "slurm cluster did not come up; logs in $DIR" >&2
  tail -n 20 "$DIR"/slurmctld.log "$DIR"/slurmd.log >&2 || true
  exit 1
}

stop() {
  # Only the daemons whose pid files this script's start wrote; no pkill by name.
  for d in slurmd slurmctld munged; do
    if running "$DIR/$d.pid"; then
      pid=$(cat "$DIR/$d.pid")
      kill "$pid"
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$DIR/$d.pid"
  done
  echo "slurm cluster stopped"
}

case ${1:-} in
  install) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null ;;
  start) start ;;
  stop) stop ;;
  status) sinfo -h -N -o "%N %t" ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
