//! Gives every binary (the CLI, tests, benches) an rpath to libtorch's folder, so users need no
//! LD_LIBRARY_PATH. torch-sys exports that folder to its direct dependents as
//! DEP_TCH_LIBTORCH_LIB. Also records the libtorch version for `anomalyncd --version`, and a
//! digest of the detector's source code for the fingerprint of its maps.
use std::path::{Path, PathBuf};

/// The sources whose code decides the built-in detector's maps: the detector itself, the image
/// readers it loads its inputs with, and the backbones its features come from. Any change of
/// them changes `ANOMALYNCD_DETECT_CODE`, so `discover --resume` redoes its maps instead of
/// reusing maps an older detector wrote. Broader than strictly needed (a comment edit counts):
/// redoing maps costs minutes, reusing wrong ones costs the run.
const DETECT_SOURCES: &[&str] = &[
    "src/detect",
    "src/imageio",
    "src/model/mgvit.rs",
    "src/model/block.rs",
    "src/model/efficientnet.rs",
    "src/model/precision.rs",
    "src/config/arch.rs",
];

fn main() {
    detect_code_digest();
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

/// Exports `ANOMALYNCD_DETECT_CODE`: 64-bit FNV-1a (as `digest::fnv` in the library; a build script cannot call the crate it builds, hence its own copy) over the
/// relative path and bytes of every file of [`DETECT_SOURCES`], in path order.
fn detect_code_digest() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let mut files = Vec::new();
    for src in DETECT_SOURCES {
        println!("cargo:rerun-if-changed={src}");
        collect(&root.join(src), &mut files);
    }
    files.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap_or(f);
        // '/' on every platform, so the digest does not depend on where it was built.
        let name: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        eat(name.join("/").as_bytes());
        eat(&[0]);
        // An unreadable file still changes the digest (by its name) rather than failing the build.
        eat(&std::fs::read(f).unwrap_or_default());
        eat(&[0]);
    }
    println!("cargo:rustc-env=ANOMALYNCD_DETECT_CODE={h:016x}");
}

/// The Rust files under `path` (itself when it is one), recursively; an editor's swap or backup
/// file beside them does not count.
fn collect(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.to_path_buf());
        }
    } else if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            collect(&e.path(), out);
        }
    }
}
