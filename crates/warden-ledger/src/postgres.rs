//! PostgreSQL storage, for several Warden instances writing one ledger.
//!
//! One row per ledger in `warden_ledger_head` holds the size and the tree's right edge; an append
//! locks that row (`SELECT … FOR UPDATE`), so appends from every instance are serialized into one
//! global order, and inserts the entries and the perfect-subtree nodes they complete in the same
//! transaction. The commit is the durability point. Proofs read only the O(log n) nodes they
//! need, in one query. Several ledgers can share a database: every row carries the ledger's name
//! (its origin).

use std::collections::HashMap;
use std::time::Duration;

use postgres::{Client, NoTls};

use crate::merkle::{leaf_hash, Frontier, Hash, NodeId};
use crate::store::{Appended, Checkpointer, LedgerStore, StoreError, Visit};

/// The session settings every ledger connection starts with (its URL's own `options` come after
/// them, and win): statements and lock waits end after 5 s, a transaction left idle after 10 s.
const PG_TIMEOUTS: &str =
    "-c statement_timeout=5000 -c lock_timeout=5000 -c idle_in_transaction_session_timeout=10000";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS warden_ledger_head (
    ledger   text PRIMARY KEY,
    size     bigint NOT NULL,
    frontier bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS warden_ledger_entries (
    ledger text NOT NULL,
    idx    bigint NOT NULL,
    entry  bytea NOT NULL,
    PRIMARY KEY (ledger, idx)
);
CREATE TABLE IF NOT EXISTS warden_ledger_nodes (
    ledger text NOT NULL,
    level  integer NOT NULL,
    idx    bigint NOT NULL,
    hash   bytea NOT NULL,
    PRIMARY KEY (ledger, level, idx)
);
CREATE TABLE IF NOT EXISTS warden_ledger_checkpoints (
    ledger text NOT NULL,
    size   bigint NOT NULL,
    note   text NOT NULL,
    PRIMARY KEY (ledger, size)
);
";

/// The PostgreSQL ledger store.
pub struct PgStore {
    url: String,
    ledger: String,
    client: Option<Client>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: only the ledger name is shown.
        f.debug_struct("PgStore")
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

fn pg(e: &postgres::Error) -> StoreError {
    // The driver's Display says only "db error"; the server's message is what helps.
    match e.as_db_error() {
        Some(db) => StoreError::Postgres(format!("{} ({})", db.message(), db.code().code())),
        None => StoreError::Postgres(e.to_string()),
    }
}

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Rejected(format!("{v} does not fit in a bigint")))
}

fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is negative ({v})")))
}

fn hash_from(bytes: &[u8], what: &str) -> Result<Hash, StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} is {} bytes, not 32", bytes.len())))
}

impl PgStore {
    /// Connects, creates the tables if needed, and makes sure the ledger `ledger` exists.
    ///
    /// # Errors
    /// [`StoreError::Postgres`] if the database cannot be reached or used.
    pub fn connect(url: &str, ledger: &str) -> Result<Self, StoreError> {
        let mut store = PgStore {
            url: url.to_owned(),
            ledger: ledger.to_owned(),
            client: None,
        };
        let ledger = store.ledger.clone();
        let client = store.client()?;
        let mut tx = client.transaction().map_err(|e| pg(&e))?;
        // Instances starting together must not race on CREATE TABLE.
        tx.execute("SELECT pg_advisory_xact_lock(7277100042)", &[])
            .map_err(|e| pg(&e))?;
        tx.batch_execute(SCHEMA).map_err(|e| pg(&e))?;
        tx.execute(
            "INSERT INTO warden_ledger_head (ledger, size, frontier) VALUES ($1, 0, '') \
             ON CONFLICT (ledger) DO NOTHING",
            &[&ledger],
        )
        .map_err(|e| pg(&e))?;
        tx.commit().map_err(|e| pg(&e))?;
        Ok(store)
    }

