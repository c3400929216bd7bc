//! Ctrl-C in the middle of `discover`'s stages, then `--resume`.

use super::*;

/// Runs `anomalyncd ARGS` in `dir`, sends it SIGINT (Ctrl-C) as soon as `ready()` holds, and
/// returns what it printed and how it ended.
#[cfg(unix)]
fn interrupted(dir: &Path, args: &[&str], ready: impl Fn() -> bool) -> Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = common::bin();
    cmd.current_dir(dir)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // A test run started in the background by a non-interactive shell (`cargo test &`) ignores
    // SIGINT, and children inherit that: give the child the default disposition, as a terminal
    // would, so that the signal means what a Ctrl-C means.
    // SAFETY: `signal` is async-signal-safe, and nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let started = std::time::Instant::now();
    while !ready() {
        assert!(started.elapsed().as_secs() < 300, "not ready after 300 s");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let k = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(k.success());
    child.wait_with_output().unwrap()
}

/// Ctrl-C during training (SIGINT): exit 130 with the last complete epoch in the checkpoint;
/// `--resume` continues from it and redoes no earlier stage.
#[cfg(unix)]
#[test]
fn ctrl_c_in_training_then_resume_continues_from_the_checkpoint() {
    let d = setup();
    let p = d.path();
    let args = [
        &["discover"][..],
        &given_maps(&["--set", "training.epochs=400", "--num-classes", "4"]),
    ]
    .concat();
    let ckpt = p.join("run/train/checkpoint.json");
    let o = interrupted(p, &args, || ckpt.is_file());
    common::assert_no_crash(&o, "interrupted run");
    assert_eq!(o.status.code(), Some(130), "{}", common::text(&o));
    assert!(
        common::text(&o).contains("interrupted"),
        "{}",
        common::text(&o)
    );
    assert_eq!(json(&p.join("run/train/stage.json"))["finished"], false);
    let epoch = json(&ckpt)["epoch"].as_u64().unwrap() as usize;
    let before = stage_times(&p.join("run"), &["base", "binarize"]);
    let stop = (epoch + 2).to_string();
    let mut resume: Vec<&str> = args[1..].to_vec();
    resume.extend(["--resume", "--stop-after-epochs", &stop]);
    let t = ok(p, &resume);
    assert!(t.contains("continuing the training"), "{t}");
    assert!(t.contains("stopped in stage train"), "{t}");
    assert_eq!(json(&ckpt)["epoch"].as_u64().unwrap() as usize, epoch + 2);
    assert_eq!(stage_times(&p.join("run"), &["base", "binarize"]), before);
}

/// Ctrl-C in the middle of the maps stage stops the run at once, leaving the stage unfinished:
/// `--resume` keeps the base set and redoes the maps.
#[cfg(unix)]
#[test]
fn ctrl_c_in_the_maps_stage_then_resume_redoes_only_the_maps() {
    let d = setup();
    let p = d.path();
    let args = [
        "discover",
        "--images",
        "synth/test",
        "--out",
        "run",
        "--detector-random-weights",
        "--detector-image-size",
        "224",
        "--config",
        "tiny.yaml",
    ];
    let log = p.join("run/log.txt");
    let o = interrupted(p, &args, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("stage 2/4: maps"))
    });
    assert!(
        !o.status.success(),
        "the interrupted run must not succeed: {:?}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let run = p.join("run");
    assert!(
        !run.join("maps/stage.json").exists(),
        "the maps stage was interrupted"
    );
    let base = mtime(&run.join("base/stage.json"));
    let t = ok(p, &[&args[1..], &["--resume"]].concat());
    assert!(t.contains("base: finished earlier"), "{t}");
    assert_eq!(mtime(&run.join("base/stage.json")), base, "base not redone");
    assert!(run.join("maps/stage.json").is_file() && run.join("train/stage.json").is_file());
}
