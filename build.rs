//! Gives every binary (the CLI, tests, benches) an rpath to libtorch's folder, so users need no
//! LD_LIBRARY_PATH. torch-sys exports that folder to its direct dependents as
//! DEP_TCH_LIBTORCH_LIB. Also records the libtorch version for `anomalyncd --version`.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    // The linker drops libtorch_cuda (nothing references it by symbol), and then libtorch never
    // registers its CUDA backend: keep it linked so one binary uses a GPU where there is one.
    if Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,-L{dir},--no-as-needed,-ltorch_cuda,--as-needed");
    }
    // With LIBTORCH_USE_PYTORCH the folder is <site-packages>/torch/lib; torch/version.py holds
    // `__version__ = '2.13.0+cu130'`.
    let version_py = Path::new(&dir).join("../version.py");
    let version = std::fs::read_to_string(&version_py)
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("__version__"))
                .and_then(|l| l.split('\'').nth(1).map(str::to_string))
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=ANOMALYNCD_LIBTORCH_VERSION={version}");
}
