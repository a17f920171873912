#!/usr/bin/env bash
# The torture script: the agent's sturdiness, case by case (issue 9). Each case says what it
# did and what held; the last line is `N passed, N failed, N skipped`, and the exit status is
# non-zero when a case failed. Every load is bounded in count and time and targets loopback.
#
#   scripts/torture.sh           full (release build): 100 schemathesis examples, 10 crash rounds,
#                                50 frpc kills, 3 min platform outage, 10 min soak (about 25 minutes)
#   scripts/torture.sh --quick   CI (debug build): 2 crash rounds, 5 frpc kills, 6 s outage, 30 s
#                                soak (about 2 minutes)
#   --only CASE[,CASE...]        only these cases: abuse, bombs, proptest, schemathesis, crash,
#                                docker, nvml, frpc, platform, soak
#   SOAK_SECS=N                  the soak's length instead (e.g. a 3-minute soak: SOAK_SECS=180)
#   TORTURE_AGENT=PATH           run this agent binary instead of the one built (to compare two
#                                builds in one session)
#
# Cases: connection abuse; header and body bombs, pipelining, smuggling; bad input (the
# proptest suite tests/bad_input.rs, and schemathesis against the served OpenAPI document);
# crash consistency (SIGKILL during 20 concurrent creates); docker failing and recovering
# (a wrapper around the real CLI, so the shared engine is never stopped); NVML failing at run
# time (fake NVML knob file); frpc killed repeatedly (restarted on the documented backoff); the
# platform down, then back; a soak.
# Needs: docker with the test image (built if missing), gcc, curl; pip for schemathesis.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/agent.sh
trap lib_cleanup EXIT

CASES="abuse bombs proptest schemathesis crash docker nvml frpc platform soak"
usage() { echo "usage: scripts/torture.sh [--quick] [--only CASE[,CASE...]] (cases: ${CASES// /, })" >&2; exit 2; }
QUICK=0 ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --only) [ $# -ge 2 ] || usage; ONLY=" ${2//,/ } "; shift ;;
    *) usage ;;
  esac
  shift
done
for c in $ONLY; do [[ " $CASES " == *" $c "* ]] || usage; done
# want CASE: the case runs (all without --only).
want() { [ -z "$ONLY" ] || [[ "$ONLY" == *" $1 "* ]]; }
# frpc's restart backoff is 1 s doubling to frp.restart_backoff_max_secs: 50 kills at the
# default 60 s cap would take 45 minutes (1 + 2 + ... + 32 + 44 x 60 s), so both runs set the
# cap to 4 s: 1, 2, 4, 4 ... s, about 4 minutes for the full run's 50 kills, 15 s for 5.
SOAK_ENV=${SOAK_SECS:-}
if [ "$QUICK" = 1 ]; then
  FLOOD_SECS=8 CRASH_ROUNDS=2 OUTAGE_SECS=6 SOAK_SECS=30 FRPC_KILLS=5 FRPC_CAP=4 PROFILE=() BIN=debug
else
  FLOOD_SECS=30 CRASH_ROUNDS=10 OUTAGE_SECS=180 SOAK_SECS=600 FRPC_KILLS=50 FRPC_CAP=4 PROFILE=(--release) BIN=release
fi
# The first reconcile of a fresh agent lists docker's containers; right after a whole test
# suite the shared engine can take long to answer, so the waits for docker ok are generous.
DOCKER_WAIT=90
SOAK_SECS=${SOAK_ENV:-$SOAK_SECS}

PASSED=0 FAILED=0 SKIPPED=0
case_start() { echo; echo "== $1"; echo "   did: $2"; }
held() { echo "   PASS: $1"; PASSED=$((PASSED + 1)); }
broke() { echo "   FAIL: $1"; FAILED=$((FAILED + 1)); }
skipped() { echo "   SKIP: $1"; SKIPPED=$((SKIPPED + 1)); }
# verdict RC WHAT: pass when RC is 0.
verdict() { if [ "$1" = 0 ]; then held "$2"; else broke "$2"; fi; }

