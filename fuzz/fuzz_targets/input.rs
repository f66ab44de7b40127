//! What the structured fuzz targets read their input with: a byte at a time, zeros past its end (shared
//! by `fetch_stream` and `produce_stream` through `#[path]`).

/// Reads the input a byte at a time, zeros past its end.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
}

/// `body` cut into chunks of 1 to 256 bytes whose sizes vary along the way from `seed`, as a relay's
/// reads cut what it relays.
pub fn chunks(body: &[u8], seed: u8) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    let mut step = seed as usize;
    std::iter::from_fn(move || {
        if at >= body.len() {
            return None;
        }
        step = (step * 31 + 7) % 256;
        let end = (at + 1 + step).min(body.len());
        let chunk = &body[at..end];
        at = end;
        Some(chunk)
    })
}
