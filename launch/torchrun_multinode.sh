#!/usr/bin/env bash
# torchrun on several nodes without SLURM: run this same command on every node.
#
#   HEAD=node001 NNODES=2 GPUS=8 bash launch/torchrun_multinode.sh recipes/resnet_cifar.py [key=value ...]
#
# The nodes meet through torchrun's c10d rendezvous: the node whose address is $HEAD hosts a
# small key-value store on $PORT, every node (head included) connects to it, and ranks are
# handed out as nodes arrive (no node rank to number by hand). All nodes need the same checkout,
# Python environment and data paths, and must reach $HEAD:$PORT over TCP.
#
#   HEAD    hostname or IP of the rendezvous node, as the other nodes can reach it (required)
#   NNODES  number of nodes in the job (required); "2:4" lets the job start with 2 to 4 nodes
#   GPUS    processes on this node, one per GPU (default: the number of GPUs nvidia-smi lists, else 1)
#   PORT    rendezvous port on $HEAD (default 29400, torchrun's c10d default; keep it below 32768,
#           Linux's ephemeral range starts there and an outgoing connection may already hold it)
#   RUN_ID  a name shared by the nodes of one job and unique among concurrent jobs (default dtrain)
# On SLURM use slurm/multi_node.sbatch, which sets these from the allocation.
set -euo pipefail
: "${HEAD:?set HEAD=<rendezvous host>}" "${NNODES:?set NNODES=<number of nodes>}"
if [[ -z ${GPUS:-} ]]; then
  # Without nvidia-smi (or its driver) the pipeline fails; under pipefail that must not end the script.
  GPUS=$( { nvidia-smi -L 2>/dev/null || true; } | grep -c '^GPU ' || true)
fi
[[ $GPUS =~ ^[0-9]+$ ]] && (( GPUS > 0 )) || GPUS=1
echo "torchrun_multinode: ${HOSTNAME:-this node}: $GPUS process(es), rendezvous $HEAD:${PORT:-29400} (run id ${RUN_ID:-dtrain}), $NNODES node(s)" >&2
exec torchrun \
  --nnodes="$NNODES" \
  --nproc_per_node="$GPUS" \
  --rdzv_backend=c10d \
  --rdzv_endpoint="$HEAD:${PORT:-29400}" \
  --rdzv_id="${RUN_ID:-dtrain}" \
  --max_restarts=0 \
  "$@"
