#!/usr/bin/env bash
# Shoal demo: three nodes on loopback in a temporary directory, one volume spread over all
# three, a generated file imported through node 1 and exported through node 3, checksums compared;
# then snapshot, clone, archive, and a fourth node joining and taking its share of the pages.
set -euo pipefail
cd "$(dirname "$0")/.."
SHOAL=${SHOAL:-./dist/shoal}
[ -x "$SHOAL" ] || { echo "build first: npm run build" >&2; exit 1; }

work=$(mktemp -d /tmp/shoal-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

port() { # a free loopback port
  bun -e 'const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } }); console.log(l.port); l.stop(true)'
}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "starting three nodes in $work"
declare -a mesh nbd
for i in 1 2 3; do
  mesh[$i]=$(port); nbd[$i]=$(port)
  join=()
  [ "$i" -gt 1 ] && join=(--join "127.0.0.1:${mesh[1]}")
  "$SHOAL" node --id "node$i" --data "$work/node$i" --listen "127.0.0.1:${mesh[$i]}" --nbd "127.0.0.1:${nbd[$i]}" "${join[@]}" \
    2>"$work/node$i.log" &
  pids+=($!)
  for _ in $(seq 1 100); do "$SHOAL" route nodes --node "127.0.0.1:${mesh[$i]}" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "node$i: mesh 127.0.0.1:${mesh[$i]}, nbd 127.0.0.1:${nbd[$i]}"
done
export SHOAL_NODE="127.0.0.1:${mesh[1]}"
for _ in $(seq 1 100); do
  [ "$("$SHOAL" route nodes --json | grep -c '"state": "up"')" = 3 ] && break; sleep 0.1
done
"$SHOAL" route nodes

step "creating volume 'demo' (256M) over all three nodes"
"$SHOAL" volume create demo --size 256M
"$SHOAL" route show demo

step "importing a generated 200 MiB file through node 1"
head -c $((200 * 1024 * 1024)) /dev/urandom > "$work/source.img"
"$SHOAL" volume import demo "$work/source.img" --node "127.0.0.1:${mesh[1]}"
"$SHOAL" volume info demo

step "exporting it through node 3"
"$SHOAL" volume export demo "$work/exported.img" --node "127.0.0.1:${mesh[3]}"
truncate -s $((200 * 1024 * 1024)) "$work/exported.img"

step "comparing checksums"
a=$(sha256sum < "$work/source.img" | cut -d' ' -f1)
b=$(sha256sum < "$work/exported.img" | cut -d' ' -f1)
echo "source   $a"
echo "exported $b"
if [ "$a" != "$b" ]; then echo "MISMATCH" >&2; exit 1; fi
echo "match: the volume holds exactly what was imported"

step "taking a crash-consistent snapshot 'v1' (hold mode) through node 2"
"$SHOAL" snap create demo --name v1 --node "127.0.0.1:${mesh[2]}"

step "overwriting the first 8 MiB of the volume, then reading the snapshot back through node 3"
head -c $((8 * 1024 * 1024)) /dev/zero | tr '\0' 'x' > "$work/patch.img"
"$SHOAL" volume import demo "$work/patch.img"
"$SHOAL" snap list demo
"$SHOAL" volume export demo@v1 "$work/snapshot.img" --node "127.0.0.1:${mesh[3]}"
truncate -s $((200 * 1024 * 1024)) "$work/snapshot.img"
s=$(sha256sum < "$work/snapshot.img" | cut -d' ' -f1)
echo "snapshot $s"
if [ "$a" != "$s" ]; then echo "MISMATCH: the snapshot changed with the volume" >&2; exit 1; fi
echo "match: the snapshot (exported read-only as nbd://127.0.0.1:${nbd[3]}/demo@v1) kept the data as it was"

step "cloning the snapshot into a writable volume 'demo-clone' and comparing it with the source file"
"$SHOAL" snap clone demo@v1 demo-clone
"$SHOAL" volume export demo-clone "$work/clone.img" --node "127.0.0.1:${mesh[2]}"
truncate -s $((200 * 1024 * 1024)) "$work/clone.img"
c=$(sha256sum < "$work/clone.img" | cut -d' ' -f1)
echo "clone    $c"
if [ "$a" != "$c" ]; then echo "MISMATCH: the clone does not hold the snapshot's data" >&2; exit 1; fi
echo "match: the clone holds the volume as it was at the snapshot, not the later overwrite"

step "archiving snapshot v1 as a tar stream, verifying it, restoring it into a new volume"
"$SHOAL" archive create demo@v1 -o "$work/v1.tar"
tar -tvf "$work/v1.tar" | sed -n 1,3p
"$SHOAL" archive verify -i "$work/v1.tar"
"$SHOAL" archive restore demo-restored --create -i "$work/v1.tar" --node "127.0.0.1:${mesh[3]}"
"$SHOAL" volume export demo-restored "$work/restored.img"
truncate -s $((200 * 1024 * 1024)) "$work/restored.img"
r=$(sha256sum < "$work/restored.img" | cut -d' ' -f1)
echo "restored $r"
if [ "$a" != "$r" ]; then echo "MISMATCH: the restored volume differs" >&2; exit 1; fi
echo "match: archive -> verify -> restore gives back the snapshot byte for byte"

step "joining a fourth node and rebalancing 'demo' onto it while the clone keeps sharing pages"
mesh[4]=$(port); nbd[4]=$(port)
"$SHOAL" node --id node4 --data "$work/node4" --listen "127.0.0.1:${mesh[4]}" --nbd "127.0.0.1:${nbd[4]}" --join "127.0.0.1:${mesh[1]}" \
  2>"$work/node4.log" &
pids+=($!)
up=0
for _ in $(seq 1 100); do
  up=$("$SHOAL" route nodes --json 2>/dev/null | grep -c '"state": "up"' || true)
  [ "$up" = 4 ] && break; sleep 0.1
done
if [ "$up" != 4 ]; then echo "node4 did not come up; its log:" >&2; cat "$work/node4.log" >&2; "$SHOAL" route nodes >&2; exit 1; fi
"$SHOAL" route nodes
"$SHOAL" route rebalance demo --dry-run
"$SHOAL" route rebalance demo
"$SHOAL" route show demo
"$SHOAL" volume export demo@v1 "$work/moved-snapshot.img" --node "127.0.0.1:${mesh[4]}"
"$SHOAL" volume export demo-clone "$work/moved-clone.img" --node "127.0.0.1:${mesh[4]}"
for f in moved-snapshot moved-clone; do
  truncate -s $((200 * 1024 * 1024)) "$work/$f.img"
  m=$(sha256sum < "$work/$f.img" | cut -d' ' -f1)
  echo "$f $m"
  if [ "$a" != "$m" ]; then echo "MISMATCH: $f differs after the rebalance" >&2; exit 1; fi
done
echo "match: pages moved with their snapshot versions; the snapshot and the clone read as before, through node 4"

step "stopping the nodes"
