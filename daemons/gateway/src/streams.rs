//! Bounds on long-lived responses: how many `/watch` streams may be open at once, in all and per
//! tenant. A slot is taken before a stream starts and given back when it ends (on drop).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The counters; one per gateway.
#[derive(Debug)]
pub struct StreamLimits {
    max_total: usize,
    max_per_tenant: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_tenant: HashMap<String, usize>,
}

/// Why no slot was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    Total { limit: usize },
    Tenant { tenant: String, limit: usize },
}

impl Full {
    /// The setting that raises the limit that was hit.
    pub fn setting(&self) -> &'static str {
        match self {
            Full::Total { .. } => "PYOCO_SSE_MAX_STREAMS",
            Full::Tenant { .. } => "PYOCO_SSE_MAX_STREAMS_PER_TENANT",
        }
    }
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Full::Total { limit } => write!(f, "{limit} are open on this gateway (its limit)"),
            Full::Tenant { tenant, limit } if tenant.is_empty() => {
                write!(f, "{limit} are open (the per-client limit)")
            }
            Full::Tenant { tenant, limit } => {
                write!(f, "{limit} are open for tenant '{tenant}' (its limit)")
            }
        }
    }
}

/// One open stream; gives its slot back when dropped.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<StreamLimits>,
    tenant: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_tenant.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                // No entry per tenant that once watched: the map stays as small as what is open.
                open.per_tenant.remove(&self.tenant);
            }
        }
    }
}

impl StreamLimits {
    /// Limits below 1 are taken as 1.
    pub fn new(max_total: i64, max_per_tenant: i64) -> Arc<StreamLimits> {
        Arc::new(StreamLimits {
            max_total: max_total.max(1) as usize,
            max_per_tenant: max_per_tenant.max(1) as usize,
            open: Mutex::new(Open::default()),
        })
    }

    /// A slot for a stream of `tenant` (`""` without auth), or which limit is reached.
    pub fn acquire(self: &Arc<Self>, tenant: &str) -> Result<Slot, Full> {
        let mut open = self.open.lock().unwrap();
        if open.total >= self.max_total {
            return Err(Full::Total {
                limit: self.max_total,
            });
        }
        let n = open.per_tenant.entry(tenant.to_string()).or_insert(0);
        if *n >= self.max_per_tenant {
            return Err(Full::Tenant {
                tenant: tenant.to_string(),
                limit: self.max_per_tenant,
            });
        }
        *n += 1;
        open.total += 1;
        Ok(Slot {
            limits: self.clone(),
            tenant: tenant.to_string(),
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_tenant_and_in_total_and_slots_come_back() {
        let l = StreamLimits::new(3, 2);
        let a1 = l.acquire("a").unwrap();
        let _a2 = l.acquire("a").unwrap();
        assert_eq!(
            l.acquire("a").unwrap_err(),
            Full::Tenant {
                tenant: "a".into(),
                limit: 2
            }
        );
        let b1 = l.acquire("b").unwrap();
        assert_eq!(l.acquire("c").unwrap_err(), Full::Total { limit: 3 });
        drop(a1);
        assert_eq!(l.open(), 2);
        let _a3 = l.acquire("a").expect("a slot came back");
        drop(b1); // room in total again: now the tenant's own limit is what stops `a`
        assert_eq!(
            l.acquire("a").unwrap_err().setting(),
            "PYOCO_SSE_MAX_STREAMS_PER_TENANT"
        );
    }

    #[test]
    fn the_tenant_map_does_not_grow_with_tenants_that_left() {
        let l = StreamLimits::new(100, 1);
        for i in 0..50 {
            drop(l.acquire(&format!("t{i}")).unwrap());
        }
        assert!(l.open.lock().unwrap().per_tenant.is_empty());
    }
}
