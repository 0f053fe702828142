#!/usr/bin/env bash
# Registers deputyd itself with SPIRE, by the uid of its service user, so that its SPIFFE ID
# can be listed in the SPIRE agent's authorized_delegates. The same as
# `register-agent.sh --deputyd ...`; see `register-agent.sh --help`.
#
#   register-deputyd.sh --spiffe-id spiffe://example.org/deputyd/node-1 --uid 998 \
#       --parent-id spiffe://example.org/spire/agent/join_token/TOKEN [--dry-run]
set -euo pipefail

exec "$(dirname -- "${BASH_SOURCE[0]}")/register-agent.sh" --deputyd "$@"
