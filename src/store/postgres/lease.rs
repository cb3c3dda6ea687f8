//! The leader lease with fencing: which of two gapless processes leads.
//!
//! One row per lease in `leader(name, holder, epoch, acquired_at,
//! expires_at)`. Acquiring and renewing are one atomic statement each,
//! timed by the database's clock, so the two hosts' clocks never have to
//! agree. Every acquisition bumps `epoch`, the fencing token: a write that
//! matters checks `epoch = mine` in its own transaction ([`fence`]), and
//! holds the row while it commits, so a successor's acquisition waits for
//! that commit and a leader that lost the lease cannot commit after it.
//! Advisory locks would not do: they live on one pooled session, carry no
//! token, and their old holder does not notice losing them.
//!
//! The leader also keeps its own time ([`Term`]): it trusts its term only
//! until `ttl - margin` after it *sent* the last successful renewal, by
//! the monotonic clock, and demotes itself once that passes, before the
//! database would let the other take over.

use std::time::{Duration, Instant};

use sqlx::PgConnection;
use sqlx::postgres::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("leader lease: {0}")]
    Sql(#[from] sqlx::Error),
    /// The fencing check found another epoch: this process no longer leads.
    #[error("leader lease `{name}`: epoch {mine} is no longer current; another process leads")]
    Fenced { name: String, mine: i64 },
}

/// One lease and this process's claim on it.
#[derive(Clone, Debug)]
pub struct Lease {
    pool: PgPool,
    name: String,
    holder: String,
    ttl: Duration,
    margin: Duration,
}

/// A term as leader: the fencing token, and until when (monotonic) this
/// process may act on it without a renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    pub epoch: i64,
    trusted_until: Instant,
}

impl Term {
    /// A term renewed by a request sent at `sent`: trusted for `ttl -
    /// margin` from then, since the database's expiry counts from a moment
    /// after it.
    pub fn from_request(epoch: i64, sent: Instant, ttl: Duration, margin: Duration) -> Self {
        Term {
            epoch,
            trusted_until: sent + ttl.saturating_sub(margin),
        }
    }

    /// Whether the leader must stop acting (and go passive) at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.trusted_until
    }
}

/// Who holds a lease, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Holder {
    pub holder: String,
    pub epoch: i64,
    pub acquired_at_us: i64,
    pub expires_at_us: i64,
    /// The lease had not expired when read.
    pub live: bool,
}

impl Lease {
    /// `holder` must be unique per process (host and pid, say): a holder
    /// that finds its own name on a live lease takes it as a new term.
    pub fn new(pool: PgPool, name: &str, holder: &str, ttl: Duration, margin: Duration) -> Self {
        Lease {
            pool,
            name: name.into(),
            holder: holder.into(),
            ttl,
            margin,
        }
    }

    /// Takes the lease if it is free, expired or ours, as a new term (the
    /// epoch grows by one); `None` while another process holds it.
    pub async fn try_acquire(&self) -> Result<Option<Term>, LeaseError> {
        let sent = Instant::now();
        let epoch: Option<i64> = sqlx::query_scalar(
            "INSERT INTO leader (name, holder, epoch, acquired_at, expires_at) \
             VALUES ($1, $2, 1, now(), now() + $3 * interval '1 microsecond') \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
               epoch = leader.epoch + 1, acquired_at = excluded.acquired_at, \
               expires_at = excluded.expires_at \
             WHERE leader.expires_at < now() OR leader.holder = excluded.holder \
             RETURNING epoch",
        )
        .bind(&self.name)
        .bind(&self.holder)
        .bind(self.ttl_us())
        .fetch_optional(&self.pool)
        .await?;
        Ok(epoch.map(|e| Term::from_request(e, sent, self.ttl, self.margin)))
    }

    /// Extends `term` while it is still ours and unexpired in the
    /// database's clock; false means it is lost (go passive: a later
    /// acquisition is a new term).
    pub async fn renew(&self, term: &mut Term) -> Result<bool, LeaseError> {
        let sent = Instant::now();
        let renewed = sqlx::query(
            "UPDATE leader SET expires_at = now() + $4 * interval '1 microsecond' \
             WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at >= now()",
        )
        .bind(&self.name)
        .bind(&self.holder)
        .bind(term.epoch)
        .bind(self.ttl_us())
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        if renewed {
            *term = Term::from_request(term.epoch, sent, self.ttl, self.margin);
        }
        Ok(renewed)
    }

