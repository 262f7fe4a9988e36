#!/usr/bin/env bash
# Register this VM's service with meshdns through its Consul-shaped HTTP API and
# keep the service's TTL check passing. Needs only bash and curl on the VM.
#
#   meshdns-register register     register once (every server in MESHDNS_ADDR)
#   meshdns-register pass         mark the TTL check passing once
#   meshdns-register deregister   remove the service
#   meshdns-register run          register, then pass every HEARTBEAT_INTERVAL
#                                 seconds until SIGTERM, then deregister
#
# Settings (environment; the systemd unit reads /etc/meshdns/register.env):
#   MESHDNS_ADDR        API base URL(s), space separated    (http://127.0.0.1:8500)
#   MESHDNS_TOKEN       ACL token, sent as X-Consul-Token    (none)
#   SERVICE_FILE        service definition JSON              (/etc/meshdns/service.json)
#   SERVICE_ID          service ID      (default: the file's "ID", else its "Name")
#   CHECK_ID            TTL check to pass                    (service:<SERVICE_ID>)
#   SERVICE_ADDRESS     replaces @ADDRESS@ in the file       (this host's address
#                       on the route to the first server)
#   HEARTBEAT_INTERVAL  seconds between passes; 0 = no TTL check (10)
#   RETRY_INTERVAL      seconds between tries while a server is unreachable (5)
#   REQUEST_TIMEOUT     seconds per HTTP request             (5)
#   DEREGISTER_ON_STOP  deregister when `run` stops          (true)
#
# @HOSTNAME@ in the file is replaced by the short host name, so one file can
# serve every VM of a service ("ID": "legacy-billing-@HOSTNAME@").
set -euo pipefail

