#!/usr/bin/env bash
# Run the 2-rank `gradsift extract` of tests/test_distributed.py N times (default 20) and
# count the jobs that fail, e.g. by aborting at exit. Usage: N=20 bash scripts/torchrun_exit_loop.sh
set -u
cd "$(dirname "$0")/../tests"
export GRADSIFT_PROGRESS=0 OMP_NUM_THREADS=1 PYTHONPATH="$PWD" HF_HUB_OFFLINE=1
out_dir=$(mktemp -d)
fails=0
for _ in $(seq 1 "${N:-20}"); do
  rm -rf "$out_dir/store"
  if ! log=$(../.venv/bin/python -m torch.distributed.run --standalone --nproc-per-node=2 \
      test_distributed.py cli extract "$out_dir/store" --model=test_distributed:make_setup \
      --tracked=all --project-dim=16 --projection-kind=gaussian --projection-seed=3 \
      --rows-per-shard=20 --batch-size=7 --json 2>&1); then
    fails=$((fails + 1))
    echo "$log" | grep -iE "terminate|exitcode" | head -3
  fi
done
rm -rf "$out_dir"
echo "failed jobs: $fails of ${N:-20}"
