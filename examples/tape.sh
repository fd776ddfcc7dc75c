#!/usr/bin/env bash
# Write a snapshot to a tape drive and read it back. Shoal writes whole tar records (10240 bytes
# by default; match the drive's block size with --record-size), so the stream goes straight to
# the non-rewinding device and GNU tar can list it from tape too.
set -euo pipefail
SNAPSHOT=${1:?usage: tape.sh VOL@SNAP [DEVICE]}
TAPE=${2:-/dev/nst0}
mt -f "$TAPE" rewind
mt -f "$TAPE" setblk 10240
shoal archive create "$SNAPSHOT" -o "$TAPE" --record-size 10240
mt -f "$TAPE" weof
mt -f "$TAPE" rewind
tar -tvf "$TAPE" --record-size=10240 | sed -n 1,10p   # any tar reads it
mt -f "$TAPE" rewind
shoal archive verify -i "$TAPE"
# To restore into a new volume:  mt -f "$TAPE" rewind && shoal archive restore NEWVOL --create -i "$TAPE"