MESHDNS_ADDR=${MESHDNS_ADDR:-http://127.0.0.1:8500}
MESHDNS_TOKEN=${MESHDNS_TOKEN:-}
SERVICE_FILE=${SERVICE_FILE:-/etc/meshdns/service.json}
HEARTBEAT_INTERVAL=${HEARTBEAT_INTERVAL:-10}
RETRY_INTERVAL=${RETRY_INTERVAL:-5}
REQUEST_TIMEOUT=${REQUEST_TIMEOUT:-5}
DEREGISTER_ON_STOP=${DEREGISTER_ON_STOP:-true}

log() { printf 'meshdns-register: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# -- HTTP ----------------------------------------------------------------------

# curl reads its headers from a config on stdin, so the token never shows in
# the process list.
curl_config() {
    if [[ -n $MESHDNS_TOKEN ]]; then
        local token=${MESHDNS_TOKEN//\\/\\\\}
        printf 'header = "X-Consul-Token: %s"\n' "${token//\"/\\\"}"
    fi
}

# api BASE METHOD PATH [JSON_BODY]: sets STATUS (000 when unreachable) and BODY.
api() {
    local base=${1%/} method=$2 path=$3 out
    local args=(--silent --show-error --max-time "$REQUEST_TIMEOUT" --request "$method"
                --write-out '\n%{http_code}' --config -)
    if [[ $# -ge 4 ]]; then
        args+=(--header 'Content-Type: application/json' --data-binary "$4")
    fi
    if out=$(curl_config | curl "${args[@]}" "$base$path" 2>&1); then
        STATUS=${out##*$'\n'}
        BODY=${out%$'\n'*}
    else
        STATUS=000
        BODY=$out
    fi
}

ok() { [[ $STATUS == 2?? ]]; }

# -- the service definition ------------------------------------------------------

# Host part of the first server URL, for finding our own address.
first_server_host() {
    local hostport=${MESHDNS_ADDR%% *}
    hostport=${hostport#*://}
    hostport=${hostport%%/*}
    if [[ $hostport == \[* ]]; then
        hostport=${hostport#\[}
        printf '%s\n' "${hostport%%\]*}"
    else
        printf '%s\n' "${hostport%:*}"
    fi
}

# The source address this host uses towards meshdns: the one others reach it at.
detect_address() {
    local host ip=""
    host=$(first_server_host)
    if command -v ip >/dev/null 2>&1; then
        if [[ ! $host =~ ^[0-9.]+$ && $host != *:* ]]; then
            host=$(getent ahosts "$host" 2>/dev/null | awk 'NR == 1 { print $1 }') || host=""
        fi
        if [[ -n $host ]]; then
            ip=$(ip -o route get "$host" 2>/dev/null | sed -n 's/.* src \([^ ]*\).*/\1/p') || ip=""
        fi
    fi
    if [[ -z $ip ]]; then
        ip=$(hostname -I 2>/dev/null | awk '{ print $1 }') || ip=""
    fi
    [[ -n $ip ]] || die "cannot find this host's address: set SERVICE_ADDRESS"
    printf '%s\n' "$ip"
}

# The service JSON with @ADDRESS@ and @HOSTNAME@ filled in.
render_service() {
    [[ -r $SERVICE_FILE ]] || die "cannot read SERVICE_FILE $SERVICE_FILE"
    local json address
    json=$(<"$SERVICE_FILE")
    if [[ $json == *@ADDRESS@* ]]; then
        address=${SERVICE_ADDRESS:-$(detect_address)}
        json=${json//@ADDRESS@/$address}
    fi
    json=${json//@HOSTNAME@/$(hostname -s)}
    printf '%s\n' "$json"
}

# The first top-level-looking "KEY": "value" string in the JSON.
json_string() {
    { grep -o "\"$1\"[[:space:]]*:[[:space:]]*\"[^\"]*\"" <<<"$2" || true; } | head -n 1 |
        sed 's/.*:[[:space:]]*"\(.*\)"$/\1/'
}

load_service() {
    SERVICE_JSON=$(render_service)
    if [[ -z ${SERVICE_ID:-} ]]; then
        SERVICE_ID=$(json_string ID "$SERVICE_JSON")
        [[ -n $SERVICE_ID ]] || SERVICE_ID=$(json_string Name "$SERVICE_JSON")
    fi
    [[ -n $SERVICE_ID ]] || die "$SERVICE_FILE has no \"ID\" or \"Name\": set SERVICE_ID"
    CHECK_ID=${CHECK_ID:-service:$SERVICE_ID}
}

# -- operations, per server --------------------------------------------------------

register_at() {
    api "$1" PUT /v1/agent/service/register "$SERVICE_JSON"
    if ok; then
        log "registered $SERVICE_ID at $1"
        return 0
    fi
    log "register $SERVICE_ID at $1 failed: HTTP $STATUS ${BODY}"
    return 1
}

pass_at() {
    api "$1" PUT "/v1/agent/check/pass/$(urlencode "$CHECK_ID")"
    ok || { log "pass $CHECK_ID at $1 failed: HTTP $STATUS ${BODY}"; return 1; }
}

# Pass the check; a server that no longer knows it (404: its data was lost, or
# it was replaced) gets the registration again.
heartbeat_at() {
    pass_at "$1" && return 0
    [[ $STATUS == 404 ]] || return 1
    log "$1 does not know check $CHECK_ID; registering again"
    register_at "$1" && pass_at "$1"
}

deregister_at() {
    api "$1" PUT "/v1/agent/service/deregister/$(urlencode "$SERVICE_ID")"
    if ok || [[ $STATUS == 404 ]]; then
        log "deregistered $SERVICE_ID at $1"
        return 0
    fi
    log "deregister $SERVICE_ID at $1 failed: HTTP $STATUS ${BODY}"
    return 1
}

urlencode() {
    local s=$1 out="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        case $c in
            [a-zA-Z0-9._~:@-]) out+=$c ;;
            *) out+=$(printf '%%%02X' "'$c") ;;
        esac
    done
    printf '%s\n' "$out"
}

# each OP: run OP against every server; fails if any failed.
each() {
    local servers=() base rc=0
    read -r -a servers <<<"$MESHDNS_ADDR"
    for base in "${servers[@]}"; do
        "$1" "$base" || rc=1
    done
    return "$rc"
}

# -- run ----------------------------------------------------------------------------

# The heartbeat loop runs in its own process group, and this shell only waits
# for it. A signal therefore always lands while the shell sits in `wait`: bash
# 5.2 can fail to parse a trap that fires while it expands a $(...), and the
# stop would be lost. Killing the group also ends an in-flight curl or sleep.
heartbeat_loop() {
    local servers=() registered=() i all
    read -r -a servers <<<"$MESHDNS_ADDR"
    for i in "${!servers[@]}"; do registered[i]=0; done
    while true; do
        all=1
        for i in "${!servers[@]}"; do
            if [[ ${registered[i]} == 0 ]]; then
                if register_at "${servers[i]}"; then
                    registered[i]=1
                    [[ $HEARTBEAT_INTERVAL == 0 ]] || pass_at "${servers[i]}" || true
                else
                    all=0
                fi
            elif [[ $HEARTBEAT_INTERVAL != 0 ]]; then
                heartbeat_at "${servers[i]}" || true
            fi
        done
        if [[ $all == 0 ]]; then
            sleep "$RETRY_INTERVAL"
        elif [[ $HEARTBEAT_INTERVAL != 0 ]]; then
            sleep "$HEARTBEAT_INTERVAL"
        else
            sleep infinity
        fi
    done
}

STOPPING=0
LOOP=

stop_loop() {
    [[ -z $LOOP ]] || kill -TERM -- "-$LOOP" 2>/dev/null || true
}

run() {
    trap 'STOPPING=1; stop_loop' TERM INT
    set -m
    heartbeat_loop &
    LOOP=$!
    set +m
    [[ $STOPPING == 0 ]] || stop_loop
    local status=0
    wait "$LOOP" || status=$?
    if [[ $STOPPING == 0 ]]; then
        die "the heartbeat loop stopped (exit $status)"
    fi
    wait "$LOOP" 2>/dev/null || true
    trap '' TERM INT
    if [[ $DEREGISTER_ON_STOP == true ]]; then
        each deregister_at || true
    fi
}

main() {
    command -v curl >/dev/null 2>&1 || die "curl is required"
    local cmd=${1:-}
    case $cmd in
        register) load_service; each register_at ;;
        pass) load_service; each pass_at ;;
        deregister) load_service; each deregister_at ;;
        run) load_service; run ;;
        *) die "usage: meshdns-register register|pass|deregister|run" ;;
    esac
}

main "$@"
