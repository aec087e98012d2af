//! Compiles the C datapath (`bpf/*.c`) with clang-19 against the running
//! kernel's BTF and generates libbpf-rs skeletons, so `cargo build` alone
//! yields a working datapath. The skeleton's Rust types are generated from the
//! object's BTF: the C headers are the one definition of every shared struct.

use std::{env, path::PathBuf, process::Command};

use libbpf_cargo::SkeletonBuilder;

const PROGRAMS: &[&str] = &["sock", "sock_term", "lxc", "host", "xdp"];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let bpf_dir = manifest.join("../../bpf").canonicalize().expect("bpf/ directory");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());

    let clang = env::var("SLUICE_CLANG").unwrap_or_else(|_| "clang-19".into());
    let bpftool = env::var("SLUICE_BPFTOOL").unwrap_or_else(|_| find_bpftool());

    // vmlinux.h from the kernel's BTF: CO-RE relocations make the object
    // portable across kernels with the same features.
    let btf = env::var("SLUICE_VMLINUX_BTF").unwrap_or_else(|_| "/sys/kernel/btf/vmlinux".into());
    let vmlinux_dir = out.join("include");
    std::fs::create_dir_all(&vmlinux_dir).unwrap();
    let dump = Command::new(&bpftool)
        .args(["btf", "dump", "file", &btf, "format", "c"])
        .output()
        .unwrap_or_else(|e| panic!("running {bpftool} (install Debian's bpftool): {e}"));
    if !dump.status.success() {
        panic!("{bpftool} btf dump failed: {}", String::from_utf8_lossy(&dump.stderr));
    }
    std::fs::write(vmlinux_dir.join("vmlinux.h"), &dump.stdout).unwrap();

    for name in PROGRAMS {
        let src = bpf_dir.join(format!("{name}.bpf.c"));
        let obj = out.join(format!("{name}.bpf.o"));
        let skel = out.join(format!("{name}.skel.rs"));
        SkeletonBuilder::new()
            .source(&src)
            .obj(&obj)
            .clang(&clang)
            .clang_args([
                "-O2".to_string(),
                "-g".to_string(),
                "-Wall".to_string(),
                "-Werror".to_string(),
                "-D__TARGET_ARCH_x86".to_string(),
                format!("-I{}", vmlinux_dir.display()),
                format!("-I{}", bpf_dir.join("include").display()),
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building {}: {e:#}", src.display()));
    }
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    for sub in ["include", "lib"] {
        println!("cargo:rerun-if-changed={}", bpf_dir.join(sub).display());
    }
    println!("cargo:rerun-if-env-changed=SLUICE_CLANG");
}

fn find_bpftool() -> String {
    for p in ["/usr/sbin/bpftool", "/usr/local/sbin/bpftool", "/usr/bin/bpftool"] {
        if std::path::Path::new(p).exists() {
            return p.to_string();
        }
    }
    "bpftool".to_string()
}