    /// The connection, reconnecting if it was lost (PostgreSQL restarted).
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let mut config: postgres::Config = self
                .url
                .parse()
                .map_err(|e: postgres::Error| StoreError::Postgres(format!("bad URL: {e}")))?;
            config.connect_timeout(Duration::from_secs(5));
            // INVARIANT (fail-closed, issue 22): a PostgreSQL that is slow (a statement or a
            // lock wait beyond 5 s, a transaction left idle) aborts the append — nothing is
            // committed, the call is denied as unrecorded — instead of holding every call. The
            // URL's own `options` parameter adds to these (and overrides the same settings). A connection whose peer stops
            // answering is dropped by TCP within about 15 s.
            let options = match config.get_options() {
                // The URL's own settings come after the defaults, and so win.
                Some(own) => format!("{PG_TIMEOUTS} {own}"),
                None => PG_TIMEOUTS.to_owned(),
            };
            config.options(&options);
            config
                .keepalives(true)
                .keepalives_idle(Duration::from_secs(10))
                .tcp_user_timeout(Duration::from_secs(15));
            let client = config.connect(NoTls).map_err(|e| pg(&e))?;
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Postgres("not connected".into()))
    }

    fn append_tx(&mut self, entries: &[Vec<u8>]) -> Result<Appended, StoreError> {
        let ledger = self.ledger.clone();
        let client = self.client()?;
        let mut tx = client.transaction().map_err(|e| pg(&e))?;
        // INVARIANT (one global order): the head row is locked until commit, so no other
        // instance can append between reading the size and writing after it.
        let row = tx
            .query_one(
                "SELECT size, frontier FROM warden_ledger_head WHERE ledger = $1 FOR UPDATE",
                &[&ledger],
            )
            .map_err(|e| pg(&e))?;
        let size = to_u64(row.get::<_, i64>(0), "stored size")?;
        let frontier_bytes: Vec<u8> = row.get(1);
        if !frontier_bytes.len().is_multiple_of(32) {
            return Err(StoreError::Corrupt(format!(
                "stored frontier is {} bytes, not a multiple of 32",
                frontier_bytes.len()
            )));
        }
        let hashes = frontier_bytes
            .chunks_exact(32)
            .map(|c| hash_from(c, "frontier hash"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut frontier = Frontier::from_nodes(size, &hashes)
            .ok_or_else(|| StoreError::Corrupt("stored frontier does not match the size".into()))?;

        let mut idxs = Vec::with_capacity(entries.len());
        let mut node_levels = Vec::with_capacity(entries.len() * 2);
        let mut node_idxs = Vec::with_capacity(entries.len() * 2);
        let mut node_hashes: Vec<Vec<u8>> = Vec::with_capacity(entries.len() * 2);
        let mut completed = Vec::with_capacity(8);
        for (i, e) in entries.iter().enumerate() {
            let index = size + i as u64;
            idxs.push(to_i64(index)?);
            completed.clear();
            frontier.push(leaf_hash(e), &mut completed);
            for (level, h) in completed.iter().enumerate() {
                let level = u32::try_from(level).unwrap_or(u32::MAX);
                node_levels.push(i32::try_from(level).unwrap_or(i32::MAX));
                node_idxs.push(to_i64(index >> level)?);
                node_hashes.push(h.to_vec());
            }
        }
        tx.execute(
            "INSERT INTO warden_ledger_entries (ledger, idx, entry) \
             SELECT $1, * FROM UNNEST($2::bigint[], $3::bytea[])",
            &[&ledger, &idxs, &entries],
        )
        .map_err(|e| pg(&e))?;
        tx.execute(
            "INSERT INTO warden_ledger_nodes (ledger, level, idx, hash) \
             SELECT $1, * FROM UNNEST($2::integer[], $3::bigint[], $4::bytea[])",
            &[&ledger, &node_levels, &node_idxs, &node_hashes],
        )
        .map_err(|e| pg(&e))?;
        let new_size = frontier.size();
        let new_frontier: Vec<u8> = frontier.hashes().concat();
        tx.execute(
            "UPDATE warden_ledger_head SET size = $2, frontier = $3 WHERE ledger = $1",
            &[&ledger, &to_i64(new_size)?, &new_frontier],
        )
        .map_err(|e| pg(&e))?;
        tx.commit().map_err(|e| pg(&e))?;
        Ok(Appended {
            first: size,
            size: new_size,
            root: frontier.root(),
        })
    }
}

impl Checkpointer for PgStore {
    fn put(&mut self, size: u64, note: &str) -> Result<(), StoreError> {
        let ledger = self.ledger.clone();
        self.client()?
            .execute(
                "INSERT INTO warden_ledger_checkpoints (ledger, size, note) VALUES ($1, $2, $3) \
                 ON CONFLICT (ledger, size) DO NOTHING",
                &[&ledger, &to_i64(size)?, &note],
            )
            .map_err(|e| pg(&e))?;
        Ok(())
    }
}

impl LedgerStore for PgStore {
    fn append(&mut self, entries: &[Vec<u8>]) -> Result<Appended, StoreError> {
        if entries.is_empty() {
            let size = self.size()?;
            let root = crate::proof::root(self, size)?;
            return Ok(Appended {
                first: size,
                size,
                root,
            });
        }
        // A failed transaction rolls back: nothing of the batch is recorded.
        self.append_tx(entries)
    }

    fn size(&mut self) -> Result<u64, StoreError> {
        let ledger = self.ledger.clone();
        let row = self
            .client()?
            .query_one(
                "SELECT size FROM warden_ledger_head WHERE ledger = $1",
                &[&ledger],
            )
            .map_err(|e| pg(&e))?;
        to_u64(row.get::<_, i64>(0), "stored size")
    }

    fn scan(&mut self, from: u64, to: u64, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        let ledger = self.ledger.clone();
        let to = to.min(self.size()?);
        let mut next = from;
        while next < to {
            let upto = to.min(next + 10_000);
            let rows = self
                .client()?
                .query(
                    "SELECT idx, entry FROM warden_ledger_entries \
                     WHERE ledger = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
                    &[&ledger, &to_i64(next)?, &to_i64(upto)?],
                )
                .map_err(|e| pg(&e))?;
            for row in rows {
                let idx = to_u64(row.get::<_, i64>(0), "entry index")?;
                if idx != next {
                    return Err(StoreError::Corrupt(format!(
                        "entry {next} is missing from the database"
                    )));
                }
                let bytes: &[u8] = row.get(1);
                visit(idx, bytes)?;
                next += 1;
            }
            if next < upto {
                return Err(StoreError::Corrupt(format!(
                    "entry {next} is missing from the database"
                )));
            }
        }
        Ok(())
    }

    fn nodes(&mut self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ledger = self.ledger.clone();
        let levels: Vec<i32> = ids
            .iter()
            .map(|n| i32::try_from(n.level).unwrap_or(i32::MAX))
            .collect();
        let idxs = ids
            .iter()
            .map(|n| to_i64(n.index))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = self
            .client()?
            .query(
                "SELECT n.level, n.idx, n.hash FROM warden_ledger_nodes n \
                 JOIN UNNEST($2::integer[], $3::bigint[]) AS want(level, idx) \
                 ON n.level = want.level AND n.idx = want.idx WHERE n.ledger = $1",
                &[&ledger, &levels, &idxs],
            )
            .map_err(|e| pg(&e))?;
        let mut found: HashMap<(i32, i64), Hash> = HashMap::with_capacity(rows.len());
        for row in rows {
            let h: &[u8] = row.get(2);
            found.insert((row.get(0), row.get(1)), hash_from(h, "node hash")?);
        }
        let mut out = Vec::with_capacity(ids.len());
        for (id, (l, i)) in ids.iter().zip(levels.iter().zip(idxs.iter())) {
            match found.get(&(*l, *i)) {
                Some(h) => out.push(*h),
                None => {
                    let size = self.size()?;
                    return Err(StoreError::OutOfRange {
                        index: (id.index + 1) << id.level,
                        size,
                    });
                }
            }
        }
        Ok(out)
    }

    fn checkpointer(&mut self) -> Result<Box<dyn Checkpointer>, StoreError> {
        // Its own connection, so checkpoints never wait for (or hold up) appends.
        Ok(Box::new(PgStore::connect(&self.url, &self.ledger)?))
    }

    fn latest_checkpoint(&mut self) -> Result<Option<String>, StoreError> {
        let ledger = self.ledger.clone();
        let row = self
            .client()?
            .query_opt(
                "SELECT note FROM warden_ledger_checkpoints WHERE ledger = $1 \
                 ORDER BY size DESC LIMIT 1",
                &[&ledger],
            )
            .map_err(|e| pg(&e))?;
        Ok(row.map(|r| r.get(0)))
    }

    fn writes_on_any_thread(&self) -> bool {
        // The postgres client blocks on a runtime of its own, which panics on a thread that
        // already drives one (`warden serve` recording from an async task).
        false
    }

    fn describe(&self) -> String {
        format!("PostgreSQL ledger {:?}", self.ledger)
    }
}
