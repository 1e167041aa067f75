#!/usr/bin/env bash
# The SDK's integration tests against real chorus processes (an embedded node; a 3-node cluster
# on its own Redis and PostgreSQL), driven by the chorus-testbed binary, which this builds first.
# The cluster needs redis-server and the PostgreSQL server binaries (tests/run installs them).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
root="$here/../.."
if [ -z "${CHORUS_TESTBED:-}" ]; then
  (cd "$root" && cargo build -q -p chorus-gateway --bin chorus -p chorus-tests --bin chorus-testbed)
fi
cd "$here"
timeout 600 node --test --test-concurrency=1 test/integration.test.mjs
