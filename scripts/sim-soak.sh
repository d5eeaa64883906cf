#!/usr/bin/env bash
# Long simulation soak: sweeps fresh seed ranges over every scenario for HOURS hours and
# prints each failure with its replay command. Exits non-zero if any seed failed.
#
#   scripts/sim-soak.sh 2                 # two hours, seeds from a random start
#   SOAK_START=500000 scripts/sim-soak.sh 0.5 --nodes 7 --duration 60s
set -euo pipefail
hours=${1:?usage: scripts/sim-soak.sh HOURS [ringkv-sim sweep flags...]}
shift
bin=$("$(dirname "$0")/sim-build.sh")
batch=${SOAK_BATCH:-200}
start=${SOAK_START:-$(( (RANDOM << 15 | RANDOM) * 1000 ))}
deadline=$(( $(date +%s) + $(python3 -c "print(int(float('$hours') * 3600))") ))
failed=0 runs=0
while (( $(date +%s) < deadline )); do
  end=$((start + batch))
  if ! "$bin" sweep --seeds "$start..$end" --scenario all --jobs "${SOAK_JOBS:-2}" "$@" | tee /tmp/ringkv-soak.$$; then
    failed=$((failed + $(grep -c '^FAIL' /tmp/ringkv-soak.$$ || true)))
  fi
  runs=$((runs + batch))
  start=$end
done
rm -f /tmp/ringkv-soak.$$
echo "soak: $runs seeds, $failed failed"
(( failed == 0 ))
