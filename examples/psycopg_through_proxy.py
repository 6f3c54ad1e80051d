"""Write and read a registered table through a replicate proxy with psycopg.

    replicate up --nodes 3 --dir /tmp/rc --detach
    python examples/psycopg_through_proxy.py /tmp/rc/cluster.toml

Creates table `accounts` on every node, registers it (`replicate table add`), then talks to the
proxies like to any PostgreSQL server: writes through one, reads linearizably through another.
"""

import subprocess
import sys

import psycopg

from replicate.config import load_config

config_path = sys.argv[1] if len(sys.argv) > 1 else "cluster.toml"
config = load_config(config_path)

for node in config.nodes:  # the same empty table on every node, before registering it
    with psycopg.connect(node.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS accounts "
                     "(id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL)")
subprocess.run(["replicate", "table", "add", "accounts", "--config", config_path], check=True)


def proxy(i: int) -> str:
    node = config.nodes[i]
    return f"host={node.proxy_host} port={node.proxy_port} user=postgres dbname=postgres"


# autocommit: writes to registered tables are not allowed inside BEGIN ... COMMIT (yet)
with psycopg.connect(proxy(0), autocommit=True) as writer, \
        psycopg.connect(proxy(len(config.nodes) - 1), autocommit=True) as reader:
    row = writer.execute(
        "INSERT INTO accounts VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE "
        "SET balance = accounts.balance + EXCLUDED.balance RETURNING id, owner, balance",
        [1, "ann", 10]).fetchone()
    print("written through", config.nodes[0].name, "->", row)
    try:
        writer.execute("UPDATE accounts SET balance = random()")
    except psycopg.errors.FeatureNotSupported as exc:
        print("refused:", exc.diag.message_primary, "| hint:", exc.diag.message_hint)
    print("read through", config.nodes[-1].name, "->",
          reader.execute("SELECT id, owner, balance FROM accounts WHERE id = 1").fetchone())
    print("read consistency:", reader.execute("SHOW replicate.read_consistency").fetchone()[0])
