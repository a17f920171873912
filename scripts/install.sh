#!/usr/bin/env bash
# Installs a built utopia-node-agent on this host (no network needed):
#   binary   -> /usr/local/bin/utopia-node-agent
#   config   -> /etc/utopia/agent-config.yaml (mode 0600; only if absent, with a fresh random
#               agent_api.auth_token instead of the example one)
#   service  -> systemd unit or OpenRC script, whichever init system the host runs
#   README   -> /usr/local/share/doc/utopia-node-agent/
# Usage: sudo scripts/install.sh [path/to/utopia-node-agent]   (default target/release/...)
# DESTDIR=/some/root installs into a staging root (nothing is enabled or started then).
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-target/release/utopia-node-agent}
root=${DESTDIR:-}

if [ ! -x "$binary" ]; then
  echo "error: $binary not found; build it first: cargo build --release" >&2
  exit 1
fi

install -d -m 0755 "$root/usr/local/bin" "$root/usr/local/share/doc/utopia-node-agent"
install -m 0755 "$binary" "$root/usr/local/bin/utopia-node-agent"
install -m 0644 README.md "$root/usr/local/share/doc/utopia-node-agent/README.md"
install -d -m 0700 "$root/etc/utopia" "$root/var/lib/utopia"

config="$root/etc/utopia/agent-config.yaml"
if [ -e "$config" ]; then
  echo "kept existing $config"
else
  token=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  umask 077
  sed "s/change-me-dev-token-0123456789abcdef/$token/" conf/agent-config.yaml >"$config.tmp"
  chmod 0600 "$config.tmp"
  mv "$config.tmp" "$config"
  echo "wrote $config with a new random agent_api.auth_token (read it there)"
fi

if [ -d "$root/run/systemd/system" ] || { [ -z "$root" ] && [ -d /run/systemd/system ]; } || [ "${INIT:-}" = systemd ]; then
  install -d -m 0755 "$root/etc/systemd/system"
  install -m 0644 init/utopia-node-agent.service "$root/etc/systemd/system/utopia-node-agent.service"
  echo "installed the systemd unit; then: systemctl daemon-reload && systemctl enable --now utopia-node-agent"
  if [ -z "$root" ]; then systemctl daemon-reload || true; fi
elif command -v openrc-run >/dev/null 2>&1 || [ "${INIT:-}" = openrc ]; then
  install -d -m 0755 "$root/etc/init.d"
  install -m 0755 init/utopia-node-agent.openrc "$root/etc/init.d/utopia-node-agent"
  echo "installed the OpenRC service; then: rc-update add utopia-node-agent default && rc-service utopia-node-agent start"
else
  echo "no systemd or OpenRC found: start /usr/local/bin/utopia-node-agent yourself" >&2
fi
echo "edit $config (central_platform.api_url, central_platform.bootstrap_token), then check it: utopia-node-agent --check-config -c /etc/utopia/agent-config.yaml"
