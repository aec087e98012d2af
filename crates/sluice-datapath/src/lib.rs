#[allow(clippy::all, unsafe_code, dead_code)]
pub mod skel {
    include!(concat!(env!("OUT_DIR"), "/sock.skel.rs"));
}
