//! The virtual-MAC hook VRRP gets before the dataplane is open.

use super::*;

/// The virtual-MAC hook given to VRRP, which may start before the
/// dataplane is open (a restart resumes masters first): what VRRP says
/// meanwhile is replayed when the dataplane's own hook arrives.
#[derive(Clone, Default)]
pub(super) struct LateHook(Arc<Mutex<LateHookState>>);

/// The dataplane's hook once there, and what was said before.
pub(super) type LateHookState = (Option<VmacHook>, BTreeMap<[u8; 6], bool>);

impl LateHook {
    pub(super) fn hook(&self) -> VmacHook {
        let me = self.clone();
        Arc::new(move |mac, ours| {
            if let Ok(mut g) = me.0.lock() {
                match &g.0 {
                    Some(h) => h(mac, ours),
                    None => {
                        g.1.insert(mac, ours);
                    }
                }
            }
        })
    }

    pub(super) fn set(&self, real: Option<VmacHook>) {
        if let Ok(mut g) = self.0.lock() {
            let pending = std::mem::take(&mut g.1);
            if let Some(h) = &real {
                for (mac, ours) in pending {
                    h(mac, ours);
                }
            }
            g.0 = real;
        }
    }
}
