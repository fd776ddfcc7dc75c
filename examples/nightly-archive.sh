#!/usr/bin/env bash
# Nightly crash-consistent snapshot of a volume and an archive of it: a full archive on the first
# night (and every Sunday), an incremental since the previous night's snapshot otherwise. Keeps
# the last $KEEP snapshots. Talks to a group running with TLS (see three-host-tls.sh) with an
# admin certificate from its CA: $SHOAL_TLS, default /etc/shoal/admin (empty: plain TCP).
# Run from cron, e.g.:
#   15 2 * * *  SHOAL_NODE=10.0.0.1:7400 SHOAL_TLS=/etc/shoal/admin /opt/shoal/examples/nightly-archive.sh db1 /backup/db1
set -euo pipefail
VOLUME=${1:?usage: nightly-archive.sh VOLUME DIR}
DIR=${2:?usage: nightly-archive.sh VOLUME DIR}
SHOAL_BIN=${SHOAL:-shoal}
KEEP=${KEEP:-7}
TLS_DIR=${SHOAL_TLS-/etc/shoal/admin}
mkdir -p "$DIR"

# Every command, and the NBD reads archive create makes from each page's owner, go over TLS.
shoal() { if [ -n "$TLS_DIR" ]; then "$SHOAL_BIN" "$@" --tls "$TLS_DIR"; else "$SHOAL_BIN" "$@"; fi; }

today="nightly-$(date -u +%Y%m%d)"
previous=$(shoal snap list "$VOLUME" --json | bun -e '
  const names = JSON.parse(await Bun.stdin.text()).snapshots.map((s) => s.name).filter((n) => n.startsWith("nightly-")).sort();
  console.log(names.at(-1) ?? "")')

shoal snap create "$VOLUME" --name "$today" --mode timestamp >&2
if [ -n "$previous" ] && [ "$(date -u +%u)" != 7 ]; then
  shoal archive create "$VOLUME@$today" --since "$previous" -o "$DIR/$today.incr.tar"
else
  shoal archive create "$VOLUME@$today" -o "$DIR/$today.full.tar"
fi
"$SHOAL_BIN" archive verify -i "$DIR/$today".*.tar >&2 # offline: reads the file only

# Rotation: drop snapshots beyond the newest $KEEP (archives stay on the backup disk).
shoal snap list "$VOLUME" --json | bun -e '
  const keep = Number(process.argv[1]);
  const names = JSON.parse(await Bun.stdin.text()).snapshots.map((s) => s.name).filter((n) => n.startsWith("nightly-")).sort();
  for (const name of names.slice(0, Math.max(0, names.length - keep))) console.log(name)' "$KEEP" |
  while read -r old; do shoal snap delete "$VOLUME@$old" >&2; done
