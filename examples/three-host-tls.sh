#!/usr/bin/env bash
# A three-host group with mutual TLS, set up from an admin machine over ssh. Each host gets the
# shoal binary, a node certificate from the group's CA, /etc/shoal/node.toml and the systemd unit
# from examples/systemd/; the admin keeps the CA and an admin certificate. Hosts are reached by
# the addresses below; change them to yours. DRY_RUN=1 prints the commands instead.
#   examples/three-host-tls.sh               # then: SHOAL_TLS=./shoal-pki/admin shoal route nodes --node 10.0.0.1:7400
set -euo pipefail
cd "$(dirname "$0")/.."
SHOAL=${SHOAL:-./dist/shoal}
PKI=${PKI:-./shoal-pki}
IDS=(store1 store2 store3)
ADDRESSES=(10.0.0.1 10.0.0.2 10.0.0.3)
SSH_USER=${SSH_USER:-root}

run() { echo "+ $*" >&2; [ -n "${DRY_RUN:-}" ] || "$@"; }

# 1. The group's CA, on the admin machine only (ca-key.pem never leaves it).
[ -f "$PKI/ca/ca-cert.pem" ] || run "$SHOAL" tls init "$PKI/ca"

# 2. A node certificate per host, naming its node id and the address peers and clients dial.
for i in 0 1 2; do
  run "$SHOAL" tls issue "$PKI/ca" "${IDS[$i]}" --role node --ip "${ADDRESSES[$i]}" --dns "${IDS[$i]}" --out "$PKI/${IDS[$i]}"
done
# An admin certificate for `shoal volume/snap/route/archive`, and one for NBD clients (qemu's layout).
run "$SHOAL" tls issue "$PKI/ca" admin --role admin --out "$PKI/admin"
run "$SHOAL" tls issue "$PKI/ca" qemu --role client --layout qemu --out "$PKI/qemu"

# 3. Each host: binary, credentials, config, unit. The first host founds the group; the others join it.
for i in 0 1 2; do
  host="$SSH_USER@${ADDRESSES[$i]}"
  config=$(mktemp)
  {
    echo "id = \"${IDS[$i]}\""
    echo 'data = "/var/lib/shoal"'
    echo "listen = \"${ADDRESSES[$i]}:7400\""
    echo "nbd = \"${ADDRESSES[$i]}:10809\""
    [ "$i" -gt 0 ] && echo "join = \"${ADDRESSES[0]}:7400\""
    echo "metrics = \"${ADDRESSES[$i]}:9400\""
    echo 'log-format = "json"'
    echo 'tls = "/etc/shoal/tls"'
    echo 'tls-required = true'
  } >"$config"
  run ssh "$host" 'install -d -m 0755 /etc/shoal && install -d -m 0750 /etc/shoal/tls && (id shoal >/dev/null 2>&1 || useradd --system --home /var/lib/shoal shoal)'
  run scp "$SHOAL" "$host:/usr/local/bin/shoal"
  run scp "$PKI/${IDS[$i]}/"*.pem "$host:/etc/shoal/tls/"
  run scp "$config" "$host:/etc/shoal/node.toml"
  run scp examples/systemd/shoal-node.service "$host:/etc/systemd/system/shoal-node.service"
  run ssh "$host" 'chown -R root:shoal /etc/shoal && chmod 0640 /etc/shoal/tls/key.pem && systemctl daemon-reload && systemctl enable --now shoal-node'
  rm -f "$config"
  # The next host joins through the first: wait until the group answers (admin certificate, over TLS).
  for _ in $(seq 1 30); do
    [ -n "${DRY_RUN:-}" ] && break
    SHOAL_TLS="$PKI/admin" "$SHOAL" route nodes --node "${ADDRESSES[0]}:7400" >/dev/null 2>&1 && break
    sleep 1
  done
done

# 4. Check: every member up, with its version, uptime and heartbeat.
export SHOAL_TLS="$PKI/admin" SHOAL_NODE="${ADDRESSES[0]}:7400"
run "$SHOAL" route nodes
cat >&2 <<HINT

Group up. Admin commands: SHOAL_TLS=$PKI/admin SHOAL_NODE=${ADDRESSES[0]}:7400 shoal volume create db1 --size 100G
NBD clients present the client certificate with STARTTLS, e.g.:
  qemu-img info --object tls-creds-x509,id=tls0,dir=$PKI/qemu,endpoint=client \\
    --image-opts driver=nbd,host=${ADDRESSES[1]},port=10809,export=db1,tls-creds=tls0
  nbdinfo 'nbds://${ADDRESSES[2]}/db1?tls-certificates=$PKI/qemu'
Metrics: curl http://${ADDRESSES[0]}:9400/metrics
HINT
