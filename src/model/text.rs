//! [`Text`]: a container's names and ids, shared by reference count.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Serialize, Serializer};

/// Text shared by reference count: a container's names and ids, held by the process stage's
/// container table, the pod filter's enriched copy and every span attribute built from them,
/// one allocation for all (issue 15). Reads, compares, hashes, prints and serializes as the
/// string it holds.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text(Arc<str>);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string itself (a count, no copy): what a span attribute holds.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }

    /// `s` as text many containers of a node carry alike (their node, namespace, image,
    /// workload, label keys and values): the string an equal one already held somewhere has,
    /// else a new one, remembered for the next (issue 15: with one container per session, a
    /// container's own copy of each was a sixth of the session's bytes). Not for what differs
    /// per container (its id, its pod's name and uid): those would only fill the table.
    pub fn common(s: &str) -> Text {
        let mut t = COMMON.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(have) = t.texts.get(s) {
            return have.clone();
        }
        if t.texts.len() >= t.sweep_at {
            // a string only the table holds belongs to no container any more
            t.texts.retain(|x| Arc::strong_count(&x.0) > 1);
            t.sweep_at = (2 * t.texts.len()).max(MIN_SWEEP);
        }
        let new = Text::from(s);
        t.texts.insert(new.clone());
        new
    }
}

/// The strings [`Text::common`] hands out. Keyed by their text, which the cluster's users
/// choose: std's keyed SipHash. A string nobody else holds is forgotten at the next sweep (when
/// the table has doubled since the last), so it holds at most about twice the distinct ones
/// in use.
#[derive(Default)]
struct Common {
    texts: HashSet<Text>,
    sweep_at: usize,
}

/// Fewest strings before the first sweep.
const MIN_SWEEP: usize = 256;

static COMMON: LazyLock<Mutex<Common>> = LazyLock::new(Default::default);

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(s.into())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(s.into())
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Self {
        Text(s.as_str().into())
    }
}

impl From<Arc<str>> for Text {
    fn from(s: Arc<str>) -> Self {
        Text(s)
    }
}

impl From<Text> for String {
    fn from(t: Text) -> Self {
        t.0.as_ref().to_owned()
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, o: &str) -> bool {
        &*self.0 == o
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, o: &&str) -> bool {
        &*self.0 == *o
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, o: &String) -> bool {
        *self.0 == **o
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, o: &Text) -> bool {
        self == &*o.0
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, o: &Text) -> bool {
        *self == &*o.0
    }
}

impl PartialEq<Text> for String {
    fn eq(&self, o: &Text) -> bool {
        **self == *o.0
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_text_is_one_string_while_held_and_forgotten_after() {
        let a = Text::common("node-common-test-1");
        let b = Text::common(&String::from("node-common-test-1"));
        assert!(std::ptr::eq(a.as_ptr(), b.as_ptr()), "equal text is one string");
        assert_eq!(a, "node-common-test-1");
        let c = Text::common("node-common-test-2");
        assert!(!std::ptr::eq(a.as_ptr(), c.as_ptr()));
        drop(c);
        // enough others to pass a sweep: the one still held stays shared
        let many: Vec<Text> = (0..2 * MIN_SWEEP).map(|i| Text::common(&format!("common-test-{i}"))).collect();
        drop(many);
        for i in 0..4 * MIN_SWEEP {
            drop(Text::common(&format!("common-test-gone-{i}")));
        }
        let held = COMMON.lock().unwrap().texts.len();
        assert!(held < 4 * MIN_SWEEP, "the strings nobody holds are swept: {held}");
        assert!(std::ptr::eq(a.as_ptr(), Text::common("node-common-test-1").as_ptr()));
    }
}
