#!/usr/bin/env bash
# Installs a built utopia-node-agent on this host (no network needed):
#   binary   -> /usr/local/bin/utopia-node-agent
#   config   -> /etc/utopia/agent-config.yaml (mode 0600; only if absent, with a fresh random
#               agent_api.auth_token instead of the example one)
#   service  -> the systemd unit /etc/systemd/system/utopia-node-agent.service, or the OpenRC
#               script /etc/init.d/utopia-node-agent with /etc/logrotate.d/utopia-node-agent for
#               its log file, for the init system the host runs
#   README, LICENSE -> /usr/local/share/doc/utopia-node-agent/
# Usage: sudo scripts/install.sh [path/to/utopia-node-agent]   (default target/release/...)
#
# Environment:
#   DESTDIR=/some/root  install into a staging root: nothing is enabled, started or reloaded.
#   INIT=systemd|openrc which service file to install, instead of detecting the init system
#                       (a running systemd: /run/systemd/system; OpenRC: openrc-run). A DESTDIR
#                       install detects only from the staging root's own /run/systemd/system or
#                       /sbin/openrc-run, so a package build sets INIT; without it the service
#                       file is skipped, and the script says so.
#   INIT=none           no service file.
# scripts/uninstall.sh removes what this installs.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-target/release/utopia-node-agent}
root=${DESTDIR:-}
init=${INIT:-}

case "$init" in
  "" | systemd | openrc | none) ;;
  *)
    echo "error: INIT=$init: use INIT=systemd, INIT=openrc or INIT=none" >&2
    exit 2
    ;;
esac
if [ ! -x "$binary" ]; then
  echo "error: $binary not found; build it first: cargo build --release" >&2
  exit 1
fi

install -d -m 0755 "$root/usr/local/bin" "$root/usr/local/share/doc/utopia-node-agent"
install -m 0755 "$binary" "$root/usr/local/bin/utopia-node-agent"
install -m 0644 README.md LICENSE "$root/usr/local/share/doc/utopia-node-agent/"
install -d -m 0700 "$root/etc/utopia" "$root/var/lib/utopia"

config="$root/etc/utopia/agent-config.yaml"
if [ -e "$config" ]; then
  echo "kept existing $config"
else
  token=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  umask 077
  # The example token and the comment that calls it an example both go.
  sed -e "s/change-me-dev-token-0123456789abcdef/$token/" \
    -e "s|^\( *\)# CHANGE IT: .*|\1# Generated at random by scripts/install.sh on $(date -u +%Y-%m-%d). To rotate it, put a new\n\1# one here (\`openssl rand -hex 32\`) and restart the agent.|" \
    conf/agent-config.yaml >"$config.tmp"
  if grep -q -e "change-me-dev-token" -e "CHANGE IT" "$config.tmp"; then
    rm -f "$config.tmp"
    echo "error: could not replace the example token in conf/agent-config.yaml" >&2
    exit 1
  fi
  chmod 0600 "$config.tmp"
  mv "$config.tmp" "$config"
  echo "wrote $config with a new random agent_api.auth_token (read it there)"
fi

if [ -z "$init" ]; then
  if [ -d "$root/run/systemd/system" ]; then
    init=systemd
  elif [ -n "$root" ] && [ -x "$root/sbin/openrc-run" ]; then
    init=openrc
  elif [ -z "$root" ] && command -v openrc-run >/dev/null 2>&1; then
    init=openrc
  elif [ -n "$root" ]; then
    echo "skipped the service file (init/utopia-node-agent.service for systemd," \
      "init/utopia-node-agent.openrc for OpenRC): DESTDIR=$root has neither" \
      "run/systemd/system nor sbin/openrc-run, so its init system is unknown;" \
      "set INIT=systemd or INIT=openrc to stage one" >&2
    init=none
  else
    echo "no systemd or OpenRC found: start /usr/local/bin/utopia-node-agent yourself" \
      "(or set INIT=systemd or INIT=openrc)" >&2
    init=none
  fi
fi

case "$init" in
  systemd)
    install -d -m 0755 "$root/etc/systemd/system"
    install -m 0644 init/utopia-node-agent.service "$root/etc/systemd/system/utopia-node-agent.service"
    echo "installed the systemd unit; then: systemctl daemon-reload && systemctl enable --now utopia-node-agent"
    if [ -z "$root" ]; then systemctl daemon-reload || true; fi
    ;;
  openrc)
    install -d -m 0755 "$root/etc/init.d"
    install -m 0755 init/utopia-node-agent.openrc "$root/etc/init.d/utopia-node-agent"
    install -d -m 0755 "$root/etc/logrotate.d"
    install -m 0644 init/utopia-node-agent.logrotate "$root/etc/logrotate.d/utopia-node-agent"
    echo "installed the OpenRC service; then: rc-update add utopia-node-agent default && rc-service utopia-node-agent start"
    ;;
esac
echo "edit $config (central_platform.api_url, central_platform.bootstrap_token), then check it: utopia-node-agent --check-config -c /etc/utopia/agent-config.yaml"
