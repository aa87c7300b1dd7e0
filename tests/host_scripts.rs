//! The host set-up scripts (`scripts/setup-hugepages.sh`,
//! `scripts/setup-vfio.sh`, `scripts/check-host.sh`) run with `--help` and
//! `--dry-run` against this machine's real `/sys`: exit codes and key lines
//! are what other scripts rely on. Nothing here changes the host: every
//! invocation is `--help`, `--dry-run`, a listing, or refused before acting.
//! The vfio binding plan is also checked against a small fake sysfs tree
//! (`OSPREY_SYSFS`), since CI machines have no NVMe controller to plan for.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Any one script run may take this long.
const TIMEOUT: Duration = Duration::from_secs(30);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn text(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn run_with(name: &str, args: &[&str], env: &[(&str, &Path)]) -> Run {
    let mut command = Command::new("bash");
    command
        .arg(script(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} {args:?} did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("collect output");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn run(name: &str, args: &[&str]) -> Run {
    run_with(name, args, &[])
}

const SCRIPTS: [&str; 3] = ["setup-hugepages.sh", "setup-vfio.sh", "check-host.sh"];

#[test]
fn every_script_has_help_and_refuses_unknown_arguments() {
    for name in SCRIPTS {
        for flag in ["--help", "-h"] {
            let r = run(name, &[flag]);
            assert_eq!(r.code, 0, "{name} {flag}\n{}", r.text());
            assert!(r.stdout.contains("Usage:"), "{name} {flag}\n{}", r.text());
            assert!(
                r.stdout.contains("Exit codes:"),
                "{name} {flag}\n{}",
                r.text()
            );
            assert!(
                r.stdout.contains("--dry-run"),
                "{name} {flag}\n{}",
                r.text()
            );
            assert!(
                !r.stdout.contains("set -euo"),
                "{name} {flag}: help runs into the code\n{}",
                r.text()
            );
        }
        let r = run(name, &["--no-such-flag"]);
        assert_eq!(r.code, 2, "{name} --no-such-flag\n{}", r.text());
        assert!(r.stderr.contains("--help"), "{name}\n{}", r.text());
    }
}

#[test]
fn hugepages_dry_run_plans_without_changing_anything() {
    let before = std::fs::read_to_string("/proc/sys/vm/nr_hugepages").unwrap_or_default();
    let r = run("setup-hugepages.sh", &["--dry-run", "--pages", "7"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(r.stdout.contains("hugepage pools:"), "{}", r.text());
    assert!(r.stdout.contains("hugetlbfs mounts:"), "{}", r.text());
    let pool = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
    if Path::new(pool).exists() {
        let current: u64 = std::fs::read_to_string(pool)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if current != 7 {
            assert!(r.stdout.contains("dry run; would do:"), "{}", r.text());
            assert!(
                r.stdout.contains(&format!("echo 7 > {pool}")),
                "{}",
                r.text()
            );
        }
    }
    let after = std::fs::read_to_string("/proc/sys/vm/nr_hugepages").unwrap_or_default();
    assert_eq!(before, after, "a dry run changed nr_hugepages");

    // Status only, and a plan to persist.
    let r = run("setup-hugepages.sh", &["--status"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(r.stdout.contains("hugepage pools:"), "{}", r.text());
    let r = run(
        "setup-hugepages.sh",
        &["--dry-run", "--pages", "7", "--persist"],
    );
    assert_eq!(r.code, 0, "{}", r.text());

    // Usage errors.
    for args in [
        &["--pages", "x"][..],
        &["--size", "3M", "--pages", "1"],
        &["--persist"],
    ] {
        let r = run("setup-hugepages.sh", args);
        assert_eq!(r.code, 2, "{args:?}\n{}", r.text());
    }
}

#[test]
fn vfio_lists_controllers_and_refuses_what_it_cannot_bind() {
    let r = run("setup-vfio.sh", &["--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(r.stdout.starts_with("IOMMU: "), "{}", r.text());
    assert!(
        r.stdout.contains("no NVMe controllers found") || r.stdout.contains("BDF"),
        "{}",
        r.text()
    );
    // Not a PCI address; an address with no device; nothing to bind.
    let r = run("setup-vfio.sh", &["--dry-run", "bind", "not-an-address"]);
    assert_eq!(r.code, 2, "{}", r.text());
    let r = run("setup-vfio.sh", &["--dry-run", "bind", "ffff:ff:1f.7"]);
    assert_eq!(r.code, 2, "{}", r.text());
    assert!(r.stderr.contains("no PCI device"), "{}", r.text());
    let r = run("setup-vfio.sh", &["--dry-run", "bind"]);
    assert_eq!(r.code, 2, "{}", r.text());
    // A real PCI device that is not an NVMe controller, if this host has one.
    let non_nvme = std::fs::read_dir("/sys/bus/pci/devices")
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("class"))
                .map(|c| c.trim() != "0x010802")
                .unwrap_or(false)
        });
    if let Some(entry) = non_nvme {
        let bdf = entry.file_name().to_string_lossy().into_owned();
        let r = run("setup-vfio.sh", &["--dry-run", "bind", &bdf]);
        assert_eq!(r.code, 2, "{bdf}\n{}", r.text());
        assert!(r.stderr.contains("not an NVMe controller"), "{}", r.text());
    }
}

/// A fake sysfs with one NVMe controller on the nvme driver, namespace
/// `nvme0n1`, and no IOMMU.
fn fake_sysfs(root: &Path) {
    let device = root.join("bus/pci/devices/0000:01:00.0");
    std::fs::create_dir_all(device.join("nvme/nvme0/nvme0n1")).unwrap();
    std::fs::create_dir_all(root.join("bus/pci/drivers/nvme")).unwrap();
    std::fs::create_dir_all(root.join("kernel/iommu_groups")).unwrap();
    std::fs::write(device.join("class"), "0x010802\n").unwrap();
    std::fs::write(device.join("vendor"), "0x144d\n").unwrap();
    std::fs::write(device.join("device"), "0xa808\n").unwrap();
    std::os::unix::fs::symlink("../../drivers/nvme", device.join("driver")).unwrap();
}

#[test]
fn vfio_plans_binding_checks_iommu_and_refuses_mounted_devices() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("osprey-fake-sysfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    fake_sysfs(&root);
    let sysfs: &[(&str, &Path)] = &[("OSPREY_SYSFS", &root)];

    let r = run_with("setup-vfio.sh", &["list"], sysfs);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(r.stdout.contains("0000:01:00.0"), "{}", r.text());
    assert!(r.stdout.contains("nvme0n1"), "{}", r.text());

    // No IOMMU: refused unless --no-iommu, which warns.
    let r = run_with("setup-vfio.sh", &["--dry-run", "bind", "01:00.0"], sysfs);
    assert_eq!(r.code, 4, "{}", r.text());
    assert!(r.stderr.contains("intel_iommu=on"), "{}", r.text());
    let r = run_with(
        "setup-vfio.sh",
        &["--dry-run", "--no-iommu", "bind", "01:00.0"],
        sysfs,
    );
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(r.stderr.contains("WARNING"), "{}", r.text());
    assert!(r.stdout.contains("driver_override"), "{}", r.text());
    assert!(r.stdout.contains("unbind from nvme"), "{}", r.text());

    // With an IOMMU group present, no warning and no no-IOMMU step.
    std::fs::create_dir_all(root.join("kernel/iommu_groups/7")).unwrap();
    let r = run_with("setup-vfio.sh", &["--dry-run", "bind", "01:00.0"], sysfs);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(!r.stdout.contains("no-IOMMU"), "{}", r.text());
    // Already on nvme: unbinding back is nothing to do (idempotent).
    let r = run_with("setup-vfio.sh", &["--dry-run", "unbind", "01:00.0"], sysfs);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(r.stdout.contains("already on nvme"), "{}", r.text());

    // A mounted namespace: refused, whatever the flags.
    let mounts = root.join("mounts");
    std::fs::write(&mounts, "/dev/nvme0n1 /data xfs rw 0 0\n").unwrap();
    let env: &[(&str, &Path)] = &[("OSPREY_SYSFS", &root), ("OSPREY_PROC_MOUNTS", &mounts)];
    let r = run_with(
        "setup-vfio.sh",
        &["--dry-run", "--no-iommu", "bind", "0000:01:00.0"],
        env,
    );
    assert_eq!(r.code, 3, "{}", r.text());
    assert!(r.stderr.contains("mounted at /data"), "{}", r.text());
    let r = run_with("setup-vfio.sh", &["list"], env);
    assert!(r.stdout.contains("IN USE"), "{}", r.text());

    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn check_host_reports_every_check_with_a_fix() {
    let r = run("check-host.sh", &["--dry-run"]);
    assert!(
        r.code == 0 || r.code == 1,
        "exit codes are 0 or 1\n{}",
        r.text()
    );
    for check in ["hugepages", "iommu", "vfio", "cpu-isolation", "spdk"] {
        let lines: Vec<&str> = r
            .stdout
            .lines()
            .filter(|l| {
                let mut words = l.split_whitespace();
                matches!(words.next(), Some("PASS" | "WARN" | "FAIL"))
                    && words.next() == Some(check)
            })
            .collect();
        assert_eq!(lines.len(), 1, "one line for {check}\n{}", r.text());
    }
    let fails = r.stdout.lines().filter(|l| l.starts_with("FAIL")).count();
    let fixes = r
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("fix:"))
        .count();
    let warns = r.stdout.lines().filter(|l| l.starts_with("WARN")).count();
    assert_eq!(
        fixes,
        fails + warns,
        "every FAIL and WARN has a fix\n{}",
        r.text()
    );
    assert_eq!(r.code, i32::from(fails > 0), "{}", r.text());
    assert!(r.stdout.contains("result: "), "{}", r.text());

    // --strict fails on warnings too; --no-spdk drops that check.
    let strict = run("check-host.sh", &["--strict"]);
    assert_eq!(
        strict.code,
        i32::from(fails + warns > 0),
        "{}",
        strict.text()
    );
    let r = run("check-host.sh", &["--no-spdk"]);
    assert!(!r.stdout.contains(" spdk "), "{}", r.text());
    let r = run("check-host.sh", &["--min-hugepages-mb", "lots"]);
    assert_eq!(r.code, 2, "{}", r.text());
}
