//! Placeholder: the CNI plugin is being written.
fn main() {
    std::process::exit(1);
}
