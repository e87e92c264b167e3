//! The programs the tests run besides `server`: the example programs of
//! `examples/`, and the standard tools of other projects (`redis-cli`,
//! `curl`, `wrk`, ...).
//!
//! **Examples** are Cargo examples (`cargo run --example NAME`), not
//! binaries of the package, so integration tests get no
//! `CARGO_BIN_EXE_NAME` for them, and `cargo test --test e2e` does not
//! build them (plain `cargo test` does). [`example`] therefore asks cargo
//! itself, once per test run, to build them in the profile and target
//! directory this test binary was built in (`cargo build --examples`: a
//! no-op when `cargo test` has just built them, a rebuild when one is
//! stale), and returns `<target>/<profile>/examples/NAME`. So a test always
//! runs the example as its sources are, whichever way it was started.
//!
//! **Tools** are found on `PATH`; a missing one fails the test with the
//! command that installs it (`scripts/setup.sh`), never skips it.
//!
//! The benchmark harness includes this file too (`benches/strategies/`),
//! so it depends on nothing else of the support tree.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long building the examples may take (a cold build on 2 shared cores).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The cargo profile a target directory's profile folder belongs to.
fn profile_of(dir: &str) -> &str {
    match dir {
        "debug" => "dev",
        other => other, // release, or a custom profile's own folder
    }
}

/// `<target>/<profile>/examples`, after cargo built the examples there.
fn examples_dir() -> &'static Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        // This binary is <target>/<profile>/deps/e2e-HASH.
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let profile_dir = exe.parent().and_then(Path::parent).ok_or("test binary outside a target dir")?;
        let target = profile_dir.parent().ok_or("test binary outside a target dir")?;
        let profile = profile_dir.file_name().and_then(|n| n.to_str()).ok_or("profile folder without a name")?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let log = target.join(format!("examples-build-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new(cargo)
            .args(["build", "--examples", "--profile", profile_of(profile), "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", target)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cargo: {e}"))?;
        let deadline = Instant::now() + BUILD_TIMEOUT;
        let status = loop {
            match child.try_wait().map_err(|e| format!("cargo: {e}"))? {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("cargo build --examples still running after {BUILD_TIMEOUT:?}"));
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        if !status.success() {
            return Err(format!("cargo build --examples failed ({status}):\n{stderr}"));
        }
        Ok(profile_dir.join("examples"))
    })
}

/// The example program `name` (`examples/NAME.rs` or `examples/NAME/`),
/// built from its current sources.
pub fn example(name: &str) -> PathBuf {
    try_example(name).unwrap_or_else(|e| panic!("{e}"))
}

/// [`example`], with what went wrong as an error.
pub fn try_example(name: &str) -> Result<PathBuf, String> {
    let dir = examples_dir().as_ref().map_err(|e| format!("building the examples: {e}"))?;
    let path = dir.join(name);
    if !path.is_file() {
        return Err(format!("cargo built the examples, but {} is not there", path.display()));
    }
    Ok(path)
}

/// The tool `name`, from `PATH` (and the sbin folders, where Debian puts
/// nginx).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let sbin = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    std::env::split_paths(&path).chain(sbin).map(|d| d.join(name)).find(|p| p.is_file())
}

/// [`find_tool`], failing the test with how to install it; `package` is
/// the Debian package that has it.
pub fn tool(name: &str, package: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!("`{name}` is not installed: `bash scripts/setup.sh` installs it (Debian package {package})")
    })
}
