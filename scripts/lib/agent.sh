# Shared by scripts/bench.sh and scripts/torture.sh (sourced, not run): build the agent and the
# fake NVML library, write a config, start and stop agents on loopback, read a process's memory
# and CPU time, time HTTP requests. Everything a script starts is recorded and stopped by
# `lib_cleanup` (by pid; containers by the run's own docker label).
#
# Needs: bash 5 (EPOCHREALTIME), curl, gcc, docker for the container cases.

LIB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LIB_TOKEN=${LIB_TOKEN:-bench-token-0123456789abcdef0123456789}
LIB_WORK=$(mktemp -d /tmp/utopia-script.XXXXXX)
# The run's own label key (containers of other runs on a shared engine are never touched); the
# value may differ per agent so that agents of one run do not see each other's containers.
LIB_LABEL_KEY="io.utopia.script-run-$$"
LIB_LABEL_VALUE=main
LIB_IMAGE=${LIB_IMAGE:-utopia-test-busybox:latest}
LIB_PIDS=()

lib_log() { printf '%s\n' "$*" >&2; }

# Stops every process this script started (by pid), removes the run's containers and files.
lib_cleanup() {
  local pid
  for pid in "${LIB_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${LIB_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if command -v docker >/dev/null 2>&1; then
    docker ps -aq --filter "label=$LIB_LABEL_KEY" | xargs -r docker rm -f >/dev/null 2>&1 || true
  fi
  rm -rf "$LIB_WORK"
}

# Installs Debian packages for the commands named, if missing: lib_need_apt wrk:wrk ...
lib_need_apt() {
  local pair missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    lib_log "installing ${missing[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
  fi
}

# Builds the release agent (and the extra binaries named) under target/release.
lib_build_release() {
  (cd "$LIB_ROOT" && nice cargo build --locked --release --quiet "$@")
  LIB_AGENT="$LIB_ROOT/target/release/utopia-node-agent"
}

# Compiles the fake NVML library (tests/fake_nvml/fake_nvml.c) into $LIB_WORK; sets LIB_NVML.
lib_build_fake_nvml() {
  LIB_NVML="$LIB_WORK/fake_nvml/libnvidia-ml.so.1"
  mkdir -p "$(dirname "$LIB_NVML")"
  gcc -std=c11 -O2 -fPIC -shared -fvisibility=hidden -Wl,-Bsymbolic \
    -o "$LIB_NVML" "$LIB_ROOT/tests/fake_nvml/fake_nvml.c"
}

