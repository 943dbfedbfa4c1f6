//! A timer that wakes at its deadline, not up to a millisecond after it.
//!
//! tokio's timer wheel has millisecond slots and rounds a deadline up to
//! the next one, and its reactor waits in whole milliseconds: a VRRP
//! backup woke on average about a millisecond after its master-down
//! deadline (measured by `cargo xtask bench failover` against keepalived,
//! which arms a timerfd). This timer arms a `timerfd` at the absolute
//! deadline on `CLOCK_MONOTONIC` (the clock `std::time::Instant` reads)
//! and waits for it through the reactor, so the wake-up is the kernel's
//! high-resolution timer's.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Instant,
};

use tokio::io::{Interest, unix::AsyncFd};

/// A one-shot timerfd, re-armed for each wait.
pub struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

fn timespec_now() -> libc::timespec {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t
}

impl PreciseTimer {
    /// A timer on `CLOCK_MONOTONIC`; must be made inside a tokio runtime.
    pub fn new() -> io::Result<PreciseTimer> {
        // SAFETY: plain system call; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the descriptor and never closes or
        // replaces it while registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(PreciseTimer { fd })
    }

    /// Waits until `deadline` (returns at once when it has passed).
    pub async fn sleep_until(&self, deadline: Instant) -> io::Result<()> {
        let now = Instant::now();
        let Some(left) = deadline.checked_duration_since(now) else {
            return Ok(());
        };
        let base = timespec_now();
        let mut ns = base.tv_nsec as u128 + left.subsec_nanos() as u128;
        let mut secs = base.tv_sec as u128 + left.as_secs() as u128;
        secs += ns / 1_000_000_000;
        ns %= 1_000_000_000;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: secs.min(i64::MAX as u128) as libc::time_t,
                tv_nsec: ns as libc::c_long,
            },
        };
        // SAFETY: our descriptor, a valid itimerspec; checked.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.get_ref().as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads 8 bytes into our buffer.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            if n == 8 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            guard.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// What a test can assert without a clock race: never early, re-armed
    /// many times, a past deadline returns. How late it wakes is a figure:
    /// `cargo xtask bench failover` measures it on the takeover path (the
    /// new master's first advert past its deadline).
    #[test]
    fn it_never_wakes_early_and_can_be_rearmed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let timer = PreciseTimer::new().expect("timerfd");
            // Re-armed many times, never early; a past deadline returns at
            // once.
            for ms in [1u64, 3, 7, 10] {
                let deadline = Instant::now() + Duration::from_millis(ms);
                timer.sleep_until(deadline).await.expect("wait");
                assert!(Instant::now() >= deadline);
            }
            // A deadline already past: it returns (tokio's own timer would
            // too; a timerfd armed in the past must not wait forever).
            let past = Instant::now() - Duration::from_millis(5);
            tokio::time::timeout(Duration::from_secs(5), timer.sleep_until(past))
                .await
                .expect("a past deadline returned")
                .expect("past");
        });
    }
}
