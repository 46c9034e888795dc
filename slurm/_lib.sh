# Sourced by every template in slurm/: environment, layout variables, and preemption + requeue.
# Not a job script itself. Submit templates from the repository root (they cd to $SLURM_SUBMIT_DIR).

# Site setup (modules, venv, NCCL tuning) lives in slurm/env.sh, which you create from
# slurm/env.example.sh; the templates stay site-independent.
dtrain_setup() {
  cd "${SLURM_SUBMIT_DIR:?not inside a SLURM job}" || exit 1
  if [[ ! -f recipes/${1##*/} && ! -f $1 ]]; then
    echo "dtrain: first argument must be a recipe script (e.g. recipes/mnist_cnn.py), got '${1:-}'" >&2
    exit 2
  fi
  # shellcheck source=/dev/null
  [[ -f slurm/env.sh ]] && source slurm/env.sh
  export PYTHONUNBUFFERED=1  # log lines appear in the .out file as they happen
  # torchrun (and accelerate launch, which runs torchrun in-process) forwards these signals to its
  # workers; USR1 is the preemption warning, without it torchrun would die and leave its workers.
  export TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
  HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  # A rendezvous port derived from the job id: two jobs sharing a head node do not collide, and
  # 20000-31999 is below Linux's ephemeral range (32768-60999), where any outgoing connection may
  # already hold the port. common/dist.py derives srun_per_gpu's MASTER_PORT the same way.
  RDZV_PORT=$((20000 + SLURM_JOB_ID % 12000))
  NNODES=${SLURM_JOB_NUM_NODES:-1}
  GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-1}}
  GPUS_PER_NODE=${GPUS_PER_NODE##*:}  # "gpu:4" -> 4
  # One run directory per job; a requeued job keeps its id, so it finds its checkpoints (resume=auto).
  RECIPE=$(basename "$1" .py)
  # DTRAIN_OUT_ROOT moves them elsewhere (e.g. a scratch file system); an out_dir= argument wins.
  OUT_DIR=${DTRAIN_OUT_ROOT:-runs}/${RECIPE}_${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}
  export HEAD_NODE RDZV_PORT NNODES GPUS_PER_NODE OUT_DIR
  echo "dtrain: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST: $NNODES node(s) x $GPUS_PER_NODE GPU(s), head $HEAD_NODE:$RDZV_PORT, out_dir $OUT_DIR"
}

# dtrain_run CMD...: run the job step in the background so this shell can take signals.
# On USR1 (sbatch --signal=B:USR1@SECONDS, or `scancel --batch --signal=USR1 JOBID`) the signal
# is passed to every process of the job steps; the training loop checkpoints at the next step
# boundary and exits with 75; then this job requeues itself and, when it runs again, resumes
# from that checkpoint. SIGTERM (scancel, time limit) is not trapped: a cancelled job stays cancelled.
dtrain_run() {
  DTRAIN_PREEMPTED=0
  trap 'DTRAIN_PREEMPTED=1; echo "dtrain: preemption signal at $(date +%T), asking the job step to checkpoint"; scancel --signal=USR1 "$SLURM_JOB_ID"' USR1
  "$@" &
  local pid=$! rc=0
  # `wait` returns early (status > 128) when a trap runs; wait again until the step has ended.
  while :; do
    wait "$pid"; rc=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  trap - USR1
  if [[ $DTRAIN_PREEMPTED == 1 ]]; then
    echo "dtrain: step exited with $rc after the preemption signal; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "dtrain: step exited with $rc"
  return "$rc"
}
