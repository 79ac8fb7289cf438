//! What both benchmark binaries print with: a figure beside its target, percentiles, and a
//! process's resident memory.

/// One figure, its target and whether it meets it.
pub fn row(name: &str, value: String, target: &str, pass: Option<bool>) {
    let verdict = match pass {
        Some(true) => "meets the target",
        Some(false) => "MISSES the target",
        None => "",
    };
    println!("  {name:<58} {value:>14}   {target:<22} {verdict}");
}

/// The value at `p` (0..=1) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}
