#!/usr/bin/env bash
# Writes scripts/symbol-order.txt, the functions the release agent runs from start-up through an
# idle minute and its common requests, which build.rs has lld place side by side (see there).
# Builds the release agent as usual, with lld's link map beside it (target/symbol-order.map:
# a release build keeps no symbols, and a build with them, another profile, names every
# function differently), runs a copy under valgrind's callgrind as scripts/bench.sh runs it
# (fake NVML with 8 GPUs, the real docker engine if there, 1 s GPU sampling), asks /health,
# /api/v1/metrics, /metrics and the container list a few times, and names the code callgrind
# saw run from the map (scripts/symbol-order.py); with perf installed, a second copy runs at
# full speed under `perf record -e page-faults` and the functions whose first run mapped a
# block of the binary are named too.
# Run it again when the idle agent's code changes much; a stale list only costs resident pages.
# Usage: scripts/symbol-order.sh   (IDLE_SECS=N to shorten; FRESH=1 to drop names not seen)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/agent.sh
trap lib_cleanup EXIT
IDLE_SECS=${IDLE_SECS:-60}
lib_need_apt valgrind:valgrind curl:curl gcc:gcc python3:python3
lib_log "building release with its link map"
UTOPIA_LINK_MAP="$LIB_ROOT/target/symbol-order.map" lib_build_release --bin utopia-node-agent
bin="$LIB_WORK/utopia-node-agent"
cp "$LIB_AGENT" "$bin"
lib_build_fake_nvml
export FAKE_NVML_GPU_COUNT=8
port=$(lib_free_port)
config=$(lib_write_config "$LIB_WORK/agent" "$port")
# With the malloc setting the bench and the service files give it: without it the agent
# executes /proc/self/exe again (src/allocator.rs), which under valgrind is valgrind itself.
GLIBC_TUNABLES=glibc.malloc.tcache_count=0 \
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$LIB_WORK/cg.out" \
  "$bin" --config "$config" >"$LIB_WORK/valgrind.log" 2>&1 &
vg=$!
LIB_PIDS+=("$vg")
lib_wait_health "$port" 120 || { cat "$LIB_WORK/valgrind.log" >&2; exit 1; }
# Beside it, the same binary at full speed under perf, recording the address of each page
# fault: code that runs only on timing callgrind's slowness changes (a channel's blocking
# path), or that callgrind does not name, shows up as the fault that mapped its block.
faults=()
if command -v perf >/dev/null 2>&1; then
  native_port=$(lib_free_port)
  native_config=$(lib_write_config "$LIB_WORK/native" "$native_port")
  GLIBC_TUNABLES=glibc.malloc.tcache_count=0 \
    perf record -q -e page-faults -c 1 -d -o "$LIB_WORK/faults.data" -- \
    "$bin" --config "$native_config" >"$LIB_WORK/native.log" 2>&1 &
  pf=$!
  LIB_PIDS+=("$pf")
  lib_wait_health "$native_port" 20 || { cat "$LIB_WORK/native.log" >&2; exit 1; }
else
  lib_log "perf not found: only the code callgrind saw is listed"
fi
lib_log "idle for ${IDLE_SECS} s under callgrind${pf:+ and perf}"
sleep "$IDLE_SECS"
for p in "$port" ${native_port:-}; do
  for _ in 1 2 3; do
    for path in /health /api/v1/metrics /metrics /api/v1/containers /api/v1/gpus; do
      lib_api "$p" GET "$path" >/dev/null || true
    done
  done
done
kill "$vg"
wait "$vg" 2>/dev/null || true
if [ -n "${pf:-}" ]; then
  native=$(pgrep -P "$pf" | head -1)
  kill "$native"
  wait "$pf" 2>/dev/null || true
  perf script -i "$LIB_WORK/faults.data" --show-mmap-events -F pid,addr 2>/dev/null \
    >"$LIB_WORK/faults.txt"
  faults=(--faults "$native" "$LIB_WORK/faults.txt")
fi
scripts/symbol-order.py "$bin" target/symbol-order.map "${faults[@]}" "$LIB_WORK"/cg.out* >"$LIB_WORK/seen.txt"
# One idle minute does not run every idle path (a thread pool shrinking, a reconcile's rare
# branch), and each function missing from the list costs a 64 KiB block: the names of the
# previous list that this run did not see are kept after the new ones (lld ignores names that
# no longer exist). FRESH=1 writes the list from this run alone.
if [ "${FRESH:-0}" = 1 ] || [ ! -f scripts/symbol-order.txt ]; then
  cp "$LIB_WORK/seen.txt" scripts/symbol-order.txt
else
  { cat "$LIB_WORK/seen.txt"; grep -vxF -f "$LIB_WORK/seen.txt" scripts/symbol-order.txt || true; } \
    >"$LIB_WORK/merged.txt"
  cp "$LIB_WORK/merged.txt" scripts/symbol-order.txt
fi
lib_log "scripts/symbol-order.txt: $(wc -l <scripts/symbol-order.txt) functions"
