//! A throwaway VM for what the host kernel cannot do (it has no IPVS): the
//! Debian 6.1 kernel under qemu (TCG), booted from an initramfs holding
//! busybox, iproute2, ipvsadm, the director binary, the kernel modules a
//! test names (with their dependencies, loaded in order by `/init`), and
//! the test's own `/init` script. Whatever the script prints on the serial
//! console comes back as the run's output. The kernel package is fetched
//! once (`apt-get download`) and cached under `target/vm`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::netns::sh;

/// Where the kernel and images are cached.
pub(crate) fn cache() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("vm")
}

/// The Debian kernel package linux-image-amd64 points at (bookworm: 6.1).
fn kernel_package() -> Result<String> {
    let lookup = || -> Option<String> {
        let out = Command::new("apt-cache")
            .args(["depends", "linux-image-amd64"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: ").map(str::to_string))
            .filter(|p| p.starts_with("linux-image-"))
    };
    if let Some(p) = lookup() {
        return Ok(p);
    }
    // A machine whose package lists were never fetched.
    sh("apt-get", &["update", "-q"])?;
    lookup().context("apt-cache names no kernel for linux-image-amd64")
}

/// The unpacked kernel package: (root, version).
pub(crate) fn kernel() -> Result<(PathBuf, String)> {
    // Tests boot VMs in parallel: one of them fetches and unpacks, the
    // others wait for it (and a half-unpacked tree is never taken as
    // whole: it is unpacked beside and renamed into place).
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let dir = cache();
    std::fs::create_dir_all(&dir)?;
    let package = kernel_package()?;
    let version = package.trim_start_matches("linux-image-").to_string();
    let root = dir.join(format!("kernel-{version}"));
    if !root
        .join("boot")
        .join(format!("vmlinuz-{version}"))
        .exists()
    {
        let out = Command::new("apt-get")
            .args(["download", &package])
            .current_dir(&dir)
            .output()
            .context("apt-get download")?;
        ensure!(
            out.status.success(),
            "apt-get download {package}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deb = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
            })
            .context("the downloaded package")?;
        let partial = dir.join(format!("kernel-{version}.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        sh(
            "dpkg-deb",
            &["-x", &deb.to_string_lossy(), &partial.to_string_lossy()],
        )?;
        sh("depmod", &["-b", &partial.to_string_lossy(), &version])?;
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&partial, &root).context("moving the unpacked kernel into place")?;
        let _ = std::fs::remove_file(deb);
    }
    Ok((root, version))
}

/// `modules` and everything they depend on, in load order (paths inside
/// the kernel tree).
pub(crate) fn module_closure(root: &Path, version: &str, modules: &[&str]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for m in modules {
        let o = sh(
            "modprobe",
            &[
                "-d",
                &root.to_string_lossy(),
                "-S",
                version,
                "--show-depends",
                m,
            ],
        )?;
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if let Some(p) = l.strip_prefix("insmod ") {
                let p = p.split_whitespace().next().unwrap_or("").to_string();
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    Ok(out)
}

/// Copies a program and the shared libraries it needs into `root`.
pub(crate) fn install_program(root: &Path, program: &Path, at: &str) -> Result<()> {
    let dest = root.join(at.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().context("parent")?)?;
    std::fs::copy(program, &dest).with_context(|| format!("copying {}", program.display()))?;
    let out = Command::new("ldd").arg(program).output()?;
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let path = l
            .split("=>")
            .nth(1)
            .unwrap_or(l)
            .split_whitespace()
            .next()
            .unwrap_or("");
        if path.starts_with('/') {
            let d = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(d.parent().context("parent")?)?;
            std::fs::copy(path, &d).with_context(|| format!("copying {path}"))?;
        }
    }
    Ok(())
}

/// What goes into the VM.
pub struct VmSpec<'a> {
    /// The director binary (stripped of debug info on the way in).
    pub director: &'a Path,
    /// Kernel modules the VM has (dependencies added, `modules.dep`
    /// built): `modprobe` loads them on demand.
    pub available: &'a [&'a str],
    /// Of those, what the boot loads (as an operator's machine would).
    pub boot_modules: &'a [&'a str],
    /// The test's script, run by `/init` after the basics are mounted and
    /// the modules loaded; it ends with the VM (`poweroff -f` follows).
    pub script: &'a str,
    /// Extra files: (path in the VM, contents).
    pub files: &'a [(&'a str, String)],
    /// Extra programs of the host, installed at the same path with their
    /// libraries.
    pub programs: &'a [&'a str],
}

