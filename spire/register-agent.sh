#!/usr/bin/env bash
# Registers an AI agent fronted by deputyd (or, with --deputyd, deputyd itself) with a SPIRE
# server: one `spire-server entry create`. Run it where the server's admin socket is reachable.
set -euo pipefail

prog=${0##*/}

usage() {
    cat <<EOF
Usage:
  $prog --spiffe-id ID --agent NAME [options]
  $prog --deputyd --spiffe-id ID (--uid UID | --user NAME | --systemd-unit UNIT) [options]

Registers an agent fronted by deputyd with SPIRE: runs
  spire-server entry create -parentID PARENT -spiffeID ID -selector deputy:agent:NAME

No workload attestor emits a deputy:agent selector, so the SPIRE agent's Workload API never
serves this entry to any process, not even one running as the agent's uid: only deputyd
presents the selector, through the Delegated Identity API. The agent itself never holds its
SVID or key; it calls through deputyd's outbound listener, which attests it by uid.

With --deputyd it registers deputyd itself, by the uid (or unit) of its service user, so that
its SPIFFE ID can go in authorized_delegates in the SPIRE agent's config.

  --spiffe-id ID       the SPIFFE ID to grant, e.g. spiffe://example.org/agent/triage;
                       the same as the agent's spiffe_id in deputyd.toml
  --agent NAME         the agent's name in deputyd.toml ([[agent]] name): deputy:agent:NAME
  --uid UID            (--deputyd only) select deputyd by uid: unix:uid:UID
  --user NAME          (--deputyd only) the same, with the uid of NAME on this host
  --systemd-unit UNIT  (--deputyd only) select deputyd by unit: systemd:id:UNIT
  --parent-id ID       SPIFFE ID of the SPIRE agent (or node alias) of the node the workload
                       runs on (see spire-server agent list); default \$SPIRE_PARENT_ID
  --x509-ttl TTL       X.509-SVID lifetime, e.g. 3600, 90s, 30m, 1h; default: the server's
  --jwt-ttl TTL        JWT-SVID lifetime, likewise
  --socket-path PATH   the SPIRE server's admin socket; default \$SPIRE_SERVER_SOCKET or
                       /run/spire/server/private/api.sock (server.conf's socket_path)
  --deputyd            register deputyd itself instead of an agent
  --dry-run            print the command instead of running it
  -h, --help           show this help

Environment: SPIRE_SERVER is the spire-server program to run (default: spire-server).

Examples:
  $prog --spiffe-id spiffe://example.org/agent/triage --agent triage \\
      --parent-id spiffe://example.org/spire/agent/join_token/TOKEN --x509-ttl 1h
  export SPIRE_PARENT_ID=spiffe://example.org/spire/agent/join_token/TOKEN
  $prog --spiffe-id spiffe://example.org/agent/triage --agent triage --dry-run
  $prog --deputyd --spiffe-id spiffe://example.org/deputyd/node-1 --uid 998
EOF
}

# A usage error: say what is wrong and how to get help, exit 2.
fail() {
    printf '%s: %s\n' "$prog" "$1" >&2
    printf "Run '%s --help' for usage.\n" "$prog" >&2
    exit 2
}

# validate_spiffe_id FLAG ID: refuse anything that is not a well-formed SPIFFE ID with a path.
validate_spiffe_id() {
    local flag=$1 id=$2 rest td path seg
    local -a segs
    [[ $id == spiffe://* ]] ||
        fail "$flag '$id' is not a SPIFFE ID: it must start with 'spiffe://' (lower case)"
    [[ $id != *'?'* && $id != *'#'* ]] ||
        fail "$flag '$id' must not have a query ('?') or a fragment ('#')"
    ((${#id} <= 2048)) || fail "$flag is longer than 2048 bytes"
    rest=${id#spiffe://}
    td=${rest%%/*}
    [[ -n $td ]] || fail "$flag '$id' has no trust domain after 'spiffe://'"
    [[ $td =~ ^[a-z0-9._-]+$ ]] ||
        fail "$flag '$id': trust domain '$td' may contain only lower-case letters, digits, '.', '-' and '_' (no upper case, port or user)"
    ((${#td} <= 255)) || fail "$flag '$id': the trust domain is longer than 255 characters"
    path=${rest#"$td"}
    [[ -n $path ]] ||
        fail "$flag '$id' names only a trust domain: add a path, e.g. spiffe://$td/agent/NAME"
    [[ $path != */ ]] || fail "$flag '$id' must not end with '/'"
    IFS=/ read -r -a segs <<<"${path#/}"
    for seg in "${segs[@]}"; do
        [[ -n $seg ]] || fail "$flag '$id' has an empty path segment ('//')"
        [[ $seg != . && $seg != .. ]] || fail "$flag '$id' has a '$seg' path segment"
        [[ $seg =~ ^[A-Za-z0-9._-]+$ ]] ||
            fail "$flag '$id': path segment '$seg' may contain only letters, digits, '.', '-' and '_'"
    done
}

# ttl_seconds FLAG TTL: print TTL (3600, 90s, 30m, 1h, 1h30m, 1d) in seconds, as SPIRE's
# -x509SVIDTTL and -jwtSVIDTTL take it.
ttl_seconds() {
    local flag=$1 ttl=$2 rest total=0 n
    if [[ $ttl =~ ^[0-9]+$ ]]; then
        total=$((10#$ttl))
    else
        rest=$ttl
        [[ -n $rest ]] || fail "$flag needs a duration"
        while [[ $rest =~ ^([0-9]+)([smhd])(.*)$ ]]; do
            n=$((10#${BASH_REMATCH[1]}))
            case ${BASH_REMATCH[2]} in
                s) total=$((total + n)) ;;
                m) total=$((total + n * 60)) ;;
                h) total=$((total + n * 3600)) ;;
                d) total=$((total + n * 86400)) ;;
            esac
            rest=${BASH_REMATCH[3]}
        done
        [[ -z $rest ]] ||
            fail "$flag '$ttl' is not a duration: use seconds (3600) or units s, m, h, d (1h30m)"
    fi
    ((total > 0 && total <= 2147483647)) ||
        fail "$flag '$ttl' must be more than 0 s and at most 2147483647 s"
    printf '%s\n' "$total"
}

spiffe_id="" agent="" uid="" user="" unit="" parent_id=${SPIRE_PARENT_ID:-} x509_ttl="" jwt_ttl=""
socket_path=${SPIRE_SERVER_SOCKET:-/run/spire/server/private/api.sock}
deputyd=false dry_run=false

while (($# > 0)); do
    opt=$1
    case $opt in
        -h | --help) usage; exit 0 ;;
        --deputyd) deputyd=true; shift; continue ;;
        --dry-run) dry_run=true; shift; continue ;;
        --*=*) set -- "${opt%%=*}" "${opt#*=}" "${@:2}"; opt=$1 ;;
    esac
    case $opt in
        --spiffe-id | --agent | --uid | --user | --systemd-unit | --parent-id | --x509-ttl | --jwt-ttl | --socket-path)
            if (($# < 2)) || [[ -z $2 ]]; then fail "$opt needs a value"; fi
            value=$2
            shift 2
            ;;
        *) fail "unknown argument '$opt'" ;;
    esac
    case $opt in
        --spiffe-id) spiffe_id=$value ;;
        --agent) agent=$value ;;
        --uid) uid=$value ;;
        --user) user=$value ;;
        --systemd-unit) unit=$value ;;
        --parent-id) parent_id=$value ;;
        --x509-ttl) x509_ttl=$value ;;
        --jwt-ttl) jwt_ttl=$value ;;
        --socket-path) socket_path=$value ;;
    esac
