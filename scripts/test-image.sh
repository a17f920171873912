#!/usr/bin/env bash
# Builds the image the container tests run, without any registry: a rootfs holding Debian's
# statically linked busybox (package busybox-static), imported with `docker import`.
# Usage: scripts/test-image.sh [IMAGE]   (default utopia-test-busybox:latest). Idempotent.
set -euo pipefail
image=${1:-utopia-test-busybox:latest}
docker=${DOCKER:-docker}

if "$docker" image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi

busybox=""
for candidate in /bin/busybox /usr/bin/busybox; do
  if [ -x "$candidate" ] && file -L "$candidate" 2>/dev/null | grep -q 'statically linked'; then
    busybox=$candidate
    break
  fi
done
if [ -z "$busybox" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download busybox-static >/dev/null)
  dpkg -x "$tmp"/busybox-static_*.deb "$tmp/pkg"
  busybox="$tmp/pkg/bin/busybox"
fi

root=$(mktemp -d)
trap 'rm -rf "$root" ${tmp:+"$tmp"}' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/etc"
cp "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
tar -C "$root" -c . | "$docker" import \
  --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' - "$image" >/dev/null
echo "built $image"
