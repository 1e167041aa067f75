//! `sqlx::migrate!` embeds the migration files at compile time, but cargo does
//! not know the crate depends on them: without this, adding or editing a
//! migration would not rebuild the crate and the old schema would ship.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