lib_log "building the agent and the torture client ($BIN)"
(cd "$LIB_ROOT" && nice cargo build --locked --quiet "${PROFILE[@]}" --bin utopia-node-agent --example torture_client --example fake_frpc) || exit 1
LIB_AGENT=${TORTURE_AGENT:-"$LIB_ROOT/target/$BIN/utopia-node-agent"}
CLIENT="$LIB_ROOT/target/$BIN/examples/torture_client"
FAKE_FRPC="$LIB_ROOT/target/$BIN/examples/fake_frpc"
lib_build_fake_nvml
export FAKE_NVML_GPU_COUNT=8
HAVE_DOCKER=0
if docker info >/dev/null 2>&1 && lib_test_image; then HAVE_DOCKER=1; fi
# Fast container settings for every agent here.
LIB_DOCKER_EXTRA="  stop_timeout_secs: 1
  reconcile_interval_secs: 1"

# start_agent NAME [ENV=VALUE ...]: a fresh agent with its own config dir and docker label;
# sets PORT, PID, DIR, LABEL. Returns non-zero when it does not answer within 10 s.
start_agent() {
  local name=$1
  shift
  DIR="$LIB_WORK/$name"
  PORT=$(lib_free_port)
  LIB_LABEL_VALUE=$name
  LABEL="$LIB_LABEL_KEY=$name"
  local config
  config=$(lib_write_config "$DIR" "$PORT")
  CONFIG=$config
  AGENT_ENV=("$@")
  lib_spawn_agent "$config" "${AGENT_ENV[@]}"
  PID=$LIB_AGENT_PID
  lib_wait_health "$PORT" 10 && return 0
  # Say why (a port taken between lib_free_port and the bind, a slow start under load, ...).
  echo "   the agent did not answer /health on port $PORT within 10 s; its log ends:"
  tail -n 20 "$DIR/agent.log" 2>/dev/null | sed 's/^/     /'
  return 1
}
stop_agent() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; true; }
health() { curl -s -m 5 "http://127.0.0.1:$PORT/health"; }
# Waits until the agent's docker component is ok (its first reconcile done).
docker_ready() {
  wait_for "$DOCKER_WAIT" sh -c "curl -s -m 5 http://127.0.0.1:$PORT/health | grep -q '\"docker\":\"ok\"'" && return 0
  echo "   docker not ok after $DOCKER_WAIT s: /health $(health)"
  return 1
}
component() { health | grep -o "\"$1\":\"[^\"]*\"" | cut -d'"' -f4; }
# wait_for SECS COMMAND...: polls every 100 ms until COMMAND succeeds.
wait_for() {
  local until=$(( $(lib_now_us) + $1 * 1000000 ))
  shift
  while [ "$(lib_now_us)" -lt "$until" ]; do "$@" && return 0; sleep 0.1; done
  return 1
}

# --- 1. connection abuse ------------------------------------------------------------------
if want abuse; then
case_start "connection abuse" "2,000 connections (idle, half a request line, dripping a byte \
every 200 ms; reopened when closed) for ${FLOOD_SECS} s against the default limits, GET /health \
every 100 ms on a new connection"
if start_agent abuse; then
  "$CLIENT" flood "127.0.0.1:$PORT" 2000 "$FLOOD_SECS"
  rc=$?
  rss=$(lib_rss_kib "$PID")
  verdict "$rc" "/health answered within 1 s during the flood and at once after it (agent RSS after: $((rss / 1024)) MiB)"
  stop_agent
else
  broke "the agent did not start"
fi
fi

# --- 2. bombs, pipelining, smuggling ------------------------------------------------------
if want bombs; then
case_start "header and body bombs, pipelining, smuggling" "oversized and malformed heads, 1 GiB \
and chunked bodies past 1 MiB, deep JSON, 102 pipelined requests, ambiguous framing"
if start_agent bombs; then
  "$CLIENT" bombs "127.0.0.1:$PORT" "$LIB_TOKEN"
  verdict $? "every bomb got its 4xx, pipelined answers came in order, no framing was ambiguous"
  [ "$(lib_status "$PORT" /health)" = 200 ] && held "the agent still answers" || broke "the agent no longer answers"
  stop_agent
