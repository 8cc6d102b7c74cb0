//! One copy of each distinct list of a session's common attributes (issue 15): the containers
//! of one workload carry the same pod attributes beyond their info's (labels, image tag,
//! workload, cluster), and the sessions with the same kind and identity (or none) the same
//! session attributes, so their frames share one `Arc<[KeyValue]>` of each instead of a copy
//! each.
//!
//! In: a session's pod or session attributes as [`super::session_frame`] builds them. Out: the
//! list an open session with equal attributes already holds, else this one, kept for the
//! next. Nothing is dropped: a list no open session holds any more is forgotten at the next
//! sweep (when the table has doubled since the last one), so the table holds at most about
//! twice the distinct lists of the open sessions.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use opentelemetry::{Array, KeyValue, Value};

/// The lists a stage's sessions share; clones share the table (a [`super::BuildCtx`] and
/// its copies).
#[derive(Clone, Debug, Default)]
pub struct SharedAttrs(Arc<Mutex<Table>>);

#[derive(Debug, Default)]
struct Table {
    /// Keyed by the attributes' text: pod names and labels are chosen by the cluster's
    /// users, so std's keyed SipHash.
    lists: HashSet<List>,
    /// Sweep when the table reaches this many lists.
    sweep_at: usize,
}

/// Fewest lists before the first sweep.
const MIN_SWEEP: usize = 64;

impl SharedAttrs {
    /// `attrs`, or an equal list already shared.
    pub fn share(&self, attrs: Vec<KeyValue>) -> Arc<[KeyValue]> {
        let list = List(attrs.into());
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(have) = t.lists.get(&list) {
            return have.0.clone();
        }
        if t.lists.len() >= t.sweep_at {
            // a list only the table holds belongs to no open session
            t.lists.retain(|l| Arc::strong_count(&l.0) > 1);
            t.sweep_at = (2 * t.lists.len()).max(MIN_SWEEP);
        }
        let out = list.0.clone();
        t.lists.insert(list);
        out
    }

    /// Lists held (by sessions or only by the table until its next sweep).
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).lists.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A list compared and hashed by its keys' and values' text.
#[derive(Debug)]
struct List(Arc<[KeyValue]>);

impl PartialEq for List {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

// The common attributes hold strings, integers and booleans only: no float to break Eq.
impl Eq for List {}

impl Hash for List {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_usize(self.0.len());
        for kv in self.0.iter() {
            kv.key.as_str().hash(h);
            match &kv.value {
                Value::String(s) => s.as_str().hash(h),
                Value::Array(Array::String(v)) => v.iter().for_each(|s| s.as_str().hash(h)),
                // equal values have equal text
                other => other.as_str().hash(h),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pod: &str, user: Option<&str>) -> Vec<KeyValue> {
        let mut v = vec![KeyValue::new("k8s.pod.name", Arc::<str>::from(pod)), KeyValue::new("n", 3)];
        if let Some(u) = user {
            v.push(KeyValue::new("user.name", u.to_owned()));
        }
        v
    }

    #[test]
    fn equal_lists_are_one_and_different_ones_are_not() {
        let s = SharedAttrs::default();
        let a = s.share(attrs("api-1", None));
        let b = s.share(attrs("api-1", None));
        let c = s.share(attrs("api-2", None));
        let d = s.share(attrs("api-1", Some("alice")));
        assert!(Arc::ptr_eq(&a, &b), "the same container's sessions share one list");
        assert!(!Arc::ptr_eq(&a, &c) && !Arc::ptr_eq(&a, &d));
        assert_eq!(*c, *attrs("api-2", None), "a list is kept as it was given");
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn a_list_no_session_holds_is_forgotten_at_the_next_sweep() {
        let s = SharedAttrs::default();
        let kept = s.share(attrs("kept", None));
        for i in 0..MIN_SWEEP {
            drop(s.share(attrs(&format!("gone-{i}"), None)));
        }
        // the 65th list swept the 63 nobody holds before it was added
        assert_eq!(s.len(), 2);
        assert!(Arc::ptr_eq(&kept, &s.share(attrs("kept", None))), "a held list stays shared");
    }
}
