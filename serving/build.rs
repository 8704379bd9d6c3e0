//! Vendors the dashboard's charting library (uPlot, from npm, pinned by
//! `dashboard/package-lock.json`) into the binary: installs it with `npm ci` when
//! `dashboard/node_modules` lacks it, then copies the built files to `OUT_DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;

const FILES: [&str; 2] = ["uPlot.iife.min.js", "uPlot.min.css"];

fn main() {
    let dashboard = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboard");
    println!("cargo::rerun-if-changed=dashboard/package-lock.json");
    let dist = dashboard.join("node_modules/uplot/dist");
    if !FILES.iter().all(|file| dist.join(file).exists()) {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dashboard)
            .status();
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => panic!(
                "`npm ci` in {} failed ({status}); the dashboard's chart library comes from the npm registry",
                dashboard.display()
            ),
            Err(err) => panic!(
                "could not run npm ({err}): the dashboard's chart library (uPlot) is installed with npm; install Node.js and npm (apt-get install nodejs npm)"
            ),
        }
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for file in FILES {
        std::fs::copy(dist.join(file), out.join(file))
            .unwrap_or_else(|err| panic!("copying {file} from {}: {err}", dist.display()));
    }
}
