//! `sluice`: the agent and the CLI.
#![forbid(unsafe_code)]

mod cli;
mod output;

fn main() {
    let code = match cli::main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
