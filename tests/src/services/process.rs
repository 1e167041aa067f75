//! Processes through `/proc` and kill(1): whether one runs, its children,
//! signals.

use std::fs;
use std::process::{Command, Stdio};

/// Whether `pid` runs: it exists and is not a zombie.
pub(super) fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_fields(&stat).map(|(state, _)| state))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// State and parent PID from a `/proc/PID/stat` line. The command name in
/// parentheses may contain spaces and parentheses, so parse after the last `)`.
fn stat_fields(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Live child processes of `parent`.
pub(super) fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat_fields(&stat))
                .is_some_and(|(state, ppid)| ppid == parent && state != 'Z')
        })
        .collect()
}

/// Send `sig` to each of `pids` with kill(1). Errors (a process already gone)
/// are expected and ignored. PIDs 0 and 1 are never signalled: 0 would hit
/// our own process group.
pub(super) fn signal(pids: &[u32], sig: &str) {
    let pids: Vec<String> = pids
        .iter()
        .filter(|&&pid| pid > 1)
        .map(u32::to_string)
        .collect();
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(&pids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_after_the_command_name() {
        assert_eq!(
            stat_fields("123 (postgres: ckpt (x)) S 77 123 123 0 -1"),
            Some(('S', 77))
        );
        assert_eq!(stat_fields("9 (sh) Z 1 9"), Some(('Z', 1)));
        assert_eq!(stat_fields("garbage"), None);
    }
}
