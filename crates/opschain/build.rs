//! Gives the crate `OPSCHAIN_WORKSPACE_DIR`, the workspace's root: the agent's package, whose
//! manifest builds the agent and whose `fixtures/demo` is `opschain demo`'s project, while this
//! package's own manifest is two levels down (`crates/opschain`).

fn main() {
    let manifest = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.parent().and_then(std::path::Path::parent).expect("the package is at crates/opschain of the workspace");
    println!("cargo:rustc-env=OPSCHAIN_WORKSPACE_DIR={}", root.display());
    println!("cargo:rerun-if-changed=build.rs");
}
