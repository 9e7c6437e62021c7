#!/usr/bin/env bash
# The one GPU call (issue 23; bench/gpu_all.py's docstring, BENCHMARKS.md "GPU: the one call").
# Here first: python -m bench.gpu_all prepare. Then the device tool's run with
#   command "bash bench/gpu_run.sh", timeout_s 480, carry ["runs/gpu"]
# and give_back afterwards. BUDGET (seconds, default 420) leaves about 5 of the session's 15
# minutes of device time for one rerun: BUDGET=200 STAGES=torch,sweep bash bench/gpu_run.sh
# (timeout_s 260) redoes only the stages named. A carried .whl folder (device README) is
# installed first.
set -o pipefail
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
if [ -d .whl ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit
fi
OUT=${OUT:?set OUT: the folder whose files come back}
nvidia-smi 2>&1 | head -15 | tee "$OUT/gpu.log"
"$PYTHON" -m bench.gpu_all run "$OUT" --budget "${BUDGET:-420}" ${STAGES:+--stages "$STAGES"} \
  2>&1 | tee -a "$OUT/gpu.log"