    /// Gives the lease up at a clean stop, so the other takes over at once.
    pub async fn release(&self, term: Term) -> Result<(), LeaseError> {
        sqlx::query(
            "UPDATE leader SET expires_at = now() - interval '1 microsecond' \
             WHERE name = $1 AND holder = $2 AND epoch = $3",
        )
        .bind(&self.name)
        .bind(&self.holder)
        .bind(term.epoch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Who holds the lease now, if anyone ever did.
    pub async fn holder(&self) -> Result<Option<Holder>, LeaseError> {
        holder(&self.pool, &self.name).await
    }

    fn ttl_us(&self) -> i64 {
        self.ttl.as_micros() as i64
    }
}

/// Who holds lease `name` now, if anyone ever did: for a reader that
/// claims nothing (`status`).
pub async fn holder(pool: &PgPool, name: &str) -> Result<Option<Holder>, LeaseError> {
    Ok(sqlx::query_as(
        "SELECT holder, epoch, \
           (extract(epoch FROM acquired_at) * 1e6)::bigint AS acquired_at_us, \
           (extract(epoch FROM expires_at) * 1e6)::bigint AS expires_at_us, \
           expires_at >= now() AS live \
         FROM leader WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?)
}

/// What this process is in the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Standby,
    Leader(Term),
}

impl Lease {
    /// Holds the lease until `shutdown`: every `interval`, a standby tries
    /// to acquire it and a leader renews it. A leader steps down when a
    /// renewal is refused, and, by its own clock, as soon as its term is no
    /// longer trusted (the database unreachable for `ttl - margin`), which
    /// is before the database lets the other take over. Every change of
    /// role is published on `role`; at shutdown a leader releases the
    /// lease so the other takes over at once.
    pub async fn run(
        self,
        interval: Duration,
        role: tokio::sync::watch::Sender<Role>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        // A standby that cannot reach the database says so once per
        // outage, not at every try.
        let mut unreachable = false;
        loop {
            let current = *role.borrow();
            let next = match current {
                Role::Standby => {
                    let tried = self.try_acquire().await;
                    match (&tried, unreachable) {
                        (Err(e), false) => tracing::warn!(lease = %self.name, error = %e,
                            "cannot reach the lease; standing by, trying every {interval:?}"),
                        (Ok(_), true) => {
                            tracing::info!(lease = %self.name, "the lease is reachable again")
                        }
                        _ => {}
                    }
                    unreachable = tried.is_err();
                    match tried {
                        Ok(Some(term)) => {
                            tracing::info!(lease = %self.name, epoch = term.epoch, "leading");
                            Role::Leader(term)
                        }
                        Ok(None) | Err(_) => Role::Standby,
                    }
                }
                Role::Leader(mut term) => {
                    // A term past its trusted time sends no renewal at all.
                    let renewed = if term.expired(Instant::now()) {
                        None
                    } else {
                        let deadline = tokio::time::Instant::from_std(term.trusted_until);
                        tokio::time::timeout_at(deadline, self.renew(&mut term))
                            .await
                            .ok()
                    };
                    match renewed {
                        Some(Ok(true)) => Role::Leader(term),
                        Some(Ok(false)) => {
                            tracing::warn!(lease = %self.name, epoch = term.epoch, "lease lost to another process; standing by");
                            Role::Standby
                        }
                        Some(Err(e)) if !term.expired(Instant::now()) => {
                            tracing::warn!(lease = %self.name, error = %e, "lease renewal failed; retrying within the term");
                            Role::Leader(term)
                        }
                        _ => {
                            tracing::warn!(lease = %self.name, epoch = term.epoch,
                                "lease not renewed within its term; standing by before it can be taken");
                            Role::Standby
                        }
                    }
                }
            };
            role.send_if_modified(|r| std::mem::replace(r, next) != next);
            // Wake for the next attempt, or when the term runs out (the
            // next turn then steps down).
            let mut wake = tokio::time::Instant::now() + interval;
            if let Role::Leader(term) = next {
                wake = wake.min(tokio::time::Instant::from_std(term.trusted_until));
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.cancelled() => {
                    if let Role::Leader(term) = next {
                        role.send_replace(Role::Standby);
                        if let Err(e) = self.release(term).await {
                            tracing::warn!(lease = %self.name, error = %e, "could not release the lease; it expires by itself");
                        }
                    }
                    return;
                }
            }
        }
    }
}

/// The fencing check, run inside the transaction of a write that matters:
/// fails unless `epoch` is still the lease's, and otherwise holds the
/// lease row (`FOR SHARE`) until that transaction ends, so no acquisition
/// can slip in between this check and the commit.
pub async fn fence(conn: &mut PgConnection, name: &str, epoch: i64) -> Result<(), LeaseError> {
    let current: Option<i64> =
        sqlx::query_scalar("SELECT epoch FROM leader WHERE name = $1 FOR SHARE")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    match current {
        Some(e) if e == epoch => Ok(()),
        _ => Err(LeaseError::Fenced {
            name: name.into(),
            mine: epoch,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_is_trusted_for_ttl_less_margin_from_the_request() {
        let sent = Instant::now();
        let t = Term::from_request(3, sent, Duration::from_secs(10), Duration::from_secs(3));
        assert!(!t.expired(sent));
        assert!(!t.expired(sent + Duration::from_millis(6_999)));
        assert!(t.expired(sent + Duration::from_secs(7)));
        let none = Term::from_request(3, sent, Duration::from_secs(1), Duration::from_secs(3));
        assert!(none.expired(sent), "a margin past the ttl trusts nothing");
    }
}
