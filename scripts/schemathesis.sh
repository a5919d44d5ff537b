#!/usr/bin/env bash
# A property-based client driven by the API's own description: schemathesis (PyPI)
# generates requests from /openapi.json against a running server (debug build, embedded,
# credentials on) and fails on any 5xx or any answer that contradicts the document
# (status code, content type, body schema, headers). Installs schemathesis into
# .services/venv the first time.
#
#   scripts/schemathesis.sh            (FLASHSALE_BIN: the binary, default target/debug/flashsale)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLASHSALE_BIN:-target/debug/flashsale}
VENV=.services/venv
SCHEMATHESIS_VERSION=4.32.5
if [ ! -x "$VENV/bin/schemathesis" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
dir=$(mktemp -d)
admin=schemathesis-admin-token-0123456789
"$BIN" serve --listen 127.0.0.1:0 --store "sqlite://$dir/flashsale.db" --config "$dir/none.toml" \
    --quiet --admin-token "$admin" --rate-per-buyer off --rate-per-ip off \
    > "$dir/stdout" 2> "$dir/server.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
    grep -q "listening on" "$dir/stdout" && break
    sleep 0.1
done
base=$(sed -n 's/^flashsale listening on //p' "$dir/stdout")
[ -n "$base" ] || { cat "$dir/server.log"; echo "the server did not start" >&2; exit 1; }
# A sale to aim at, so that generated ids sometimes exist.
curl -fsS -X POST "$base/api/sales" -H "Authorization: Bearer $admin" \
    -H 'content-type: application/json' -d '{"name":"schemathesis","stock":1000}' > /dev/null
# The event stream is read from a sale that ends 5 s into the run: a stream ends once it
# has sent the frame where its sale ended, so schemathesis reads each stream whole and
# checks every event against the document (a live sale's stream would only end at
# --request-timeout). Generated ids would not find a sale: the route gets this one.
ends_at=$(python3 -c 'import datetime as d; print((d.datetime.now(d.timezone.utc) + d.timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S.000Z"))')
ending=$(curl -fsS -X POST "$base/api/sales" -H "Authorization: Bearer $admin" \
    -H 'content-type: application/json' \
    -d "{\"name\":\"schemathesis ending\",\"stock\":10,\"ends_at\":\"$ends_at\"}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
cat > "$dir/schemathesis.toml" <<EOF
[[operations]]
include-path = "/api/sales/{id}/events"
parameters = { "path.id" = "$ending" }
EOF
"$VENV/bin/schemathesis" --config-file "$dir/schemathesis.toml" run "$base/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --header "Authorization: Bearer $admin" \
    --max-examples "${SCHEMATHESIS_EXAMPLES:-100}" \
    --seed "${SCHEMATHESIS_SEED:-1}" \
    --request-timeout 10 \
    --no-color
