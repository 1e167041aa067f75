//! The supervisor shell every server runs under, and [`Supervisor`], its
//! handle: start, kill -9, boot until ready, exit.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::process::{process_alive, signal};
use super::{log_tail, without_pg_env};

/// The supervisor every server runs under, for the whole life of its handle
/// (restarts included). Arguments: the directory to remove when the test
/// process is gone, the log file, the signal that stops the server, then the
/// server's command line.
///
/// It reads commands from its stdin (the lifeline pipe) and answers each on
/// stdout: `start` starts the server and prints its PID; `kill` SIGKILLs it,
/// reaps it and prints `killed`; `exit` stops it and exits, leaving the
/// directory to the test process. End of file means the test process is
/// gone: stop the server and remove the directory too.
///
/// Stopping sends the stop signal (after SIGCONT, in case it is paused), and
/// SIGKILL if the server has not exited 10 s later; the wait is a poll of the
/// server's state, not a background timer, so no helper process is left
/// behind. The server is the supervisor's child and a shell blocked in `read`
/// reaps nothing, so until the test process asks for it to be stopped the
/// server's PID (even as a zombie) cannot be reused: signalling it is safe.
const SUPERVISOR: &str = r#"
dir=$1 log=$2 sig=$3
shift 3
server=
stop() {
    [ -n "$server" ] || return 0
    kill -CONT "$server" 2>/dev/null
    kill -"$1" "$server" 2>/dev/null
    n=0
    while [ "$n" -lt 100 ]; do
        stat=$(cat "/proc/$server/stat" 2>/dev/null) || break
        stat=${stat##*) }
        [ "${stat%% *}" = Z ] && break
        sleep 0.1
        n=$((n + 1))
    done
    [ "$n" -lt 100 ] || kill -KILL "$server" 2>/dev/null
    wait "$server"
    server=
}
while IFS= read -r command; do
    case $command in
        start) stop KILL; "$@" </dev/null >>"$log" 2>&1 & server=$!; echo "$server" ;;
        kill) stop KILL; echo killed ;;
        exit) stop "$sig"; exit 0 ;;
    esac
done
stop "$sig"
rm -rf "$dir"
"#;

/// A supervisor (see [`SUPERVISOR`]) and the server it runs.
#[derive(Debug)]
pub(super) struct Supervisor {
    child: Child,
    /// Its stdin: commands, and the lifeline.
    commands: Option<ChildStdin>,
    replies: BufReader<ChildStdout>,
    /// The server's PID while it runs.
    pub(super) server: Option<u32>,
    /// The server program, for messages.
    program: String,
}

impl Supervisor {
    /// A supervisor for `program args`, run as `user` (uid, gid) if given,
    /// with `dir` as working directory and `log` collecting the server's
    /// output. The server is not started yet.
    pub(super) fn spawn(
        program: &Path,
        args: &[String],
        dir: &Path,
        log: &Path,
        stop_signal: &str,
        user: Option<(u32, u32)>,
    ) -> Supervisor {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(SUPERVISOR)
            .arg("chorus-test-supervisor")
            .arg(dir)
            .arg(log)
            .arg(stop_signal)
            .arg(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C of `cargo test` ends the test
            // process, and the lifeline then stops the server in order.
            .process_group(0);
        without_pg_env(&mut cmd);
        if let Some((uid, gid)) = user {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|err| panic!("spawning sh to supervise {}: {err}", program.display()));
        let replies = BufReader::new(child.stdout.take().expect("supervisor stdout"));
        Supervisor {
            commands: child.stdin.take(),
            child,
            replies,
            server: None,
            program: program.display().to_string(),
        }
    }

    /// Send `command` and return the supervisor's one-line answer.
    fn command(&mut self, command: &str) -> String {
        let commands = self.commands.as_mut().expect("supervisor already exited");
        let sent = commands
            .write_all(format!("{command}\n").as_bytes())
            .and_then(|()| commands.flush());
        let mut reply = String::new();
        let read = sent.and_then(|()| self.replies.read_line(&mut reply));
        match read {
            Ok(n) if n > 0 => reply.trim().to_owned(),
            _ => panic!(
                "the supervisor of {} died (command {command:?})",
                self.program
            ),
        }
    }

    /// Start the server (killing a previous one); returns its PID.
    fn start(&mut self) -> u32 {
        let reply = self.command("start");
        let pid = reply
            .parse::<u32>()
            .ok()
            .filter(|&pid| pid > 1)
            .unwrap_or_else(|| panic!("no PID for {} (got {reply:?})", self.program));
        self.server = Some(pid);
        pid
    }

    /// SIGKILL the server and reap it. No-op if it is not running.
    pub(super) fn kill9(&mut self) {
        if self.server.take().is_some() {
            let reply = self.command("kill");
            assert_eq!(reply, "killed", "supervisor of {}", self.program);
        }
    }

    /// Whether the server process runs (a zombie does not).
    fn server_alive(&self) -> bool {
        self.server.is_some_and(process_alive)
    }

    /// Stop the server and let the supervisor exit, leaving the directory to
    /// the test process. If that takes unreasonably long, SIGKILL both.
    pub(super) fn exit(&mut self) {
        let Some(mut commands) = self.commands.take() else {
            return;
        };
        // A failed write means the supervisor is already gone.
        let _ = commands.write_all(b"exit\n");
        drop(commands);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.server = None;
                return;
            }
            sleep(Duration::from_millis(10));
        }
        if let Some(pid) = self.server.take() {
            signal(&[pid], "KILL");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the server and wait until `ready` says it serves; kill it and
    /// return the end of its log if it exits or is not ready by `limit`.
    pub(super) fn boot(
        &mut self,
        limit: Duration,
        log: &Path,
        ready: impl Fn() -> bool,
    ) -> Result<(), String> {
        self.start();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !self.server_alive() {
                self.kill9();
                return Err(format!("{} exited: {}", self.program, log_tail(log)));
            }
            if ready() {
                return Ok(());
            }
            sleep(Duration::from_millis(20));
        }
        self.kill9();
        Err(format!(
            "{} not ready within {limit:?}: {}",
            self.program,
            log_tail(log)
        ))
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.exit();
    }
}
