//! `ospreyd`: the Osprey server daemon.
//!
//! `ospreyd --config FILE` starts the server described by the TOML file
//! (see `etc/ospreyd.toml`); SIGTERM or SIGINT, or the info command
//! `shutdown` (`osprey shutdown`), stop it cleanly so that the next start
//! is warm.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const USAGE: &str = "usage: ospreyd --config FILE\n       ospreyd --version";

fn main() {
    let mut args = std::env::args().skip(1);
    let mut config: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => match args.next() {
                Some(path) => config = Some(PathBuf::from(path)),
                None => usage_error("--config needs a file"),
            },
            "--version" | "-V" => {
                println!("ospreyd {}", env!("CARGO_PKG_VERSION"));
                return;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return;
            }
            other => usage_error(&format!("unknown argument {other:?}")),
        }
    }
    let Some(config) = config else {
        usage_error("--config FILE is required");
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("ospreyd: cannot install the handler for signal {signal}: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = osprey_appliance::daemon::run(&config, stop) {
        eprintln!("ospreyd: {e}");
        std::process::exit(1);
    }
}

fn usage_error(message: &str) -> ! {
    eprintln!("ospreyd: {message}\n{USAGE}");
    std::process::exit(2);
}
