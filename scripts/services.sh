#!/usr/bin/env bash
# Local services for the distributed mode, on loopback: PostgreSQL, Redis and a
# Kafka-protocol broker (tansu). `up` starts whatever is not running (installing what is
# missing), `down` stops the broker it started, `status` tells what answers.
# `sentinel` starts a Redis primary (6391), a replica (6392) and three Sentinels
# (26391-26393) watching it as `flashsale`: `--gate
# redis-sentinel://127.0.0.1:26391,127.0.0.1:26392,127.0.0.1:26393/flashsale`;
# `sentinel-down` stops them. `cluster` starts a Redis Cluster of three masters and
# three replicas (7001-7006): `--gate redis-cluster://127.0.0.1:7001,127.0.0.1:7002`;
# `cluster-down` stops it. (Tests that kill nodes start deployments of their own, on
# free ports.)
#
#   scripts/services.sh up|down|status|sentinel|sentinel-down|cluster|cluster-down
#
# Environment: TANSU_STORAGE (default sqlite://tansu.db: durable, and its offsets are
# right; memory://tansu/ is faster but answers wrong "latest offsets"), SERVICES_DIR
# (default .services in the repository).
set -euo pipefail
cd "$(dirname "$0")/.."

SERVICES_DIR=${SERVICES_DIR:-$PWD/.services}
TANSU_VERSION=0.6.0
TANSU_STORAGE=${TANSU_STORAGE:-sqlite://tansu.db}
KAFKA_PORT=9092

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # port name
    for _ in $(seq 1 100); do
        listening "$1" && return 0
        sleep 0.2
    done
    echo "$2 did not start on port $1" >&2
    return 1
}

apt_install() {
    if command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
    else
        echo "cannot install $* (no apt-get)" >&2
        return 1
    fi
}

