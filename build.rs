//! Rebuilds the binary when a migration changes: `refinery::embed_migrations!` reads
//! `migrations/` at compile time, and cargo would not otherwise know that it depends on it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