else
  broke "the agent did not start"
fi
fi

# --- 3. bad input: proptest ---------------------------------------------------------------
if want proptest; then
case_start "bad input: property tests" "cargo test --test bad_input: random create bodies, raw \
bytes, paths, query strings and methods against a real agent and docker"
if (cd "$LIB_ROOT" && nice cargo test --locked --quiet --test bad_input 2>&1 | tail -3); then
  held "no panic, no 5xx, nothing created on a 4xx, docker equals the agent's list"
else
  broke "see the test output above"
fi
fi

# --- 4. bad input: schemathesis -----------------------------------------------------------
if want schemathesis; then
case_start "bad input: schemathesis" "schemathesis against GET /api/v1/openapi.json with the token"
if start_agent schema; then
  openapi=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $LIB_TOKEN" "http://127.0.0.1:$PORT/api/v1/openapi.json")
  schemathesis=$(lib_schemathesis)
  if [ "$openapi" != 200 ]; then
    broke "the agent does not serve its OpenAPI document (GET /api/v1/openapi.json answered $openapi)"
  elif [ -z "$schemathesis" ]; then
    # CI installs it (.ci/run); elsewhere a machine without pip or network skips.
    if [ "${CI:-}" = true ]; then broke "schemathesis could not be installed"; else skipped "schemathesis could not be installed (pip)"; fi
  else
    curl -s -H "Authorization: Bearer $LIB_TOKEN" "http://127.0.0.1:$PORT/api/v1/openapi.json" >"$LIB_WORK/openapi.json"
    # A create naming an image that is neither local nor pullable (no registry reachable here)
    # is 502 image_pull_failed, as documented: docker's failure, not the agent's.
    cat >"$LIB_WORK/schemathesis.toml" <<'TOML'
[[operations]]
include-operation-id = "createContainer"
checks.not_a_server_error.expected-statuses = ["1xx", "2xx", "3xx", "4xx", "502"]
TOML
    # schemathesis 4: the document from a file, the API at --url, the token on every call; run
    # in the scratch directory, where it leaves its cache.
    (cd "$LIB_WORK" && "$schemathesis" --config-file "$LIB_WORK/schemathesis.toml" run "$LIB_WORK/openapi.json" --url "http://127.0.0.1:$PORT" \
      --header "Authorization: Bearer $LIB_TOKEN" \
      --checks not_a_server_error,response_schema_conformance \
      --max-examples "$([ "$QUICK" = 1 ] && echo 10 || echo 100)" 2>&1 | tail -15; exit "${PIPESTATUS[0]}")
    verdict $? "no 5xx, every answer matches the document"
    # Whatever it created is the agent's to list; the run's label clean-up removes it.
  fi
  stop_agent
else
  broke "the agent did not start"
fi
fi

# --- 5. crash consistency -----------------------------------------------------------------
if want crash; then
case_start "crash consistency" "$CRASH_ROUNDS rounds: 20 concurrent creates (8 with a GPU each, \
12 without), SIGKILL of the agent during them, restart; then the ledger is compared with docker \
and everything is deleted through the agent"
if [ "$HAVE_DOCKER" = 0 ]; then
  skipped "no docker engine with the test image"
