#!/usr/bin/env bash
# The fault battery of issue 13 on loopback, bounded in time: one line per scenario with its
# figures and PASS or FAIL against the oracle "every acknowledged event stored and published
# exactly once, memory and disk bounded, the server keeps serving". Exit status 1 if any
# scenario failed.
#
#   scripts/faults.sh [CYCLES]      kill -9 cycles of the soak: 30 by default (about a
#                                   minute), 1000 for the long soak (about half an hour)
#
# The scenarios are the test binary crates/spot-cli/tests/faults.rs (its doc says what each
# does and checks); the test suite runs them with 5 cycles. This runs them with CYCLES and
# shows their lines. A full-disk scenario needs root (it mounts a tmpfs), else says SKIP.
set -euo pipefail
cd "$(dirname "$0")/.."
export FAULTS_KILL9_CYCLES=${1:-30}
set +e
cargo test -p spot-cli --test faults -- --nocapture 2>&1 | awk '/^faults:/ && !seen[$0]++'
status=${PIPESTATUS[0]}
set -e
exit "$status"
