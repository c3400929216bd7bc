//! A background producer for the loaders: items are made on their own thread one step ahead of
//! the training loop, so decoding and augmenting overlap with the model's forward and backward.

use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// Items made on a background thread, `ahead` of the consumer; stops at the first error (which
/// it yields) and when dropped (the thread finishes the item in hand and ends).
pub struct Prefetch<T> {
    rx: Option<Receiver<Result<T>>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl<T: Send + 'static> Prefetch<T> {
    /// Runs `make(0)`, …, `make(n − 1)` on a new thread.
    pub fn spawn<F>(n: usize, ahead: usize, mut make: F) -> Self
    where
        F: FnMut(usize) -> Result<T> + Send + 'static,
    {
        // A rendezvous channel (capacity 0) already lets the thread finish one item ahead.
        let (tx, rx) = sync_channel(ahead.max(1) - 1);
        let handle = std::thread::Builder::new()
            .name("anomalyncd-prefetch".into())
            .spawn(move || {
                for i in 0..n {
                    let item = make(i);
                    let failed = item.is_err();
                    if tx.send(item).is_err() || failed {
                        break;
                    }
                }
            });
        match handle {
            Ok(h) => Self {
                rx: Some(rx),
                handle: Some(h),
                remaining: n,
            },
            Err(e) => {
                // No thread: yield the reason once.
                let (tx, rx) = sync_channel(1);
                let _ = tx.send(Err(Error::runtime(format!(
                    "cannot start the prefetch thread: {e}"
                ))));
                Self {
                    rx: Some(rx),
                    handle: None,
                    remaining: 1,
                }
            }
        }
    }
}

impl<T> Prefetch<T> {
    fn stop(&mut self) -> bool {
        self.rx = None;
        self.remaining = 0;
        self.handle.take().is_some_and(|h| h.join().is_err())
    }
}

impl<T> Iterator for Prefetch<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        let received = self.rx.as_ref()?.recv();
        match received {
            Ok(item) => {
                self.remaining = self.remaining.saturating_sub(1);
                if item.is_err() || self.remaining == 0 {
                    self.stop();
                }
                Some(item)
            }
            Err(_) => {
                let short = self.remaining > 0;
                let panicked = self.stop();
                (panicked || short).then(|| {
                    Err(Error::runtime(
                        "the data loading thread stopped early; this is a bug in anomalyncd",
                    ))
                })
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

impl<T> Drop for Prefetch<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_yields_in_order_and_stops_at_the_first_error() {
        let got: Vec<_> = Prefetch::spawn(5, 2, Ok).map(|r| r.unwrap()).collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        let mut it = Prefetch::spawn(5, 1, |i| {
            if i == 2 {
                Err(Error::runtime("boom"))
            } else {
                Ok(i)
            }
        });
        assert_eq!(it.next().unwrap().unwrap(), 0);
        assert_eq!(it.next().unwrap().unwrap(), 1);
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }

    #[test]
    fn dropping_a_prefetch_early_ends_its_thread() {
        let mut it = Prefetch::spawn(1000, 1, |i| Ok(vec![i; 1000]));
        assert_eq!(it.next().unwrap().unwrap()[0], 0);
        drop(it); // joins; a hang here fails the test by timeout
    }

    #[test]
    fn a_panicking_producer_is_reported() {
        let mut it =
            Prefetch::<usize>::spawn(3, 1, |i| if i == 1 { panic!("decoder bug") } else { Ok(i) });
        assert_eq!(it.next().unwrap().unwrap(), 0);
        assert!(it
            .next()
            .unwrap()
            .unwrap_err()
            .to_string()
            .contains("stopped early"));
        assert!(it.next().is_none());
    }
}
