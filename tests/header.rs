//! The committed header equals what cbindgen generates now, and compiles as strict C99
//! and C++17.

use std::path::Path;
use std::process::Command;

#[test]
fn committed_header_matches_cbindgen() {
    let generated = std::fs::read_to_string(Path::new(env!("OUT_DIR")).join("dashattn.h")).unwrap();
    let committed = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/dashattn.h")).unwrap();
    assert!(generated == committed, "include/dashattn.h is stale: run scripts/gen-header.sh and commit it");
}

fn compiles(compiler: &str, args: &[&str], src: &str, ext: &str) {
    let dir = std::env::temp_dir().join(format!("dashattn-header-{}-{ext}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("t.{ext}"));
    std::fs::write(&file, src).unwrap();
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let out = Command::new(compiler).args(args).arg("-I").arg(&include).arg("-fsyntax-only").arg(&file).output();
    match out {
        Err(e) => panic!("{compiler} could not be run: {e}"),
        Ok(o) => assert!(o.status.success(), "{compiler} {args:?} failed:\n{}", String::from_utf8_lossy(&o.stderr)),
    }
}

const USE: &str = "#include \"dashattn.h\"\nint main(void) { dashattn_config c; dashattn_tensor t; (void)t; return dashattn_config_default(&c) == DASHATTN_SUCCESS ? 0 : 1; }\n";

#[test]
fn header_is_strict_c99() {
    compiles("cc", &["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror"], USE, "c");
}

#[test]
fn header_is_cpp17() {
    compiles("c++", &["-std=c++17", "-pedantic", "-Wall", "-Wextra", "-Werror"], USE, "cpp");
}

#[test]
fn version_constants_match_the_package_version() {
    use dashattn::ffi::version::*;
    let s = format!("{DASHATTN_VERSION_MAJOR}.{DASHATTN_VERSION_MINOR}.{DASHATTN_VERSION_PATCH}");
    assert_eq!(s, env!("CARGO_PKG_VERSION"));
    let c = unsafe { std::ffi::CStr::from_ptr(dashattn_version_string()) };
    assert_eq!(c.to_str().unwrap(), s);
    assert_eq!(dashattn_version(), DASHATTN_VERSION_MAJOR * 10000 + DASHATTN_VERSION_MINOR * 100 + DASHATTN_VERSION_PATCH);
}
