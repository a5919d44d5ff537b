//! Where the tests find the services they need.

/// A fresh PostgreSQL database per test: the test kit's, shared with the unit tests.
pub use flashsale::testkit::fresh_postgres_database;

/// Where tests find Redis: `FLASHSALE_TEST_REDIS`, or the local server.
pub fn redis_url() -> String {
    std::env::var("FLASHSALE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}
