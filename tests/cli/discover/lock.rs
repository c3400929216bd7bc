//! The run-folder lock of `discover`.

use super::*;

/// A run folder is locked while a discover works in it: a second `--resume` there is refused
/// (exit 2, naming the folder and the first's PID), and the lock a killed run leaves behind is
/// taken over by the next run, with a warning naming the dead process.
#[test]
fn a_second_discover_is_refused_while_the_first_works_and_a_killed_ones_lock_is_taken_over() {
    let d = setup();
    let p = d.path();
    let long = [
        &["discover"][..],
        &given_maps(&["--set", "training.epochs=400"]),
    ]
    .concat();
    let lock = p.join("run/.anomalyncd.lock");
    let mut first = common::bin()
        .current_dir(p)
        .args(&long)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !lock.is_file() {
        assert!(started.elapsed().as_secs() < 300, "no lock after 300 s");
        assert!(first.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = format!("PID {}", first.id());
    let o = run_in(p, &[&long[..], &["--resume"]].concat());
    common::assert_fails(&o, 2, &["run", &pid, "in use", "wait for it"], "second");
    assert!(first.try_wait().unwrap().is_none(), "the first still runs");
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(lock.is_file(), "a killed run cannot remove its lock file");
    // Two epochs (tiny.yaml's): a new training, whatever stage the killed run was in.
    let t = ok(p, &given_maps(&["--resume"]));
    assert!(
        t.contains("taking over the lock") && t.contains(&pid),
        "{t}"
    );
    assert!(t.contains("cluster sizes: "), "{t}");
    assert!(!lock.exists(), "a run that ends removes its lock file");
}
