#!/usr/bin/env bash
# Idle RSS of one or more agent binaries side by side, started as scripts/bench.sh starts the
# agent (fake NVML with 8 GPUs, the real docker engine, 1 s GPU sampling), each from its own
# copy of the binary in a page-cache state this script sets, because on kernels that map whole
# large folios at a fault (6.18 here) the copy's page-cache folios decide how much of the code
# around each page run becomes resident (README, "Where a target is missed"):
#   CACHE=cold (default)  the copy's pages dropped before the start (posix_fadvise DONTNEED;
#                         nothing else maps the copy): exec reads them in, small folios
#   CACHE=hot             dropped, then read whole with read(2)
#   CACHE=cp              as `cp` leaves it (64 KiB folios on ext4)
#   CACHE=write           written with one write(2) (folios up to 2 MiB)
#   CACHE=asis            the binary itself, as it lies (no copy)
# After IDLE_SECS (default 60) prints each agent's RSS per mapping class with the page-cache
# folios behind its file pages (scripts/rss-map.py; needs root).
# Usage: scripts/idle-rss.sh BINARY...   (ROUNDS=N runs the set N times)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/agent.sh
trap lib_cleanup EXIT
IDLE_SECS=${IDLE_SECS:-60}
CACHE=${CACHE:-cold}
ROUNDS=${ROUNDS:-1}
[ $# -ge 1 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
lib_build_fake_nvml
export FAKE_NVML_GPU_COUNT=8
for round in $(seq "$ROUNDS"); do
  pids=()
  names=()
  i=0
  for bin in "$@"; do
    i=$((i + 1))
    if [ "$CACHE" = asis ]; then
      LIB_AGENT=$bin
    else
      LIB_AGENT="$LIB_WORK/bin-$round-$i/utopia-node-agent"
      mkdir -p "$(dirname "$LIB_AGENT")"
      python3 - "$bin" "$LIB_AGENT" "$CACHE" <<'PY'
import os, shutil, sys
source, copy, cache = sys.argv[1:]
if cache == "write":
    with open(source, "rb") as f:
        data = f.read()
    with open(copy, "wb") as f:
        f.write(data)
else:
    shutil.copyfile(source, copy)
os.chmod(copy, 0o755)
if cache in ("cold", "hot"):
    fd = os.open(copy, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    if cache == "hot":
        while os.read(fd, 1 << 20):
            pass
    os.close(fd)
PY
      [ "$CACHE" != cp ] || cp "$bin" "$LIB_AGENT"
    fi
    port=$(lib_free_port)
    config=$(lib_write_config "$LIB_WORK/agent-$round-$i" "$port")
    lib_spawn_agent "$config"
    lib_wait_health "$port" 10 || { cat "$LIB_WORK/agent-$round-$i/agent.log" >&2; exit 1; }
    pids+=("$LIB_AGENT_PID")
    names+=("$bin")
  done
  lib_log "round $round: ${#pids[@]} agents idle for ${IDLE_SECS} s (cache: $CACHE)"
  sleep "$IDLE_SECS"
  for k in "${!pids[@]}"; do
    echo "== round $round: ${names[$k]} (cache $CACHE): VmRSS $(lib_rss_kib "${pids[$k]}") KiB, $(ls /proc/"${pids[$k]}"/task | wc -l) threads"
    python3 scripts/rss-map.py "${pids[$k]}"
  done
  for pid in "${pids[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
done
