//! Resident memory of other processes and CPU time of this one, from /proc.

use std::collections::BTreeMap;

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime of this process (all threads), in clock ticks.
pub(super) fn self_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after ')': state(0) ppid(1) ... utime(11) stime(12)
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub(super) fn proc_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// All descendants of `root` (scan of /proc/*/stat).
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // fields after the last ')' : state ppid ...
            if let Some(rest) = stat.rsplit_once(')').map(|x| x.1) {
                let mut it = rest.split_whitespace();
                let _state = it.next();
                if let Some(ppid) = it.next().and_then(|p| p.parse::<u32>().ok()) {
                    parent_of.push((pid, ppid));
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &parent_of {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

pub(super) fn sample_rss(pids: &[u32], children: bool) -> BTreeMap<u32, Option<u64>> {
    pids.iter()
        .map(|&pid| {
            let mut kb = rss_kb(pid);
            if children {
                if let Some(k) = kb.as_mut() {
                    *k += descendants(pid).into_iter().filter_map(rss_kb).sum::<u64>();
                }
            }
            (pid, kb)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(self_cpu_ticks().is_some());
    }
}
