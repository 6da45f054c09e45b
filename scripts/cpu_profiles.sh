#!/usr/bin/env bash
# The shipped CPU latency profiles and the CPU honesty check (issue 11). Run on an otherwise idle
# machine (timings of a busy one are noise), from the repository root:
#   bash scripts/cpu_profiles.sh
# About 7 minutes on 2 cores. One thread everywhere, as suites/ci.yaml measures with one thread.
set -euo pipefail
export PYTHONPATH=.
DEVICE_SLUG=$(python -c "from orthrus.profile.timing import device_description as d; import torch, re; print(re.sub('[^a-z0-9.]+', '-', d(torch.device('cpu'))['name'].lower()).strip('-'))")

# 1. profiles: the zoo model (covers suites/ci.yaml's contexts 256 and 1024 plus the generation) ...
python -m orthrus profile --device cpu --model tiny-orthrus --dtype float32 --threads 1 \
    --contexts 256,1024,2048 --blocks 1,2,4,8,16,32 --repeats 15 \
    --out "reports/profiles/${DEVICE_SLUG}-tiny-orthrus-float32.json"
# ... and the published Qwen3-0.6B shape (random weights; about 3 GB of RAM in fp32)
python -m orthrus profile --device cpu --model qwen3-shape:0.6b --dtype float32 --threads 1 \
    --contexts 256,1024 --blocks 1,4,8,16 --repeats 3 --warmup 1 \
    --out "reports/profiles/${DEVICE_SLUG}-qwen3-0.6b-float32.json"

RUN_ID="honesty-$(date +%Y%m%d-%H%M%S)"
# 2. honesty check: one run of the zoo at blocks 4, 8 and 16 on this machine, projected with this
#    machine's profile; the table compares the projected with the measured decode speedup. The run
#    measures interleaved (suites/ci.yaml's measure.order: prompt i of every cell before prompt i + 1), so AR
#    and Orthrus on a prompt are measured seconds apart and share the machine's load.
python run_bench.py suites/ci.yaml --set 'sweep.block_sizes=[4,8,16]' --set 'sweep.include=[]' --set 'gates=[]' --set 'prompts[0].count=8' \
    --set measure.repetitions=5 --run-id "$RUN_ID" --quiet
python run_bench.py project "reports/ci/$RUN_ID" --profile "reports/profiles/${DEVICE_SLUG}-tiny-orthrus-float32.json" \
    | tee reports/profiles/honesty-cpu.txt