elif start_agent crash && docker_ready; then
  bad=0
  for round in $(seq "$CRASH_ROUNDS"); do
    creates=()
    for i in $(seq 20); do
      if [ "$i" -le 8 ]; then gpus='"gpu_count":1'; else gpus='"gpu_ids":[]'; fi
      curl -s -m 60 -o /dev/null -X POST -H "Authorization: Bearer $LIB_TOKEN" -H 'Content-Type: application/json' \
        --data "{\"claim_id\":\"crash-$$-$round-$i\",\"image\":\"$LIB_IMAGE\",$gpus,\"command\":[\"sleep\",\"600\"]}" \
        "http://127.0.0.1:$PORT/api/v1/containers" &
      creates+=("$!")
    done
    sleep "0.$((RANDOM % 8 + 2))"
    kill -9 "$PID"
    wait "$PID" "${creates[@]}" 2>/dev/null
    created=$(docker ps -aq --filter "label=$LABEL" | wc -l)
    lib_spawn_agent "$CONFIG" "${AGENT_ENV[@]}"
    PID=$LIB_AGENT_PID
    if ! lib_wait_health "$PORT" 10 || ! docker_ready; then
      echo "   round $round: the agent did not come back"; bad=$((bad + 1)); continue
    fi
    # The restarted agent adopts what docker has; allow its first reconcile to finish.
    if wait_for 15 "$CLIENT" ledger "127.0.0.1:$PORT" "$LIB_TOKEN" "$LABEL" >/dev/null; then
      echo "   round $round: killed with $created containers in docker; after restart the ledger equals docker, no GPU held twice"
    else
      echo "   round $round: killed with $created containers in docker; after restart:"
      "$CLIENT" ledger "127.0.0.1:$PORT" "$LIB_TOKEN" "$LABEL"
      bad=$((bad + 1))
    fi
    deletes=()
    for id in $(curl -s -H "Authorization: Bearer $LIB_TOKEN" "http://127.0.0.1:$PORT/api/v1/containers" | grep -o '"id":"[0-9a-f]\{64\}"' | cut -d'"' -f4); do
      curl -s -m 60 -o /dev/null -X DELETE -H "Authorization: Bearer $LIB_TOKEN" "http://127.0.0.1:$PORT/api/v1/containers/$id" &
      deletes+=("$!")
    done
    [ ${#deletes[@]} -eq 0 ] || wait "${deletes[@]}" 2>/dev/null
    wait_for 30 sh -c "[ -z \"\$(docker ps -aq --filter label=$LABEL)\" ]" || { echo "   round $round: containers left after deleting"; bad=$((bad + 1)); }
  done
  verdict "$bad" "$CRASH_ROUNDS rounds, each: the restarted agent's list equals docker's, no GPU held twice, all deleted after"
  stop_agent
else
  broke "the agent did not start"
fi
fi

# --- 6. docker failing, then back ---------------------------------------------------------
if want docker; then
case_start "docker down, then back" "the agent's docker CLI is a wrapper that fails like a stopped \
daemon while a flag file exists (the shared engine itself is never stopped)"
if [ "$HAVE_DOCKER" = 0 ]; then
  skipped "no docker engine with the test image"
else
  flag="$LIB_WORK/docker-down"
  cat >"$LIB_WORK/docker-wrapper" <<WRAP
#!/bin/sh
if [ -e "$flag" ]; then
  echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2
  exit 1
fi
exec docker "\$@"
WRAP
  chmod +x "$LIB_WORK/docker-wrapper"
  if LIB_DOCKER="$LIB_WORK/docker-wrapper" start_agent dockerfault && docker_ready; then
    create() { lib_api "$PORT" POST /api/v1/containers "{\"claim_id\":\"fault-$$-$1\",\"image\":\"$LIB_IMAGE\",\"gpu_count\":1,\"command\":[\"sleep\",\"600\"]}" | tail -1 | cut -d' ' -f1; }
    first=$(create 1)
    touch "$flag"
    wait_for 20 sh -c "curl -s http://127.0.0.1:$PORT/health | grep -q '\"docker\":\"\(unavailable\|degraded\)'"
    down_health=$(component docker)
    during=$(create 2)
    api=$(lib_status "$PORT" /health)
    rm -f "$flag"
    docker_ready
    up_health=$(component docker)
    after=$(create 3)
    "$CLIENT" ledger "127.0.0.1:$PORT" "$LIB_TOKEN" "$LABEL" >/dev/null
    ledger=$?
    listed=$(curl -s -H "Authorization: Bearer $LIB_TOKEN" "http://127.0.0.1:$PORT/api/v1/containers" | grep -o '"claim_id":"fault-[^"]*"' | sort | tr '\n' ' ')
    echo "   before: create $first; down: docker \"$down_health\", create $during, /health $api; back: docker \"$up_health\", create $after; listed: $listed"
    [ "$first" = 201 ] && [ "$during" = 503 ] && [ "$api" = 200 ] && [ "$up_health" = ok ] && [ "$after" = 201 ] && [ "$ledger" = 0 ]
    verdict $? "503 while docker was down with the API serving, full service after, ledger equals docker"
    stop_agent
  else
    broke "the agent did not start with docker ok"
  fi
fi
fi

# --- 7. NVML failing at run time ----------------------------------------------------------
if want nvml; then
case_start "NVML failing at run time" "fake NVML knob file: every GPU's temperature, memory, \
utilization and power queries fail (NVML_ERROR_UNKNOWN), then recover"
knobs="$LIB_WORK/nvml-knobs"
: >"$knobs"
if LIB_GPU_INTERVAL_MS=200 start_agent nvmlfault FAKE_NVML_KNOB_FILE="$knobs"; then
  wait_for 10 sh -c "curl -s http://127.0.0.1:$PORT/health | grep -q '\"gpu\":\"ok\"'"
  echo 'gpu.*.fail = temperature,memory,utilization,power' >"$knobs"
  wait_for 10 sh -c "curl -s http://127.0.0.1:$PORT/health | grep -q '\"gpu\":\"degraded'"
  failing=$(component gpu)
  metrics=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $LIB_TOKEN" "http://127.0.0.1:$PORT/api/v1/metrics")
  list=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $LIB_TOKEN" "http://127.0.0.1:$PORT/api/v1/containers")
  : >"$knobs"
  wait_for 10 sh -c "curl -s http://127.0.0.1:$PORT/health | grep -q '\"gpu\":\"ok\"'"
  recovered=$(component gpu)
  echo "   failing: gpu \"${failing:0:100}...\", metrics $metrics, containers $list; recovered: gpu \"$recovered\""
  [[ "$failing" == degraded* ]] && [ "$metrics" = 200 ] && [ "$list" = 200 ] && [ "$recovered" = ok ]
  verdict $? "the API kept serving, the GPU component showed degraded while queries failed and ok after"
  stop_agent
else
  broke "the agent did not start"
fi
fi

# --- 8. frpc killed repeatedly ------------------------------------------------------------
if want frpc; then
# The restart backoff is 1 s doubling to frp.restart_backoff_max_secs (FRPC_CAP; reset after 60 s
# of stable running): the n-th kill in a row (from 0) is followed by a start min(cap, 2^n s)
# later. FRPC_KILLS and the cap bound the case's time (5 kills: ~15 s; 50 kills: ~4 min).
case_start "frpc killed $FRPC_KILLS times" "SIGKILL the supervised frpc (the fake frpc, journal \
of its starts) $FRPC_KILLS times in a row, each time once it is back; every restart must come \
after the documented backoff (1 s doubling to frp.restart_backoff_max_secs: $FRPC_CAP s) and be \
counted in /api/v1/tunnels"
journal="$LIB_WORK/frpc-journal.jsonl"
: >"$journal"
frpc_starts() { grep -c '"event":"start"' "$journal"; }
frpc_last() { grep '"event":"start"' "$journal" | tail -1 | grep -o "\"$1\":[0-9]*" | cut -d: -f2; }
frpc_alive() { local n=0 p; for p in $(grep '"event":"start"' "$journal" | grep -o '"pid":[0-9]*' | cut -d: -f2); do
  [ -e "/proc/$p" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$p/stat" 2>/dev/null && n=$((n + 1)); done; echo "$n"; }
if LIB_FRP_EXTRA="  server_addr: \"127.0.0.1\"
  server_port: 7000
  token: \"torture-frp-token\"
  user: \"torture\"
  frpc_path: \"$FAKE_FRPC\"
  admin_port: $(lib_free_port)
  restart_backoff_max_secs: $FRPC_CAP" start_agent frpc FAKE_FRPC_JOURNAL="$journal" \
  && wait_for 10 sh -c "grep -q '\"event\":\"start\"' '$journal'"; then
  on_time=0 gaps="" early=999999 late=-999999
  for i in $(seq 0 $((FRPC_KILLS - 1))); do
    n=$(frpc_starts)
    pid=$(frpc_last pid)
    sleep 0.3
    killed_ms=$(( $(lib_now_us) / 1000 ))
    kill -9 "$pid"
    expect=$(( i < 12 && (1000 << i) < FRPC_CAP * 1000 ? 1000 << i : FRPC_CAP * 1000 ))
    if ! wait_for $(( expect / 1000 + 5 )) sh -c "[ \$(grep -c '\"event\":\"start\"' '$journal') -gt $n ]"; then
      gaps="$gaps never"
      break
    fi
    gap=$(( $(frpc_last t_ms) - killed_ms ))
    gaps="$gaps ${gap}ms/${expect}ms"
    off=$((gap - expect))
    [ "$off" -lt "$early" ] && early=$off
    [ "$off" -gt "$late" ] && late=$off
    if [ "$gap" -ge $((expect - 50)) ] && [ "$gap" -le $((expect + 800)) ]; then on_time=$((on_time + 1)); fi
  done
  sleep 0.5
  restarts=$(curl -s -m 5 -H "Authorization: Bearer $LIB_TOKEN" "http://127.0.0.1:$PORT/api/v1/tunnels" | grep -o '"restarts":[0-9]*' | cut -d: -f2)
  alive=$(frpc_alive)
  api=$(lib_status "$PORT" /health)
  echo "   restart after kill (measured/expected):$gaps"
  echo "   $on_time of $FRPC_KILLS on time (measured minus expected: $early to $late ms; allowed -50 to +800); restarts counted: $restarts; frpc alive: $alive; /health $api"
  [ "$on_time" = "$FRPC_KILLS" ] && [ "$restarts" = "$FRPC_KILLS" ] && [ "$alive" = 1 ] && [ "$api" = 200 ]
  verdict $? "every kill was followed by one restart on the backoff schedule, all counted, one frpc at a time"
  stop_agent
  sleep 0.2
  alive=$(frpc_alive)
  [ "$alive" = 0 ]
  verdict $? "no frpc left after the agent stopped ($alive alive)"
else
  broke "the agent with frp did not start, or frpc never did"
fi
fi

# --- 9. platform down, then back ----------------------------------------------------------
# Two outages: one before the node is registered (registration retried on the backoff: 100 ms
# doubling to a 1 s cap, full jitter), one after (heartbeats fail and stay at one per interval,
# no registration). Requests are counted per 10 s window of each outage.
if want platform; then
UP_SECS=$([ "$QUICK" = 1 ] && echo 8 || echo 10)
case_start "platform down, then back (twice)" "a stand-in platform answers 503 to everything for \
${OUTAGE_SECS} s, then registers the node and takes heartbeats for ${UP_SECS} s, then 503 again \
for ${OUTAGE_SECS} s, then ${UP_SECS} s up (registration backoff 100 ms doubling to a 1 s cap, \
full jitter; heartbeat every 1 s)"
pport=$(lib_free_port)
plog="$LIB_WORK/platform.log"
"$CLIENT" platform "127.0.0.1:$pport" "$OUTAGE_SECS" "$UP_SECS" "$OUTAGE_SECS" "$UP_SECS" >"$plog" &
platform_pid=$!
LIB_PIDS+=("$platform_pid")
sleep 0.2
# count FROM_MS TO_MS PATH_SUFFIX [STATUS]: requests the stand-in logged in [FROM, TO).
count() { awk -v a="$1" -v b="$2" -v p="$3\$" -v st="${4:-}" '$1 >= a && $1 < b && $3 ~ p && (st == "" || $4 == st)' "$plog" | wc -l; }
# max_window FROM_MS TO_MS PATH_SUFFIX: the most such requests in one 10 s window from FROM.
max_window() { awk -v a="$1" -v b="$2" -v p="$3\$" '$1 >= a && $1 < b && $3 ~ p { c[int(($1 - a) / 10000)]++ }
  END { m = 0; for (w in c) if (c[w] > m) m = c[w]; print m }' "$plog"; }
# first FROM_MS PATH_SUFFIX STATUS: ms of the first such answer at or after FROM.
first() { awk -v a="$1" -v p="$2\$" -v st="$3" '$1 >= a && $3 ~ p && $4 == st { print $1; exit }' "$plog"; }
if LIB_PLATFORM_URL="http://127.0.0.1:$pport" LIB_PLATFORM_TOKEN=bootstrap-token-0123456789abcdef \
  LIB_BACKOFF_INITIAL_MS=100 LIB_BACKOFF_MAX_MS=1000 LIB_HEARTBEAT_SECS=1 start_agent platform; then
  wait "$platform_pid" 2>/dev/null
  d=$((OUTAGE_SECS * 1000)) u=$((UP_SECS * 1000))
  up1=$d down2=$((d + u)) up2=$((2 * d + u)) end=$((2 * d + 2 * u))
  # Full jitter: retry n waits a random time in [0, min(1 s, 100 ms * 2^n)]; on average half
  # the cap once capped. Twice that average rate, plus the ramp, is the most it may send: in
  # all, and in any 10 s window.
  attempts=$(count 0 "$up1" /register)
  allowed=$(( 2 * OUTAGE_SECS * 2 + 6 ))
  window1=$(max_window 0 "$up1" /register)
  registered=$(first "$up1" /register 201)
  late1=$(( ${registered:-999999} - up1 ))
  beats1=$(count "${registered:-$end}" "$down2" /heartbeat 200)
  # Second outage: heartbeats keep their 1 s interval (at most 11 in a 10 s window), no
  # registration (a 503 is not "the platform forgot the node").
  failed2=$(count "$down2" "$up2" /heartbeat)
  window2=$(max_window "$down2" "$up2" /heartbeat)
  reg2=$(count "$down2" "$end" /register)
  back2=$(first "$up2" /heartbeat 200)
  late2=$(( ${back2:-999999} - up2 ))
  beats2=$(count "$up2" "$end" /heartbeat 200)
  node=$(curl -s -H "Authorization: Bearer $LIB_TOKEN" "http://127.0.0.1:$PORT/api/v1/metrics" | grep -o '"node_id":"[^"]*"')
  platform_health=$(component platform)
  echo "   outage 1 (unregistered, ${OUTAGE_SECS} s): $attempts registration attempts (allowed <= $allowed), at most $window1 in a 10 s window (allowed <= 46)"
  echo "   back: registered ${late1} ms after, then $beats1 heartbeats in ${UP_SECS} s"
  echo "   outage 2 (registered, ${OUTAGE_SECS} s): $failed2 heartbeats answered 503, at most $window2 in a 10 s window (allowed <= 11), $reg2 registrations"
  echo "   back: first heartbeat ${late2} ms after, then $beats2 in ${UP_SECS} s; metrics $node, /health platform \"$platform_health\""
  [ "$attempts" -ge 2 ] && [ "$attempts" -le "$allowed" ] && [ "$window1" -le 46 ] && [ "$late1" -le 2500 ] \
    && [ "$beats1" -ge $((UP_SECS - 5)) ] && [ "$beats1" -le $((UP_SECS + 2)) ] \
    && [ "$failed2" -ge $((OUTAGE_SECS / 2)) ] && [ "$failed2" -le $((OUTAGE_SECS + 2)) ] && [ "$window2" -le 11 ] && [ "$reg2" = 0 ] \
    && [ "$late2" -le 2000 ] && [ "$beats2" -ge $((UP_SECS - 5)) ] && [ "$node" = '"node_id":"node-torture"' ]
  verdict $? "no burst beyond the backoff schedule while down (registration retries, heartbeats at their interval); registration and heartbeats resumed within the cap after each outage"
  stop_agent
else
  broke "the agent did not start"
fi
fi

# --- 10. soak -----------------------------------------------------------------------------
if want soak; then
case_start "soak" "${SOAK_SECS} s of ~1,000 GET/s (health, metrics, container list) over 4 \
keep-alive connections, with containers created and deleted through the API meanwhile; RSS \
sampled every 5 s"
if start_agent soak && { [ "$HAVE_DOCKER" = 0 ] || docker_ready; }; then
  "$CLIENT" load "127.0.0.1:$PORT" "$LIB_TOKEN" "$SOAK_SECS" 1000 >"$LIB_WORK/load.log" &
  load_pid=$!
  LIB_PIDS+=("$load_pid")
  start=$(lib_now_us)
  cycles=0 errors=0 next_rss=0
  : >"$LIB_WORK/rss"
  while kill -0 "$load_pid" 2>/dev/null; do
    now=$(( ($(lib_now_us) - start) / 1000000 ))
    if [ "$now" -ge "$next_rss" ]; then
      echo "$now $(lib_rss_kib "$PID")" >>"$LIB_WORK/rss"
      next_rss=$((next_rss + 5))
    fi
    if [ "$HAVE_DOCKER" = 1 ]; then
      c=$(lib_api "$PORT" POST /api/v1/containers "{\"claim_id\":\"soak-$$-$cycles\",\"image\":\"$LIB_IMAGE\",\"gpu_count\":1,\"command\":[\"sleep\",\"600\"]}" | tail -1 | cut -d' ' -f1)
      d=$(lib_api "$PORT" DELETE "/api/v1/containers/soak-$$-$cycles" | tail -1 | cut -d' ' -f1)
      [ "$c" = 201 ] && [ "$d" = 200 ] || { errors=$((errors + 1)); echo "   cycle $cycles: create $c, delete $d"; }
      cycles=$((cycles + 1))
    else
      sleep 1
    fi
  done
  wait "$load_pid"
  load_rc=$?
  cat "$LIB_WORK/load.log"
  # Least-squares RSS slope (MiB/min) over all samples, the first half and the second half.
  slope() { awk -v from="$1" -v to="$2" '$1 >= from && $1 < to { n++; sx += $1; sy += $2; sxx += $1 * $1; sxy += $1 * $2 }
    END { d = n * sxx - sx * sx; if (n < 3 || d == 0) print "n/a"; else printf "%+.3f MiB/min", (n * sxy - sx * sy) / d * 60 / 1024 }' "$LIB_WORK/rss"; }
  half=$((SOAK_SECS / 2))
  all=$(slope 0 999999) early=$(slope 0 "$half") late=$(slope "$half" 999999)
  first=$(head -1 "$LIB_WORK/rss" | cut -d' ' -f2) last=$(tail -1 "$LIB_WORK/rss" | cut -d' ' -f2)
  peak=$(sort -k2 -n "$LIB_WORK/rss" | tail -1 | cut -d' ' -f2)
  mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
  echo "   $cycles create+delete cycles, $errors failed; RSS $(mib "$first") -> $(mib "$last") MiB (peak $(mib "$peak")), $(wc -l <"$LIB_WORK/rss") samples"
  echo "   RSS slope: $all overall; first half $early, second half $late"
  [ "$load_rc" = 0 ] && [ "$errors" = 0 ]
  verdict $? "zero errors under mixed load with containers coming and going (RSS slope $all, second half $late)"
  stop_agent
else
  broke "the agent did not start"
fi
fi

echo
echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" = 0 ]
