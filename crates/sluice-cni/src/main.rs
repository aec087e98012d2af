//! `sluice-cni`: see the library (`src/lib.rs`) and docs/cni.md.
#![forbid(unsafe_code)]

use std::io::{Read, Write};

use sluice_cni::error::{code, CniError};
use sluice_cni::{run, usage, Failure};

fn main() {
    let get = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
    if get("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
        // Run by a person.
        let arg = std::env::args().nth(1).unwrap_or_default();
        match arg.as_str() {
            "-h" | "--help" | "help" => {
                print!("{}", usage());
                return;
            }
            "-V" | "--version" | "version" => {
                println!(
                    "sluice-cni {} (CNI {})",
                    env!("CARGO_PKG_VERSION"),
                    sluice_cni::version::SUPPORTED.join(", ")
                );
                return;
            }
            _ => {
                eprint!("{}", usage());
                let e = CniError::new(
                    code::INVALID_ENV,
                    "CNI_COMMAND is not set",
                    "a container runtime sets CNI_COMMAND; see the text above (or run with --help)",
                );
                exit_with(&Failure { error: e, version: sluice_cni::version::LATEST.into() });
            }
        }
    }
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let e = CniError::new(code::IO_FAILURE, "cannot read the network configuration from stdin", e.to_string());
        exit_with(&Failure { error: e, version: sluice_cni::version::LATEST.into() });
    }
    match run(&get, &stdin) {
        Ok(Some(out)) => {
            let text = serde_json::to_string_pretty(&out).expect("a JSON value serialises");
            let mut o = std::io::stdout().lock();
            if writeln!(o, "{text}").and_then(|_| o.flush()).is_err() {
                std::process::exit(1);
            }
        }
        Ok(None) => {}
        Err(f) => exit_with(&f),
    }
}

/// The error result on stdout (for the runtime), one line on stderr (for people).
fn exit_with(f: &Failure) -> ! {
    let text = serde_json::to_string_pretty(&f.to_json()).expect("a JSON value serialises");
    println!("{text}");
    eprintln!("sluice-cni: {}", f.error);
    std::process::exit(1);
}
