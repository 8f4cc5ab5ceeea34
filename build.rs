//! Generates the C header from src/ffi with cbindgen into OUT_DIR. The committed copy in
//! include/ is checked against it by tests/header.rs (scripts/gen-header.sh refreshes it).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("dashattn.h");
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    match cbindgen::Builder::new().with_config(config).with_src(crate_dir.join("src/ffi/mod.rs")).with_src(crate_dir.join("src/ffi/types.rs")).with_src(crate_dir.join("src/ffi/context.rs")).with_src(crate_dir.join("src/ffi/ops.rs")).with_src(crate_dir.join("src/ffi/error.rs")).with_src(crate_dir.join("src/ffi/version.rs")).generate() {
        Ok(b) => {
            b.write_to_file(&out);
        }
        Err(e) => panic!("cbindgen failed: {e}"),
    }
}