done

[[ -n $spiffe_id ]] || fail "--spiffe-id is required"
validate_spiffe_id --spiffe-id "$spiffe_id"

[[ -n $parent_id ]] ||
    fail "--parent-id (or \$SPIRE_PARENT_ID) is required: the SPIFFE ID of the SPIRE agent on the workload's node, as 'spire-server agent list' shows it (spiffe://TD/spire/agent/...), or a node alias"
validate_spiffe_id --parent-id "$parent_id"
td=${spiffe_id#spiffe://}
td=${td%%/*}
parent_td=${parent_id#spiffe://}
parent_td=${parent_td%%/*}
[[ $td == "$parent_td" ]] ||
    fail "--spiffe-id is in trust domain '$td' but --parent-id is in '$parent_td': both must be the SPIRE server's trust domain"

[[ -z $uid || -z $user ]] || fail "give --uid or --user, not both"
if [[ -n $user ]]; then
    uid=$(id -u -- "$user" 2>/dev/null) ||
        fail "--user '$user': no such user on this host; give --uid with the uid it has on the workload's node"
fi
if [[ -n $uid ]]; then
    if [[ ! $uid =~ ^[0-9]{1,10}$ ]] || ((10#$uid > 4294967294)); then
        fail "--uid '$uid' must be a uid, a number such as 1001"
    fi
    uid=$((10#$uid))
fi
if [[ -n $unit ]]; then
    unit_re='^[-A-Za-z0-9:_.@\]+\.(service|scope)$'
    [[ $unit =~ $unit_re ]] ||
        fail "--systemd-unit '$unit' must be a unit name ending in .service (or .scope), such as triage.service"
fi

selectors=()
if $deputyd; then
    [[ -z $agent ]] || fail "--agent names an agent; --deputyd registers deputyd itself: give one of them"
    [[ -n $uid || -n $unit ]] ||
        fail "--deputyd registers deputyd by its service user: give --uid, --user or --systemd-unit"
    [[ -z $uid ]] || selectors+=("unix:uid:$uid")
    [[ -z $unit ]] || selectors+=("systemd:id:$unit")
else
    if [[ -n $uid || -n $unit ]]; then
        fail "an agent is not registered by uid or unit: a process with those could fetch the agent's SVID and key from the Workload API and go around deputyd; give --agent NAME (the selector deputy:agent:NAME, which only deputyd presents)"
    fi
    [[ -n $agent ]] || fail "--agent NAME is required: the agent's name in deputyd.toml"
    [[ $agent =~ ^[a-z0-9][a-z0-9_-]*$ ]] ||
        fail "--agent '$agent' must be the agent's name in deputyd.toml: lower-case letters, digits, '-' and '_'"
    selectors+=("deputy:agent:$agent")
fi

cmd=("${SPIRE_SERVER:-spire-server}" entry create
    -socketPath "$socket_path"
    -parentID "$parent_id"
    -spiffeID "$spiffe_id")
for selector in "${selectors[@]}"; do
    cmd+=(-selector "$selector")
done
if [[ -n $x509_ttl ]]; then
    seconds=$(ttl_seconds --x509-ttl "$x509_ttl")
    cmd+=(-x509SVIDTTL "$seconds")
fi
if [[ -n $jwt_ttl ]]; then
    seconds=$(ttl_seconds --jwt-ttl "$jwt_ttl")
    cmd+=(-jwtSVIDTTL "$seconds")
fi

# What to do next, on the node the workload runs on.
next_steps() {
    local quoted
    quoted=$(printf '"%s", ' "${selectors[@]}")
    quoted=${quoted%, }
    if $deputyd; then
        printf 'Next: add "%s" to authorized_delegates in the SPIRE agent'\''s agent.conf on that node, then restart the agent.\n' "$spiffe_id"
    else
        printf 'Next: in deputyd.toml on that node, the [[agent]] for it needs\n  name = "%s"\n  spiffe_id = "%s"\n(deputyd presents %s for it on the Delegated Identity API)\n' "$agent" "$spiffe_id" "$quoted"
    fi
}

if $dry_run; then
    printf '%q ' "${cmd[@]}" | sed 's/ $//'
    printf '\n'
    next_steps >&2
    exit 0
fi

command -v -- "${cmd[0]}" >/dev/null 2>&1 ||
    { printf "%s: '%s' not found: run this where spire-server is installed, or set SPIRE_SERVER\n" "$prog" "${cmd[0]}" >&2; exit 127; }
"${cmd[@]}"
next_steps
