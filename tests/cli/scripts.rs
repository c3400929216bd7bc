//! The shell scripts' own logic: the multi-GPU job queue of `scripts/anomalyncd.sh` with fake
//! devices and a stub binary (`dev/queue_selftest.sh`, part 1: concurrency limit, every
//! category once, failures named, signals).

use std::path::Path;
use std::process::Command;

#[test]
fn the_category_queue_passes_its_self_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if Command::new("bash").arg("--version").output().is_err() {
        eprintln!("skipped: no bash on this machine");
        return;
    }
    let o = Command::new("bash")
        .arg(root.join("dev/queue_selftest.sh"))
        .current_dir(root)
        .env_remove("QUEUE_SELFTEST_REAL")
        .output()
        .expect("the self-test runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains(" 0 failed"),
        "queue self-test failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
