//! The two databases the store runs on: SQLite (embedded, one machine) and
//! Postgres (shared by an active/passive pair).
//!
//! Every query is written once, in SQLite's dialect, and compiled for both:
//! [`on!`] expands its body once per backend, with that backend's concrete
//! connection type (so sqlx checks each one's types, which `sqlx::Any`
//! would erase) and that backend's `sql` function. For Postgres, `sql`
//! rewrites the few forms that differ ([`postgres_sql`]); for SQLite it
//! passes the text through untouched, so the embedded path pays nothing.

use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};

/// One value per backend: a pool, a connection, or a transaction.
#[derive(Clone)]
pub enum Db<S, P> {
    Sqlite(S),
    Postgres(P),
}

/// The read pool.
pub type Pool = Db<sqlx::SqlitePool, sqlx::PgPool>;
/// The writer's own connection.
pub type Conn = Db<sqlx::SqliteConnection, sqlx::PgConnection>;
/// The writer's transaction.
pub type Tx<'c> = Db<sqlx::Transaction<'c, sqlx::Sqlite>, sqlx::Transaction<'c, sqlx::Postgres>>;

impl<S, P> Db<S, P> {
    pub fn is_sqlite(&self) -> bool {
        matches!(self, Db::Sqlite(_))
    }
}

/// Names the backend only: Postgres's options hold its password.
impl<S, P> std::fmt::Debug for Db<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Db::Sqlite(_) => "Sqlite",
            Db::Postgres(_) => "Postgres",
        })
    }
}

impl Conn {
    /// Begins the writer's transaction: `BEGIN IMMEDIATE` in SQLite (the
    /// write lock up front, so a read never has to be upgraded mid-way).
    pub async fn begin(&mut self) -> Result<Tx<'_>, sqlx::Error> {
        use sqlx::Connection;
        Ok(match self {
            Db::Sqlite(c) => Db::Sqlite(c.begin_with(super::writer::WRITE_TX).await?),
            Db::Postgres(c) => Db::Postgres(c.begin().await?),
        })
    }
}

impl Tx<'_> {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Db::Sqlite(t) => t.commit().await,
            Db::Postgres(t) => t.commit().await,
        }
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Db::Sqlite(t) => t.rollback().await,
            Db::Postgres(t) => t.rollback().await,
        }
    }
}

/// Runs `$body` with `$c` bound to the backend's own pool, connection or
/// transaction and `$sql` to its dialect function.
macro_rules! on {
    ($db:expr, |$c:ident, $sql:ident| $body:expr) => {
        match $db {
            $crate::store::backend::Db::Sqlite($c) => {
                use $crate::store::backend::sqlite as $sql;
                $body
            }
            $crate::store::backend::Db::Postgres($c) => {
                use $crate::store::backend::postgres as $sql;
                $body
            }
        }
    };
}
pub(crate) use on;

/// SQLite's SQL: the text as written.
pub fn sqlite(sql: impl SqlSafeStr) -> SqlStr {
    sql.into_sql_str()
}

/// Postgres's SQL: the text rewritten by [`postgres_sql`].
pub fn postgres(sql: impl SqlSafeStr) -> SqlStr {
    AssertSqlSafe(postgres_sql(sql.into_sql_str().as_str())).into_sql_str()
}

/// SQLite's forms that Postgres spells differently, and their rewrite.
const REWRITES: [(&str, &str); 1] = [
    // Text to bytes: Postgres's CAST would read backslashes as escapes.
    ("CAST(payload AS BLOB)", "convert_to(payload, 'UTF8')"),
];

/// Rewrites the store's SQLite SQL for Postgres: `?` and `?N` parameters
/// become `$N`, `INDEXED BY` hints (SQLite's planner needs them, Postgres
/// has none) are dropped, and [`REWRITES`] applied. Quoted literals are
/// left alone.
pub fn postgres_sql(sql: &str) -> String {
    let mut sql = sql.to_owned();
    for (from, to) in REWRITES {
        sql = sql.replace(from, to);
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut next = 0u32;
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                let mut number = String::new();
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    number.push(d);
                }
                if number.is_empty() {
                    next += 1;
                    number = next.to_string();
                }
                out.push('$');
                out.push_str(&number);
            }
            _ => out.push(c),
        }
    }
    drop_hints(&out)
}

/// Removes every `INDEXED BY name` (and the space before it).
fn drop_hints(sql: &str) -> String {
    const HINT: &str = " INDEXED BY ";
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find(HINT) {
        out.push_str(&rest[..at]);
        let after = &rest[at + HINT.len()..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        rest = &after[name_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_sql_numbers_parameters_and_drops_what_sqlite_alone_needs() {
        assert_eq!(
            postgres_sql(
                "SELECT a FROM t INDEXED BY t_idx WHERE a = ? AND b = '?' AND c IN (?, ?)"
            ),
            "SELECT a FROM t WHERE a = $1 AND b = '?' AND c IN ($2, $3)"
        );
        assert_eq!(
            postgres_sql("UPDATE d SET x = ?3 WHERE sink = ?1 AND seq = ?2"),
            "UPDATE d SET x = $3 WHERE sink = $1 AND seq = $2"
        );
        assert_eq!(
            postgres_sql("SELECT length(CAST(payload AS BLOB)) FROM events INDEXED BY e"),
            "SELECT length(convert_to(payload, 'UTF8')) FROM events"
        );
    }
}
