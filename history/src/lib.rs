//! chorus durable history.
//!
//! Layout:
//! - [`store`]: the `HistoryStore` contract and its types.
//! - [`sqlite`]: the embedded backend (SQLite in WAL mode via sqlx).
//! - [`postgres`]: the cluster backend (PostgreSQL via a sqlx pool). A folder:
//!   - `mod.rs`: `PostgresOptions`, `PostgresStore`, connecting and migrating,
//!     the bounded call wrapper.
//!   - `calls`: the `HistoryStore` calls (claims, reads, memberships, marks,
//!     trim, ping).
//!   - `append`: the write path of `append` (fence, de-duplication, one
//!     multi-row insert, tips).
//!   - `decode`: rows into the store's types, sqlx errors into `StoreError`.
//!   - `tests` (tests only): what needs no server.
//! - `contract` (feature `contract`): the behaviour suite every backend runs, and
//!   `history_contract_tests!`, which makes one named test per case.
//!
//! Migrations live in `migrations/<backend>/`.

#[cfg(feature = "contract")]
pub mod contract;
pub mod postgres;
pub mod sqlite;
pub mod store;

pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::SqliteStore;
pub use store::{
    Appended, HistoryStore, Membership, NewMessage, Position, ReadRange, Retention, RoomBatch,
    RoomClaim, RoomOutcome, StoreError, StoredMessage,
};
