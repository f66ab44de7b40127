//! Labels whose values come from the network, bounded: the first `max` distinct values are kept, every
//! later one becomes [`OTHER_LABEL`].

pub use super::contract::OTHER_LABEL;

/// A label whose first `max` distinct values are kept and every later one becomes [`OTHER_LABEL`]: the
/// bound on series whose label values come from the network (topics, routes, destinations).
pub struct BoundedLabel {
    max: usize,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl BoundedLabel {
    pub fn new(max: usize) -> BoundedLabel {
        BoundedLabel {
            max,
            seen: Default::default(),
        }
    }

    /// `value` itself if it is among the first `max` distinct values, else `_other`.
    pub fn label(&self, value: &str) -> String {
        let mut seen = self.seen.lock().expect("label lock");
        if seen.contains(value) || (seen.len() < self.max && seen.insert(value.to_string())) {
            value.to_string()
        } else {
            OTHER_LABEL.to_string()
        }
    }
}
