#!/usr/bin/env bash
# Removes what scripts/install.sh installed:
#   stops and disables the service (systemd or OpenRC), then removes the binary
#   /usr/local/bin/utopia-node-agent, the systemd unit, the OpenRC script and its logrotate
#   snippet, and /usr/local/share/doc/utopia-node-agent/.
# Keeps the config and the node identity (/etc/utopia) and /var/lib/utopia, so that a later
# install runs as the same node with the same settings, unless --purge: then those go too, with
# the OpenRC log /var/log/utopia-node-agent.log* (the host joins as a new node next time). An
# identity_file_path outside /etc/utopia is not touched.
# Containers the agent started keep running (docker ps --filter label=io.utopia.managed=true).
# Usage: sudo scripts/uninstall.sh [--purge]
# DESTDIR=/some/root removes from a staging root (nothing is stopped or disabled then).
set -euo pipefail
purge=false
for arg in "$@"; do
  case "$arg" in
    --purge) purge=true ;;
    -h | --help)
      sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "error: unknown argument $arg (usage: scripts/uninstall.sh [--purge])" >&2
      exit 2
      ;;
  esac
done
root=${DESTDIR:-}
service=utopia-node-agent
unit="$root/etc/systemd/system/$service.service"
openrc="$root/etc/init.d/$service"

# Stop first: a binary removed under a running service keeps running until the next reboot.
if [ -z "$root" ]; then
  if [ -e "$unit" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    if ! systemctl disable --now "$service.service"; then
      echo "error: could not stop and disable $service.service; nothing removed" >&2
      exit 1
    fi
    echo "stopped and disabled $service.service"
  fi
  if [ -e "$openrc" ] && command -v rc-service >/dev/null 2>&1; then
    if ! rc-service --ifstarted "$service" stop; then
      echo "error: could not stop the OpenRC service $service; nothing removed" >&2
      exit 1
    fi
    # Not an error when it was in no runlevel.
    rc-update del "$service" >/dev/null 2>&1 || true
    echo "stopped $service and removed it from its runlevels"
  fi
fi

remove() {
  for path in "$@"; do
    if [ -e "$path" ] || [ -L "$path" ]; then
      rm -rf -- "$path"
      echo "removed $path"
    fi
  done
}
remove "$root/usr/local/bin/utopia-node-agent" "$unit" "$openrc" \
  "$root/etc/logrotate.d/$service" "$root/usr/local/share/doc/utopia-node-agent"
if [ -z "$root" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi

if $purge; then
  remove "$root/etc/utopia" "$root/var/lib/utopia"
  remove "$root"/var/log/utopia-node-agent.log*
else
  for kept in "$root/etc/utopia" "$root/var/lib/utopia"; do
    if [ -e "$kept" ]; then echo "kept $kept (scripts/uninstall.sh --purge removes it)"; fi
  done
fi
