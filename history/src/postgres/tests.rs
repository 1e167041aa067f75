//! Unit tests of the PostgreSQL backend that need no server: error
//! classification, option rendering, URL checks. The behaviour suite runs
//! against a real server in the `contract` tests.

use super::decode::{is_transient_sqlstate, pg_error};
use super::*;

#[test]
fn sqlstates_are_classified() {
    for transient in [
        "08006", "08001", "53300", "53100", "58030", "40001", "40P01", "55P03", "57014", "57P01",
        "57P02", "57P03", "25P03", "25006",
    ] {
        assert!(is_transient_sqlstate(transient), "{transient}");
    }
    for permanent in [
        "23505", "23503", "42P01", "42601", "22P02", "XX000", "22021",
    ] {
        assert!(!is_transient_sqlstate(permanent), "{permanent}");
    }
}

#[test]
fn client_errors_are_classified() {
    assert!(matches!(
        pg_error(sqlx::Error::PoolTimedOut),
        StoreError::Unavailable(_)
    ));
    assert!(matches!(
        pg_error(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))),
        StoreError::Unavailable(_)
    ));
    assert!(matches!(
        pg_error(sqlx::Error::RowNotFound),
        StoreError::Internal(_)
    ));
}

#[test]
fn options_render_as_milliseconds() {
    assert_eq!(millis(Duration::from_millis(1500)), "1500");
    assert_eq!(millis(Duration::ZERO), "0");
}

/// A malformed URL is a configuration error, reported before any I/O.
#[tokio::test]
async fn a_bad_url_is_internal() {
    for url in ["redis://127.0.0.1:6379", "postgres://h:notaport/db"] {
        let err = PostgresStore::connect(url)
            .await
            .expect_err("not a PostgreSQL URL");
        assert!(matches!(err, StoreError::Internal(_)), "{url}: {err:?}");
    }
}
