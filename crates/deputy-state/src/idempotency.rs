//! Idempotency keys (the IETF `Idempotency-Key` draft): the first response to a write, kept per
//! (agent, task, service, key) so that a retry is answered with it instead of being done twice.
//!
//! Bounded three ways: a response body over the data path's bound is not kept (the record says
//! the write was done), at most `max_records` are kept (the oldest goes first),
//! and a record lives `ttl`. A record is committed once its response has streamed to the agent
//! (until then a retry is told the first is in flight), so a retry after a restart is still a
//! replay.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{State, StateError, store_error};

/// scope key -> (the record's facts as JSON, the response body).
const RESPONSES: TableDefinition<'static, &str, (&str, &[u8])> =
    TableDefinition::new("idempotent_responses");

/// What a first response is kept with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The digest of the request it answered (method, path, query, content type, body).
    pub fingerprint: String,
    /// Its status.
    pub status: u16,
    /// Its headers, in order.
    pub headers: Vec<(String, String)>,
    /// When it was kept, unix seconds.
    pub kept_at: i64,
    /// Whether its body was kept: `false` when the answer was cut or too large to keep (the
    /// write was done; its answer cannot be replayed).
    #[serde(default = "kept_whole")]
    pub body_kept: bool,
}

fn kept_whole() -> bool {
    true
}

/// The node's kept responses.
#[derive(Debug)]
pub struct IdempotentResponses {
    state: State,
    max_records: usize,
    ttl: i64,
    /// (kept at, scope) of every record, oldest first: what goes when the bound is reached.
    ages: Mutex<BTreeSet<(i64, String)>>,
}

impl IdempotentResponses {
    /// The responses kept in `state`: at most `max_records`, each for `ttl_seconds`.
    pub fn open(state: &State, max_records: usize, ttl_seconds: i64) -> Result<Self, StateError> {
        let mut ages = BTreeSet::new();
        {
            let read = state.db().begin_read().map_err(store_error)?;
            match read.open_table(RESPONSES) {
                Ok(table) => {
                    for row in table.iter().map_err(store_error)? {
                        let (key, value) = row.map_err(store_error)?;
                        let kept_at = serde_json::from_str::<Kept>(value.value().0)
                            .map_or(i64::MIN, |k| k.kept_at);
                        ages.insert((kept_at, key.value().to_owned()));
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(store_error(e)),
            }
        }
        Ok(Self {
            state: state.clone(),
            max_records: max_records.max(1),
            ttl: ttl_seconds.max(1),
            ages: Mutex::new(ages),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<(i64, String)>> {
        self.ages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The response kept under `scope`, if one is and it has not aged out at `now`.
    pub fn get(&self, scope: &str, now: i64) -> Result<Option<(Kept, Vec<u8>)>, StateError> {
        let read = self.state.db().begin_read().map_err(store_error)?;
        let table = match read.open_table(RESPONSES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(store_error(e)),
        };
        let Some(row) = table.get(scope).map_err(store_error)? else {
            return Ok(None);
        };
        let (facts, body) = row.value();
        let kept: Kept = serde_json::from_str(facts).map_err(store_error)?;
        if kept.kept_at + self.ttl <= now {
            return Ok(None);
        }
        Ok(Some((kept, body.to_vec())))
    }

    /// Keeps `kept` and `body` under `scope`, durably; drops what aged out and, past
    /// `max_records`, the oldest.
    pub fn keep(&self, scope: &str, kept: &Kept, body: &[u8]) -> Result<(), StateError> {
        let mut ages = self.lock();
        let facts = serde_json::to_string(kept).map_err(store_error)?;
        let mut next = ages.clone();
        next.retain(|(_, key)| key != scope);
        next.insert((kept.kept_at, scope.to_owned()));
        let mut stale = Vec::new();
        while let Some(oldest) = next.first().cloned() {
            let aged_out = oldest.0 + self.ttl <= kept.kept_at;
            if !aged_out && next.len() <= self.max_records {
                break;
            }
            next.remove(&oldest);
            stale.push(oldest.1);
        }
        let write = self.state.db().begin_write().map_err(store_error)?;
        {
            let mut table = write.open_table(RESPONSES).map_err(store_error)?;
            table
                .insert(scope, (facts.as_str(), body))
                .map_err(store_error)?;
            for key in &stale {
                table.remove(key.as_str()).map_err(store_error)?;
            }
        }
        write.commit().map_err(store_error)?;
        *ages = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(at: i64) -> Kept {
        Kept {
            fingerprint: "f".into(),
            status: 201,
            headers: vec![("content-type".into(), "application/json".into())],
            kept_at: at,
            body_kept: true,
        }
    }

    #[test]
    fn a_response_is_kept_across_a_restart_until_it_ages_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let state = State::open(dir.path()).expect("state");
            let responses = IdempotentResponses::open(&state, 10, 60).expect("open");
            responses.keep("a", &kept(1000), b"{}").expect("kept");
        }
        let state = State::open(dir.path()).expect("state");
        let responses = IdempotentResponses::open(&state, 10, 60).expect("open");
        let (got, body) = responses.get("a", 1030).expect("read").expect("kept");
        assert_eq!((got, body.as_slice()), (kept(1000), &b"{}"[..]));
        assert!(responses.get("a", 1060).expect("read").is_none());
    }

    #[test]
    fn past_the_bound_the_oldest_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State::open(dir.path()).expect("state");
        let responses = IdempotentResponses::open(&state, 2, 3600).expect("open");
        for (i, scope) in ["a", "b", "c"].into_iter().enumerate() {
            let at = 1000 + i64::try_from(i).expect("small");
            responses.keep(scope, &kept(at), b"x").expect("kept");
        }
        assert!(responses.get("a", 1010).expect("read").is_none());
        assert!(responses.get("b", 1010).expect("read").is_some());
        assert!(responses.get("c", 1010).expect("read").is_some());
    }
}
