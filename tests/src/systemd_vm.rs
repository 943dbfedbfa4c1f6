//! A Debian 12 machine with systemd as PID 1, under qemu (TCG), for what
//! only a real init shows: the shipped unit's private mount namespace,
//! `systemctl restart`, systemd restarting a killed daemon, a package
//! installed with apt.
//!
//! The root filesystem is built once from Debian's packages with
//! mmdebstrap (systemd, udev, iproute2, curl, busybox for the real
//! servers' httpd, ...), with the Debian 6.1 kernel's modules, and cached
//! under `target/vm` as an ext4 image; each run boots a copy-on-write
//! overlay of it. A small initramfs loads the disk's modules, copies the
//! run's files into the root filesystem (the binary or package under test,
//! the scenario) and switches to systemd. The scenario runs as a oneshot
//! unit once the machine is up, prints `RESULT key=value` lines on the
//! serial console and powers the machine off.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::{netns::sh, vm};

/// Debian packages of the root filesystem.
const PACKAGES: &str = "systemd,systemd-sysv,udev,dbus,iproute2,curl,busybox,kmod,procps,ethtool,apt,ca-certificates,man-db";

/// Kernel module directories the machine gets (networking, filesystems,
/// virtio): what an operator's server would load on demand.
const MODULE_DIRS: &[&str] = &[
    "kernel/net",
    "kernel/lib",
    "kernel/crypto",
    "kernel/arch",
    "kernel/fs",
    "kernel/block",
    "kernel/mm",
    "kernel/virt",
    "kernel/drivers/net",
    "kernel/drivers/virtio",
    "kernel/drivers/block",
    "kernel/drivers/char",
];

/// Bumped when the image's recipe changes (the cache key).
const RECIPE: u32 = 2;

/// The cached root filesystem image (raw ext4), built on first use.
fn image(kroot: &Path, version: &str) -> Result<PathBuf> {
    let dir = vm::cache();
    std::fs::create_dir_all(&dir)?;
    let img = dir.join(format!("debian12-systemd-{version}-r{RECIPE}.img"));
    if img.exists() {
        return Ok(img);
    }
    let root = dir.join(format!("rootfs-build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let out = Command::new("mmdebstrap")
        .args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "bookworm",
        ])
        .arg(&root)
        .output()
        .context("mmdebstrap (cargo xtask setup installs it)")?;
    ensure!(
        out.status.success(),
        "mmdebstrap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let modules = kroot.join("lib/modules").join(version);
    let dest = root.join("lib/modules").join(version);
    for d in MODULE_DIRS {
        let to = dest.join(d);
        std::fs::create_dir_all(to.parent().context("parent")?)?;
        sh(
            "cp",
            &[
                "-a",
                &modules.join(d).to_string_lossy(),
                &to.to_string_lossy(),
            ],
        )?;
    }
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        std::fs::copy(modules.join(f), dest.join(f))?;
    }
    sh("depmod", &["-b", &root.to_string_lossy(), version])?;
    std::fs::write(root.join("etc/hostname"), "director-vm\n")?;
    std::fs::write(root.join("etc/fstab"), "/dev/vda / ext4 rw 0 1\n")?;
    // Nothing the scenario does not need slows the boot.
    for unit in [
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "e2scrub_all.timer",
        "fstrim.timer",
        "systemd-timesyncd.service",
        "getty@tty1.service",
    ] {
        let _ = std::os::unix::fs::symlink("/dev/null", root.join("etc/systemd/system").join(unit));
    }
    let tmp = dir.join(format!("image-{}.tmp", std::process::id()));
    sh(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            &root.to_string_lossy(),
            &tmp.to_string_lossy(),
            "2G",
        ],
    )?;
    std::fs::rename(&tmp, &img)?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(img)
}

/// What a run puts into the machine.
pub struct SystemdVmSpec<'a> {
    /// Files copied into the root filesystem before boot: (path in the
    /// machine, path on this host). Directories are created.
    pub files: &'a [(&'a str, PathBuf)],
    /// The scenario (sh), run once the machine is up, as root, from a
    /// oneshot unit; its output goes to the console.
    pub script: &'a str,
}

/// Boots the machine and runs the scenario; returns the console output.
pub fn run(spec: &SystemdVmSpec, timeout: Duration) -> Result<String> {
    let (kroot, version) = vm::kernel()?;
    let img = image(&kroot, &version)?;
    let work = vm::cache().join(format!("systemd-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let initroot = work.join("initrd");
    for d in ["bin", "proc", "sys", "dev", "newroot", "payload"] {
        std::fs::create_dir_all(initroot.join(d))?;
    }
    std::fs::copy("/bin/busybox", initroot.join("bin/busybox")).context("busybox-static")?;
    let mut load = String::new();
    for m in vm::module_closure(&kroot, &version, &["virtio_pci", "virtio_blk", "ext4"])? {
        let rel = Path::new(&m)
            .strip_prefix(&kroot)
            .with_context(|| format!("module {m} outside the kernel tree"))?;
        let dest = initroot.join(rel);
        std::fs::create_dir_all(dest.parent().context("parent")?)?;
        std::fs::copy(&m, &dest)?;
        load.push_str(&format!("insmod /{}\n", rel.display()));
    }
    // The run's files, and the scenario as a unit wanted by the default
    // target.
    let payload = initroot.join("payload");
    for (at, from) in spec.files {
        let dest = payload.join(at.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().context("parent")?)?;
        std::fs::copy(from, &dest).with_context(|| format!("copying {}", from.display()))?;
    }
    let scenario = payload.join("usr/local/lib/vmtest/scenario.sh");
    std::fs::create_dir_all(scenario.parent().context("parent")?)?;
    std::fs::write(
        &scenario,
        format!(
            "#!/bin/sh\nexec >/dev/ttyS0 2>&1\necho RESULT booted=1\n{}\necho RESULT end\nsystemctl poweroff --force --force\n",
            spec.script
        ),
    )?;
    let units = payload.join("etc/systemd/system");
    std::fs::create_dir_all(units.join("multi-user.target.wants"))?;
    std::fs::write(
        units.join("vmtest.service"),
        "[Unit]\nDescription=the test scenario\nAfter=multi-user.target systemd-udevd.service\n\n[Service]\nType=oneshot\nExecStart=/bin/sh /usr/local/lib/vmtest/scenario.sh\n",
    )?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/vmtest.service",
        units.join("multi-user.target.wants/vmtest.service"),
    )?;
    // The scenario owns the console: a getty there would hang up (vhangup)
    // the scenario's open terminal.
    std::os::unix::fs::symlink("/dev/null", units.join("serial-getty@ttyS0.service"))?;
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
         {load}\
         mount -t ext4 /dev/vda /newroot || {{ echo RESULT end; echo RESULT rootfs=unmountable; poweroff -f; }}\n\
         cp -a /payload/. /newroot/\n\
         umount /proc /sys /dev\n\
         exec switch_root /newroot /sbin/init\n"
    );
    let initrd = work.join("initrd.gz");
    vm::pack_initrd(&initroot, &init, &initrd)?;
    let overlay = work.join("disk.qcow2");
    sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            &img.to_string_lossy(),
            &overlay.to_string_lossy(),
        ],
    )?;
    let drive = format!("file={},format=qcow2,if=virtio", overlay.display());
    let vmlinuz = kroot.join("boot").join(format!("vmlinuz-{version}"));
    let out = vm::boot(
        &vmlinuz,
        &initrd,
        &["-drive", &drive],
        "systemd.show_status=0",
        timeout,
    );
    let _ = std::fs::remove_dir_all(&work);
    out
}