# A TCP port on loopback nobody listens on (bash's /dev/tcp: a refused connect means free),
# below the kernel's ephemeral range: a port in it may be some live connection's source port
# (the abuse case opens thousands), which the probe cannot see and the agent's bind fails on.
lib_free_port() {
  local port low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true)
  case $low in '' | *[!0-9]*) low=32768 ;; esac
  [ "$low" -gt 21024 ] || low=50000
  while :; do
    port=$((20000 + RANDOM % (low - 20000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
}

# Writes an agent config into directory $1 listening on port $2 and prints its path. The LIB_*
# variables below change settings; LIB_DOCKER_EXTRA and LIB_FRP_EXTRA hold more `docker:` and
# `frp:` lines (indented by two).
lib_write_config() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  cat >"$dir/agent-config.yaml" <<YAML
identity_file_path: "$dir/node_id"
log_level: "${LIB_LOG_LEVEL:-warn}"
central_platform:
  api_url: "${LIB_PLATFORM_URL:-}"
  bootstrap_token: "${LIB_PLATFORM_TOKEN:-}"
  heartbeat_interval_secs: ${LIB_HEARTBEAT_SECS:-30}
  backoff_initial_ms: ${LIB_BACKOFF_INITIAL_MS:-1000}
  backoff_max_ms: ${LIB_BACKOFF_MAX_MS:-300000}
frp:
  work_dir: "$dir/frp"
${LIB_FRP_EXTRA:-}
agent_api:
  listen_address: "127.0.0.1:$port"
  auth_token: "$LIB_TOKEN"
  max_connections: ${LIB_MAX_CONNECTIONS:-1024}
  idle_timeout_secs: ${LIB_IDLE_TIMEOUT_SECS:-15}
gpu:
  nvml_library_path: "$LIB_NVML"
  sample_interval_ms: ${LIB_GPU_INTERVAL_MS:-1000}
  init_retry_secs: 1
docker:
  binary: "${LIB_DOCKER:-docker}"
  gpu_mode: "env"
  managed_label: "$LIB_LABEL_KEY=$LIB_LABEL_VALUE"
${LIB_DOCKER_EXTRA:-}
YAML
  chmod 600 "$dir/agent-config.yaml"
  echo "$dir/agent-config.yaml"
}

# Starts the agent on config $1 with the extra environment assignments that follow (KEY=VALUE),
# logging to $1's directory; sets LIB_AGENT_PID. Does not wait.
lib_spawn_agent() {
  local config=$1
  shift
  # The malloc setting the service files give it (init/utopia-node-agent.service).
  env GLIBC_TUNABLES=glibc.malloc.tcache_count=0 "$@" "$LIB_AGENT" --config "$config" </dev/null >>"$(dirname "$config")/agent.log" 2>&1 &
  LIB_AGENT_PID=$!
  LIB_PIDS+=("$LIB_AGENT_PID")
}

# The status code of GET $2 on 127.0.0.1:$1 with bash's /dev/tcp (no process started: usable
# in tight polling loops); empty when nothing answers.
lib_status() {
  local port=$1 path=$2 line=""
  {
    exec 3<>"/dev/tcp/127.0.0.1/$port" &&
      printf 'GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' "$path" >&3 &&
      IFS=' ' read -r -t 2 _ line _ <&3
    exec 3<&- 3>&-
  } 2>/dev/null
  echo "$line"
}

# Waits until GET /health on port $1 answers 200 (at most $2 seconds, default 10).
lib_wait_health() {
  local port=$1 limit=${2:-10} deadline
  deadline=$(( ${EPOCHREALTIME/./} + limit * 1000000 ))
  while [ "${EPOCHREALTIME/./}" -lt "$deadline" ]; do
    [ "$(lib_status "$port" /health)" = 200 ] && return 0
    sleep 0.005
  done
  return 1
}

# Microseconds since the epoch.
lib_now_us() { echo "${EPOCHREALTIME/./}"; }

# Resident memory of pid $1 in KiB.
lib_rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# User + system CPU time of pid $1 (or of thread $1/task/$2) in clock ticks.
lib_cpu_ticks() {
  local stat=/proc/$1/stat
  [ -n "${2:-}" ] && stat=/proc/$1/task/$2/stat
  # Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
  sed 's/^.*) //' "$stat" | awk '{ print $12 + $13 }'
}

# Nanoseconds thread $2 of pid $1 has run on a CPU (the scheduler's count, finer than ticks).
lib_run_ns() { cut -d' ' -f1 "/proc/$1/task/$2/schedstat"; }

# The thread id of the thread named $2 in pid $1.
lib_thread() {
  local task
  for task in /proc/"$1"/task/*; do
    if [ "$(cat "$task/comm" 2>/dev/null)" = "$2" ]; then
      basename "$task"
      return 0
    fi
  done
  return 1
}

# curl with the token against the agent on port $1: lib_api PORT METHOD PATH [BODY]; prints the
# body, then a last line with the status code and the total time in seconds.
lib_api() {
  local port=$1 method=$2 path=$3 body=${4:-}
  curl -s -m 60 -X "$method" -H "Authorization: Bearer $LIB_TOKEN" \
    ${body:+-H 'Content-Type: application/json' --data "$body"} \
    -w '\n%{http_code} %{time_total}\n' "http://127.0.0.1:$port$path"
}

# The median of the numbers on stdin.
lib_median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Builds the busybox test image if docker has not got it.
lib_test_image() { "$LIB_ROOT/scripts/test-image.sh" "$LIB_IMAGE" >/dev/null; }

# Prints the path of a schemathesis command, installing it when missing: pip's, else in a
# virtual environment under ~/.cache (Debian's system pip refuses to install). Empty when
# neither works (no pip, no network).
lib_schemathesis() {
  local venv="$HOME/.cache/utopia-schemathesis"
  if command -v schemathesis >/dev/null 2>&1; then command -v schemathesis; return; fi
  if [ -x "$venv/bin/schemathesis" ]; then echo "$venv/bin/schemathesis"; return; fi
  lib_log "installing schemathesis (pip)"
  if pip install --quiet schemathesis >/dev/null 2>&1 && command -v schemathesis >/dev/null 2>&1; then
    command -v schemathesis
  elif python3 -m venv "$venv" >/dev/null 2>&1 && "$venv/bin/pip" install --quiet schemathesis >/dev/null 2>&1; then
    echo "$venv/bin/schemathesis"
  fi
}