postgres_up() {
    if listening 5432; then return 0; fi
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    local version
    version=$(ls /etc/postgresql | sort -V | tail -1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_for 5432 PostgreSQL
}

redis_up() {
    if listening 6379; then return 0; fi
    command -v redis-server >/dev/null || apt_install redis-server
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for 6379 Redis
}

tansu_bin() {
    if command -v tansu >/dev/null; then command -v tansu; return; fi
    local bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
    if [ ! -x "$bin" ]; then
        echo "installing tansu $TANSU_VERSION (a Kafka-protocol broker; 12-25 min, once)" >&2
        cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql >&2
    fi
    echo "$bin"
}

kafka_up() {
    if listening $KAFKA_PORT; then return 0; fi
    local bin
    bin=$(tansu_bin)
    mkdir -p "$SERVICES_DIR/tansu"
    # tansu reads ./.env from its working directory: give it an empty one of its own.
    : > "$SERVICES_DIR/tansu/.env"
    # exec: no shell stays behind holding the caller's stdout.
    (cd "$SERVICES_DIR/tansu" && exec setsid "$bin" broker \
        --listener-url tcp://127.0.0.1:$KAFKA_PORT \
        --advertised-listener-url tcp://127.0.0.1:$KAFKA_PORT \
        --storage-engine "$TANSU_STORAGE" > broker.log 2>&1 < /dev/null) &
    echo $! > "$SERVICES_DIR/tansu/broker.pid"
    wait_for $KAFKA_PORT "tansu broker (log: $SERVICES_DIR/tansu/broker.log)"
}

kafka_down() {
    local pidfile="$SERVICES_DIR/tansu/broker.pid"
    if [ -f "$pidfile" ]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    fi
}

SENTINEL_PRIMARY=6391
SENTINEL_REPLICA=6392
SENTINEL_PORTS="26391 26392 26393"

sentinel_up() {
    redis_up >/dev/null
    local dir="$SERVICES_DIR/sentinel"
    mkdir -p "$dir"
    for port in $SENTINEL_PRIMARY $SENTINEL_REPLICA; do
        listening "$port" && continue
        local extra=()
        [ "$port" = "$SENTINEL_REPLICA" ] && extra=(--replicaof 127.0.0.1 "$SENTINEL_PRIMARY")
        redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" \
            --appendonly no --dir "$dir" --dbfilename "dump-$port.rdb" \
            --pidfile "$dir/redis-$port.pid" --logfile "$dir/redis-$port.log" "${extra[@]}"
        wait_for "$port" "Redis $port"
    done
    for port in $SENTINEL_PORTS; do
        listening "$port" && continue
        # Sentinels rewrite their file: one each, written afresh.
        cat > "$dir/sentinel-$port.conf" <<CONF
port $port
bind 127.0.0.1
dir $dir
pidfile $dir/sentinel-$port.pid
logfile $dir/sentinel-$port.log
daemonize yes
sentinel monitor flashsale 127.0.0.1 $SENTINEL_PRIMARY 2
sentinel down-after-milliseconds flashsale 1000
sentinel failover-timeout flashsale 4000
CONF
        redis-server "$dir/sentinel-$port.conf" --sentinel
        wait_for "$port" "Sentinel $port"
    done
    echo "gate: redis-sentinel://127.0.0.1:26391,127.0.0.1:26392,127.0.0.1:26393/flashsale"
}

sentinel_down() {
    local dir="$SERVICES_DIR/sentinel"
    for pidfile in "$dir"/*.pid; do
        [ -f "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

CLUSTER_PORTS="7001 7002 7003 7004 7005 7006"

cluster_up() {
    command -v redis-server >/dev/null || apt_install redis-server
    local dir="$SERVICES_DIR/cluster"
    local fresh=0
    for port in $CLUSTER_PORTS; do
        listening "$port" && continue
        fresh=1
        mkdir -p "$dir/$port"
        rm -f "$dir/$port/nodes.conf"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" \
            --appendonly no --repl-diskless-sync-delay 0 --dir "$dir/$port" \
            --cluster-enabled yes --cluster-config-file nodes.conf \
            --cluster-node-timeout 2000 --pidfile "$dir/$port/redis.pid" \
            --logfile "$dir/$port/redis.log"
        wait_for "$port" "Redis Cluster node $port"
    done
    if [ "$fresh" = 1 ]; then
        local nodes=()
        for port in $CLUSTER_PORTS; do nodes+=("127.0.0.1:$port"); done
        redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
    fi
    # Ready: every node says ok, and every master counts a replica for WAIT.
    for _ in $(seq 1 150); do
        local ready=1
        for port in $CLUSTER_PORTS; do
            redis-cli -p "$port" cluster info | grep -q "cluster_state:ok" || ready=0
            if redis-cli -p "$port" role | head -1 | grep -q master; then
                [ "$(redis-cli -p "$port" wait 1 100)" -ge 1 ] || ready=0
            fi
        done
        [ "$ready" = 1 ] && break
        sleep 0.2
    done
    [ "$ready" = 1 ] || { echo "the Redis Cluster did not become ready" >&2; return 1; }
    echo "gate: redis-cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
}

cluster_down() {
    for port in $CLUSTER_PORTS; do
        local pidfile="$SERVICES_DIR/cluster/$port/redis.pid"
        [ -f "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

status() {
    for entry in "PostgreSQL 5432" "Redis 6379" "Kafka(tansu) $KAFKA_PORT"; do
        set -- $entry
        if listening "$2"; then echo "$1: up on 127.0.0.1:$2"; else echo "$1: down"; fi
    done
}

case "${1:-}" in
    up)
        postgres_up
        redis_up
        if [ "${WITH_KAFKA:-1}" = 1 ]; then kafka_up; fi
        status
        ;;
    down) kafka_down; status ;;
    status) status ;;
    sentinel) sentinel_up ;;
    sentinel-down) sentinel_down ;;
    cluster) cluster_up ;;
    cluster-down) cluster_down ;;
    *) echo "usage: $0 up|down|status|sentinel|sentinel-down|cluster|cluster-down" >&2; exit 2 ;;
esac
