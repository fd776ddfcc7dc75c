#!/usr/bin/env bash
# Nightly crash-consistent snapshot of a volume and an archive of it: a full archive on the first
# night (and every $FULL_DAY), an incremental since the previous night's snapshot otherwise. Keeps
# the last $KEEP snapshots. Needs only the `shoal` binary (and bash, date, awk). Talks to a group
# running with TLS (see three-host-tls.sh) with an admin certificate from its CA: $SHOAL_TLS,
# default /etc/shoal/admin (empty: plain TCP).
# Run from cron, e.g.:
#   15 2 * * *  SHOAL_NODE=10.0.0.1:7400 SHOAL_TLS=/etc/shoal/admin /opt/shoal/examples/nightly-archive.sh db1 /backup/db1
set -euo pipefail
VOLUME=${1:?usage: nightly-archive.sh VOLUME DIR}
DIR=${2:?usage: nightly-archive.sh VOLUME DIR}
SHOAL_BIN=${SHOAL:-shoal}
KEEP=${KEEP:-7}
FULL_DAY=${FULL_DAY:-7} # day of the week for a full archive, 1-7 as `date +%u` (7: Sunday); 0: never
TLS_DIR=${SHOAL_TLS-/etc/shoal/admin}
mkdir -p "$DIR"

# Every command, and the NBD reads archive create makes from each page's owner, go over TLS.
# `command` runs the binary: "$SHOAL_BIN" is "shoal" by default, the name of this very function.
shoal() { if [ -n "$TLS_DIR" ]; then command "$SHOAL_BIN" "$@" --tls "$TLS_DIR"; else command "$SHOAL_BIN" "$@"; fi; }

today="nightly-$(date -u +%Y%m%d)"
# The newest nightly snapshot so far, as VOL@NAME; exit code 3 means there is none: the first night.
previous=$(shoal snap list "$VOLUME" --prefix nightly- --latest) || {
  status=$?
  [ "$status" = 3 ] || exit "$status"
  previous=""
}

shoal snap create "$VOLUME" --name "$today" --mode timestamp >&2
if [ -n "$previous" ] && [ "$(date -u +%u)" != "$FULL_DAY" ]; then
  shoal archive create "$VOLUME@$today" --since "$previous" -o "$DIR/$today.incr.tar"
else
  shoal archive create "$VOLUME@$today" -o "$DIR/$today.full.tar"
fi
command "$SHOAL_BIN" archive verify -i "$DIR/$today".*.tar >&2 # offline: reads the file only

# Rotation: drop snapshots beyond the newest $KEEP (archives stay on the backup disk).
shoal snap list "$VOLUME" --prefix nightly- --names |
  awk -v keep="$KEEP" '{ names[NR] = $0 } END { for (i = 1; i <= NR - keep; i++) print names[i] }' |
  while read -r old; do shoal snap delete "$old" >&2; done
