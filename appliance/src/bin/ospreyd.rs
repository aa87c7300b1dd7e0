//! `ospreyd`: the Osprey server daemon (being written).
fn main() {
    eprintln!("ospreyd: not built yet");
    std::process::exit(1);
}
