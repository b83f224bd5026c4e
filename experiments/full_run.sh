#!/usr/bin/env bash
# The full evaluation of issue 6 for both study areas, side by side, one core each.
#
#   experiments/full_run.sh [OUT]        (default OUT: outputs/experiments)
#
# Each area runs `metalsm experiment all` in its own process with every thread pool
# set to one thread, so on a 2-core machine the two areas share nothing but the disk.
# Writes OUT/<area>/ (tables, figures, report.html, manifest.json) and OUT/<area>.log,
# and prints the wall time of the whole run.
set -euo pipefail
out=${1:-outputs/experiments}
metalsm=${METALSM_BIN:-.venv/bin/metalsm}
if [[ ! -x "$metalsm" ]]; then
    echo "full_run.sh: $metalsm not found or not executable; run 'make install' first" \
         "(or set METALSM_BIN)" >&2
    exit 2
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
timer=()
[[ -x /usr/bin/time ]] && timer=(/usr/bin/time -v)
mkdir -p "$out"
start=$(date +%s)
pids=()
for area in kaghan hongkong; do
    "${timer[@]}" "$metalsm" experiment all "examples/$area-experiments.toml" \
        --out "$out/$area" -q >"$out/$area.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
done
echo "both areas: $(($(date +%s) - start)) s wall (logs: $out/kaghan.log, $out/hongkong.log)"
exit "$status"
