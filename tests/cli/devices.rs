//! The device-generic training path with the device and threads given explicitly: `--device cpu
//! --threads 1` runs the same code a GPU run does (spec → stage → `to_device` at every step) and
//! gives the same predictions as the default device on a machine without CUDA. On a GPU machine
//! `scripts/gpu_check.sh` runs the CUDA side.

use std::path::Path;

use crate::common;

fn train(dir: &Path, runner: &str, global: &[&str]) -> String {
    let mut args: Vec<std::ffi::OsString> = global.iter().map(Into::into).collect();
    args.extend(common::train_args(runner, &["-q"]));
    let o = common::cli_in(dir, &args);
    common::assert_ok(&o, &format!("train {global:?}"));
    std::fs::read_to_string(dir.join("out").join(runner).join("synth/predictions.csv")).unwrap()
}

#[test]
fn explicit_cpu_device_and_threads_train_and_test() {
    let d = common::synth_with_base(3, &common::tiny_config(2, 1));
    let p = d.path();
    let explicit = train(p, "explicit", &["--device", "cpu", "--threads", "1"]);
    assert!(explicit.lines().count() > 1, "{explicit}");
    if !tch::Cuda::is_available() {
        // Without CUDA `auto` is the CPU: the explicit run must predict exactly the same (the
        // thread count is the same, so libtorch's reductions run in the same order).
        assert_eq!(explicit, train(p, "auto", &["--threads", "1"]));
    }
    let ckpt = p.join("out/explicit/synth/checkpoint.safetensors");
    let o = common::cli_in(
        p,
        &[
            "--device".as_ref(),
            "cpu".as_ref(),
            "test".as_ref(),
            "--checkpoint".as_ref(),
            ckpt.as_os_str(),
            "--out".as_ref(),
            "tested".as_ref(),
            "-q".as_ref(),
        ],
    );
    common::assert_ok(&o, "test --device cpu");
    let tested = std::fs::read_to_string(p.join("tested/predictions.csv")).unwrap();
    assert_eq!(tested, explicit, "test reproduces train's predictions");
    let o = common::cli_in(p, &["--threads", "0", "config", "show"]);
    common::assert_fails(&o, 2, &["--threads"], "--threads 0");
    let o = common::cli_in(p, &["--threads", "many", "config", "show"]);
    common::assert_fails(&o, 2, &["--threads", "many"], "--threads many");
    let o = common::cli_in(p, &["--threads", "auto", "config", "show"]);
    common::assert_ok(&o, "--threads auto");
}
