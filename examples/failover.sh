#!/usr/bin/env bash
# Failover walk-through on a local cluster: kill the leader proxy, keep writing, bring it back.
#   bash examples/failover.sh [DIR]
set -euo pipefail
dir=${1:-/tmp/replicate-failover}
config="$dir/cluster.toml"
replicate up --nodes 3 --dir "$dir" --detach >/dev/null
trap 'replicate down --dir "$dir" >/dev/null' EXIT

for n in $(replicate status --config "$config" --json | python3 -c \
        'import json,sys; print(" ".join(n["name"] for n in json.load(sys.stdin)["nodes"]))'); do
    dsn=$(python3 -c "import tomllib;c=tomllib.load(open('$config','rb'));print([x['dsn'] for x in c['nodes'] if x['name']=='$n'][0])")
    psql -X -q "$dsn" -c "CREATE TABLE IF NOT EXISTS kv (k text PRIMARY KEY, v text)"
done
replicate table add kv --config "$config"

port() { python3 -c "import tomllib;c=tomllib.load(open('$config','rb'));print([x['proxy'] for x in c['nodes'] if x['name']=='$1'][0].split(':')[1])"; }
leader=$(replicate status --config "$config" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
other=$(replicate status --config "$config" --json | python3 -c "import json,sys; print([n['name'] for n in json.load(sys.stdin)['nodes'] if n['name'] != '$leader'][0])")
echo "leader is $leader; writing through $other"

psql -X -q "host=127.0.0.1 port=$(port "$other") user=postgres dbname=postgres" \
    -c "INSERT INTO kv VALUES ('before', 'failover')"
kill -9 "$(cat "$dir/$leader/proxy.pid")"
echo "killed the leader proxy $leader"
psql -X -q "host=127.0.0.1 port=$(port "$other") user=postgres dbname=postgres" \
    -c "INSERT INTO kv VALUES ('after', 'failover')"
replicate status --config "$config"
replicate up --dir "$dir" --detach >/dev/null   # brings the killed proxy back
sleep 1
replicate check --config "$config"
