//! A `flashsale serve` whose own output a test reads (the status line, the sample
//! sales, the log lines), on a port and a store of its own, with no settings file.
//! Gateways whose output only goes to a log file are `Deployment`'s.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

pub struct ServeOutput {
    pub child: Child,
    pub stdout: Lines<BufReader<ChildStdout>>,
    /// Where it listens, e.g. `http://127.0.0.1:40123`.
    pub base: String,
    _dir: tempfile::TempDir,
}

impl ServeOutput {
    /// `serve` with `args` after the defaults; returns once it printed where it listens.
    /// Its stderr is dropped.
    pub async fn start(args: &[&str]) -> ServeOutput {
        Self::launch(args, &[], Stdio::null()).await
    }

    /// The same with `env` set and its stderr kept for `stderr`.
    pub async fn start_reading_stderr(args: &[&str], env: &[(&str, &str)]) -> ServeOutput {
        Self::launch(args, env, Stdio::piped()).await
    }

    /// Its stderr, once (`start_reading_stderr` only).
    pub fn stderr(&mut self) -> Lines<BufReader<ChildStderr>> {
        let stderr = self
            .child
            .stderr
            .take()
            .expect("stderr kept, and taken once");
        BufReader::new(stderr).lines()
    }

    async fn launch(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> ServeOutput {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_flashsale"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--store")
            .arg(format!("sqlite://{}", dir.path().join("s.db").display()))
            .arg("--config")
            .arg(dir.path().join("none.toml"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let line = stdout.next_line().await.unwrap().expect("a listening line");
            if let Some(base) = line.strip_prefix("flashsale listening on ") {
                break base.to_string();
            }
        };
        ServeOutput {
            child,
            stdout,
            base,
            _dir: dir,
        }
    }
}
