//! A fresh PostgreSQL database per test, on the server the tests use.

/// Where tests find PostgreSQL: `FLASHSALE_TEST_POSTGRES`, or the local server.
pub fn postgres_server_url() -> String {
    std::env::var("FLASHSALE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Creates an empty database for one test and returns its URL.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let server = postgres_server_url();
    let name = format!("flashsale_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .expect("PostgreSQL reachable (scripts/services.sh up)");
    sqlx::Executor::execute(
        &mut admin,
        sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")),
    )
    .await
    .expect("create test database");
    format!("{server}/{name}")
}
