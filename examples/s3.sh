#!/usr/bin/env bash
# Stream a snapshot archive to S3 and back through pipes: nothing touches local disk.
set -euo pipefail
SNAPSHOT=${1:?usage: s3.sh VOL@SNAP s3://bucket/key [--since OLDSNAP]}
KEY=${2:?usage: s3.sh VOL@SNAP s3://bucket/key [--since OLDSNAP]}
shift 2
shoal archive create "$SNAPSHOT" "$@" | aws s3 cp - "$KEY"
aws s3 cp "$KEY" - | shoal archive verify
# Restore: aws s3 cp "$KEY" - | shoal archive restore NEWVOL --create
