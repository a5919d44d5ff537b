#!/usr/bin/env python3
"""How many durable orders/s SQLite takes with three layouts (BENCHMARKS.md, issue #13).

    python3 scripts/sqlite_layout.py [ORDERS] [BATCH]

Each layout stores ORDERS orders (default 100,000; buyers in random order, half with an
idempotency key) in transactions of BATCH (default 64), WAL mode, synchronous=FULL, as
the group commit does, and prints orders/s over the second half (the steady state):

- indexed:  the store's layout before issue #13: `buyers` keyed by (sale, buyer) and
            UNIQUE (sale_id, user_id, idempotency_key) on `orders`: two random leaves
            written per order;
- appended: the orders alone, keyed by time: every page written is at the end;
- guarded:  appended, plus the two checks in an in-memory database attached to the
            connection (what `src/store/sql/sqlite_layout.rs` does).
"""
import os, random, sqlite3, sys, tempfile, time, uuid

ORDERS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
BATCH = int(sys.argv[2]) if len(sys.argv) > 2 else 64
SALE = "0" * 32


def run(layout, path):
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "temp_store=MEMORY"):
        db.execute(f"PRAGMA {pragma}")
    unique = ", UNIQUE (sale_id, user_id, idempotency_key)" if layout == "indexed" else ""
    db.execute(f"""CREATE TABLE orders (id TEXT PRIMARY KEY, sale_id TEXT NOT NULL,
        user_id TEXT NOT NULL, items TEXT NOT NULL, units BIGINT NOT NULL,
        status TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT,
        idempotency_key TEXT, fingerprint TEXT NOT NULL{unique})""")
    db.execute("CREATE TABLE sale_items (sale_id TEXT, item_id TEXT, sold BIGINT, PRIMARY KEY (sale_id, item_id))")
    db.execute("INSERT INTO sale_items VALUES (?, 'default', 0)", (SALE,))
    buyers = {"indexed": "buyers", "guarded": "guard.buyers"}.get(layout)
    if layout == "guarded":
        db.execute("ATTACH ':memory:' AS guard")
        db.execute("CREATE TABLE guard.order_keys (sale, user_id, key, PRIMARY KEY (sale, user_id, key)) WITHOUT ROWID")
    if buyers:
        db.execute(f"""CREATE TABLE {buyers} (sale_id TEXT, user_id TEXT, units BIGINT,
            max_units BIGINT, PRIMARY KEY (sale_id, user_id), CHECK (units <= max_units))""")
    users = list(range(ORDERS))
    random.shuffle(users)
    took = []
    for start in range(0, ORDERS, BATCH):
        rows = [
            (format(time.time_ns(), "x") + uuid.uuid4().hex[:16], SALE, f"buyer-{u}",
             '{"default":1}', 1, "paid", int(time.time() * 1000), None,
             str(uuid.uuid4()) if u % 2 else None, '{"quantity":1}')
            for u in users[start:start + BATCH]
        ]
        began = time.perf_counter()
        db.execute("BEGIN")
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute("UPDATE sale_items SET sold = sold + ? WHERE sale_id = ?", (len(rows), SALE))
        if buyers:
            db.executemany(f"INSERT INTO {buyers} VALUES (?, ?, 1, 1) ON CONFLICT DO UPDATE "
                           "SET units = units + excluded.units", [(SALE, r[2]) for r in rows])
        if layout == "guarded":
            db.executemany("INSERT INTO guard.order_keys VALUES (?, ?, ?)",
                           [(SALE, r[2], r[8]) for r in rows if r[8]])
        db.execute("COMMIT")
        took.append(time.perf_counter() - began)
    steady = took[len(took) // 2:]
    return BATCH * len(steady) / sum(steady)


with tempfile.TemporaryDirectory() as dir:
    for layout in ("indexed", "appended", "guarded"):
        rate = run(layout, os.path.join(dir, f"{layout}.db"))
        print(f"{layout:<9} {rate:>9,.0f} orders/s ({ORDERS:,} orders, batches of {BATCH})")