/// Builds the image and boots it; returns the serial console output.
pub fn run(spec: &VmSpec, timeout: Duration) -> Result<String> {
    let (kroot, version) = kernel()?;
    // Tests of one binary run in parallel: one work directory per boot.
    static BOOTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BOOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let work = cache().join(format!("run-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let root = work.join("root");
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "run", "tmp", "etc", "root",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static")?;
    let ip = ["/usr/bin/ip", "/sbin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("iproute2's ip")?;
    install_program(&root, Path::new(ip), "/sbin/ip")?;
    install_program(&root, Path::new("/usr/sbin/ipvsadm"), "/usr/sbin/ipvsadm")?;
    for p in spec.programs {
        install_program(&root, Path::new(p), p)?;
    }
    let stripped = work.join("director");
    sh(
        "objcopy",
        &[
            "--strip-debug",
            &spec.director.to_string_lossy(),
            &stripped.to_string_lossy(),
        ],
    )?;
    install_program(&root, &stripped, "/director")?;
    // The modules the VM may load, with their dependencies, and a
    // `modules.dep` (depmod), so that `modprobe` works inside: the boot
    // loads only what an operator's boot would, the daemon the rest.
    let mods = module_closure(&kroot, &version, spec.available)?;
    for m in &mods {
        let rel = Path::new(m)
            .strip_prefix(&kroot)
            .with_context(|| format!("module {m} outside the kernel tree"))?;
        let dest = root.join(rel);
        std::fs::create_dir_all(dest.parent().context("parent")?)?;
        std::fs::copy(m, &dest)?;
    }
    let moddir = kroot.join("lib/modules").join(&version);
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let dest = root.join("lib/modules").join(&version).join(f);
        std::fs::create_dir_all(dest.parent().context("parent")?)?;
        std::fs::copy(moddir.join(f), dest)?;
    }
    sh("depmod", &["-b", &root.to_string_lossy(), &version])?;
    let mut load = String::new();
    for m in spec.boot_modules {
        load.push_str(&format!(
            "modprobe {m} || echo \"RESULT modprobe_failed={m}\"\n"
        ));
    }
    for (path, contents) in spec.files {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().context("parent")?)?;
        std::fs::write(p, contents)?;
    }
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/sbin:/usr/sbin:/bin\n\
         # Debian's busybox prefers its own applets to PATH: iproute2 by path.\n\
         ip() {{ /sbin/ip \"$@\"; }}\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
         mount -t tmpfs run /run\nmount -t tmpfs tmp /tmp\nmkdir -p /run/netns\n\
         ln -s /bin/busybox /sbin/modprobe\n{load}echo \"RESULT kernel=$(uname -r)\"\n\
         {}\necho RESULT end\npoweroff -f\n",
        spec.script
    );
    let initrd = work.join("initrd.gz");
    pack_initrd(&root, &init, &initrd)?;
    let vmlinuz = kroot.join("boot").join(format!("vmlinuz-{version}"));
    let out = boot(&vmlinuz, &initrd, &[], "", timeout);
    let _ = std::fs::remove_dir_all(&work);
    out
}

/// Writes `init` into `root` and packs `root` as a gzipped cpio archive.
pub(crate) fn pack_initrd(root: &Path, init: &str, initrd: &Path) -> Result<()> {
    let init_path = root.join("init");
    std::fs::write(&init_path, init)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&init_path, std::fs::Permissions::from_mode(0o755))?;
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            root.display(),
            initrd.display()
        ))
        .status()?;
    ensure!(status.success(), "building the initramfs failed");
    Ok(())
}

/// Boots the kernel with the initramfs (and `extra` qemu arguments, kernel
/// command line `append` after the console settings); returns the serial
/// console's output, which must reach `RESULT end`.
pub(crate) fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    extra: &[&str],
    append: &str,
    timeout: Duration,
) -> Result<String> {
    let mut child = Command::new("timeout")
        .arg(timeout.as_secs().to_string())
        .args([
            "qemu-system-x86_64",
            "-accel",
            "tcg,thread=multi",
            "-smp",
            "2",
        ])
        .args(["-m", "1024", "-nographic", "-no-reboot", "-net", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(extra)
        .args(["-append", &format!("console=ttyS0 quiet panic=-1 {append}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("qemu-system-x86_64")?;
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read as _;
        let mut bytes = Vec::new();
        o.read_to_end(&mut bytes)?;
        out = String::from_utf8_lossy(&bytes).replace('\r', "");
    }
    let status = child.wait()?;
    if !out.contains("RESULT end") {
        bail!("the VM did not finish ({status}); its console:\n{out}");
    }
    Ok(out)
}

/// The `RESULT key=value` lines of a run.
pub fn results(out: &str) -> Vec<(String, String)> {
    out.lines()
        // (the console's escape sequences may precede the first one)
        .filter_map(|l| l.find("RESULT ").map(|at| l[at + 7..].trim()))
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The lines between `BEGIN name` and `END name` in a run's output.
pub fn section(out: &str, name: &str) -> String {
    out.lines()
        .skip_while(|l| l.trim() != format!("BEGIN {name}"))
        .skip(1)
        .take_while(|l| l.trim() != format!("END {name}"))
        .collect::<Vec<_>>()
        .join("\n")
}
