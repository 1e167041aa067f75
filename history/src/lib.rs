//! chorus durable history.
//!
//! Layout:
//! - [`store`]: the `HistoryStore` contract and its types.
//! - [`sqlite`]: the embedded backend (SQLite in WAL mode via sqlx).
//! - [`contract`]: the behaviour suite every backend runs.
//!
//! Migrations live in `migrations/<backend>/`.

pub mod contract;
pub mod sqlite;
pub mod store;

pub use sqlite::SqliteStore;
pub use store::{
    Appended, HistoryStore, Membership, NewMessage, Position, ReadRange, Retention, RoomBatch,
    RoomClaim, RoomOutcome, StoreError, StoredMessage,
};
