//! Release builds of the agent link with LLVM's lld (rustup ships it with every toolchain, as
//! `gcc-ld/ld.lld` beside `rust-lld`) and the symbol order in `scripts/symbol-order.txt`: the
//! functions the agent runs from start-up through an idle minute and its common requests
//! (about 1.1 MB of the 4 MB of code), placed side by side, then the other copies of the same
//! generic functions. The kernel maps a binary's code in 64 KiB blocks around each page run
//! ("fault-around"), so the idle agent's code, scattered, kept about 3.1 MiB resident; packed,
//! about 1.5-1.8 MiB (README, "Where a target is missed"). The order changes no code, only where
//! functions lie; a name missing from the list (new code, another toolchain) is placed after
//! the listed ones, so a stale list costs resident pages, nothing else.
//! `scripts/symbol-order.sh` writes the list again.
//!
//! With lld the segments are also aligned to 64 KiB (see `main`), so the fault-around blocks
//! and the page cache's 64 KiB folios cover the same parts of the file.
//!
//! Without lld in the toolchain the build links as usual, with a warning; with
//! `UTOPIA_NO_SYMBOL_ORDER` set it links as usual (to compare).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=scripts/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=UTOPIA_NO_SYMBOL_ORDER");
    println!("cargo:rerun-if-env-changed=UTOPIA_LINK_MAP");
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if !release || !linux || std::env::var_os("UTOPIA_NO_SYMBOL_ORDER").is_some() {
        return;
    }
    let Some(gcc_ld) = lld_dir() else {
        println!(
            "cargo:warning=rust-lld not found in the toolchain: linking without \
             scripts/symbol-order.txt (more of the binary stays resident when idle)"
        );
        return;
    };
    let order = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("scripts/symbol-order.txt");
    println!("cargo:rustc-link-arg-bins=-B{}", gcc_ld.display());
    println!("cargo:rustc-link-arg-bins=-fuse-ld=lld");
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    // Segments aligned to 64 KiB (file offset = address modulo 64 KiB, and the kernel then
    // places the binary at a 64 KiB multiple): the kernel's 64 KiB fault-around windows, which
    // it aligns by address, then cover the same 64 KiB blocks of the file as the 64 KiB
    // page-cache folios `cp` and `install` leave behind (which 6.18 maps whole). With 4 KiB
    // alignment the two grids were shifted by a random amount each start, and the idle agent's
    // resident code from a copied binary was 2.2-2.3 MiB instead of 1.7 (README, "Where a
    // target is missed").
    println!("cargo:rustc-link-arg-bins=-Wl,-z,max-page-size=65536");
    // scripts/symbol-order.sh reads the names of the functions from the link map: a release
    // build keeps no symbols, and one with them (another profile) names them differently.
    if let Some(map) = std::env::var_os("UTOPIA_LINK_MAP") {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,-Map={}",
            PathBuf::from(map).display()
        );
    }
}

/// The toolchain's `gcc-ld` directory holding the `ld.lld` wrapper for `cc -fuse-ld=lld`.
fn lld_dir() -> Option<PathBuf> {
    let rustc = std::env::var_os("RUSTC")?;
    let host = std::env::var("HOST").ok()?;
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = String::from_utf8(output.stdout).ok()?;
    let dir = PathBuf::from(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/gcc-ld");
    dir.join("ld.lld").is_file().then_some(dir)
}
