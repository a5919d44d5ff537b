//! Which engines back the server under test, and the macro that runs a suite's test
//! functions once per combination.

/// Which engines back the server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backends {
    /// local gate, in-process bus, SQLite: nothing outside the process.
    Embedded,
    /// Redis gate, in-process bus, PostgreSQL.
    RedisMemoryPostgres,
    /// Redis gate, Kafka bus (with a `flashsale worker`), PostgreSQL.
    RedisKafkaPostgres,
}

/// Runs async test functions once per backend combination: embedded always; the others
/// are ignored in a plain `cargo test` (they say what they need) and run by `.ci/run`.
/// `backend_tests!(memory_bus: …)` leaves out the Kafka bus, `distributed: …` the
/// embedded engine, `kafka: …` runs only on the Kafka bus.
#[macro_export]
macro_rules! backend_tests {
    (distributed: $($test:ident),* $(,)?) => {
        $( $crate::backend_tests!(@test [redis_memory_postgres redis_kafka_postgres] $test); )*
    };
    (kafka: $($test:ident),* $(,)?) => {
        $( $crate::backend_tests!(@test [redis_kafka_postgres] $test); )*
    };
    (memory_bus: $($test:ident),* $(,)?) => {
        $( $crate::backend_tests!(@test [embedded redis_memory_postgres] $test); )*
    };
    ($($test:ident),* $(,)?) => {
        $( $crate::backend_tests!(@test [embedded redis_memory_postgres redis_kafka_postgres] $test); )*
    };
    (@test [$($mode:ident)*] $test:ident) => {
        mod $test {
            $( $crate::backend_tests!(@mode $mode $test); )*
        }
    };
    (@mode embedded $test:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn embedded() {
            super::$test($crate::helpers::Backends::Embedded).await
        }
    };
    (@mode redis_memory_postgres $test:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        #[ignore = "needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (scripts/services.sh up)"]
        async fn redis_memory_postgres() {
            super::$test($crate::helpers::Backends::RedisMemoryPostgres).await
        }
    };
    (@mode redis_kafka_postgres $test:ident) => {
        #[cfg(feature = "kafka")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        #[ignore = "needs Redis, PostgreSQL and a Kafka broker on 127.0.0.1:9092 (scripts/services.sh up)"]
        async fn redis_kafka_postgres() {
            super::$test($crate::helpers::Backends::RedisKafkaPostgres).await
        }
    };
}
