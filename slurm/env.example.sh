# Site setup sourced by every slurm/*.sbatch template (copy to slurm/env.sh and edit; env.sh is
# yours, the templates stay unchanged). Runs on the first node before the job step starts; srun
# passes the resulting environment to every node.

# --- software -------------------------------------------------------------------------------
# module purge
# module load cuda/12.4 nccl        # names differ per site: `module avail cuda`
# source "$HOME/venvs/dtrain/bin/activate"   # the venv where `pip install -r requirements.txt` ran
# or: eval "$(conda shell.bash hook)" && conda activate dtrain

# --- NCCL -----------------------------------------------------------------------------------
# export NCCL_DEBUG=WARN              # INFO once when debugging: prints the chosen transports/interfaces
# export NCCL_SOCKET_IFNAME=ib0       # the interface between nodes (ip -br addr); wrong one = hangs or slow
# export NCCL_IB_HCA=mlx5             # InfiniBand adapters to use; unset lets NCCL pick
# export NCCL_IB_DISABLE=1            # only on clusters without InfiniBand/RoCE
# export NCCL_ASYNC_ERROR_HANDLING=1  # a failed collective raises instead of hanging (torch < 2.2 name)
# export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
# export GLOO_SOCKET_IFNAME=ib0       # for gloo (CPU runs, object collectives) on multi-homed nodes

# --- data and caches ------------------------------------------------------------------------
# export DTRAIN_OUT_ROOT=/scratch/$USER/runs      # run directories on a shared, fast file system
# export TORCH_EXTENSIONS_DIR=/scratch/$USER/torch_extensions   # DeepSpeed's compiled ops, shared
