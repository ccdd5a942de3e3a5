//! Running a whole forward on rayon's pool with the other workers kept awake.

use std::sync::atomic::{AtomicBool, Ordering};

/// Sets the flag when dropped (also when the forward panics, so the helpers always stop).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `f` on a thread of rayon's pool while every other worker stays awake, taking the work
/// `f`'s parallel kernels hand out as soon as it appears.
///
/// A forward makes a few hundred parallel calls with a little serial work between them (norms,
/// RoPE, the KV cache); idle rayon workers go to sleep within microseconds, and waking one costs a
/// system call and a scheduling delay that left the first chunks of every kernel to the calling
/// thread. Here the other workers poll for work (`rayon::yield_now`) until `f` returns, so they
/// burn their cores for the forward's duration: meant for a machine whose cores serve the
/// generation. A helper that lands on `f`'s own thread (while `f` waits inside a parallel call)
/// returns at once, so `f` never waits for itself.
///
/// ```
/// let sum: u64 = specula_kernels::on_hot_pool(|| {
///     use rayon::prelude::*;
///     (0..1000u64).into_par_iter().sum()
/// });
/// assert_eq!(sum, 499_500);
/// ```
pub fn on_hot_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let done = AtomicBool::new(false);
    let helpers = rayon::current_num_threads().saturating_sub(1);
    rayon::scope(|s| {
        let home = rayon::current_thread_index();
        for _ in 0..helpers {
            let done = &done;
            s.spawn(move |_| {
                if rayon::current_thread_index() == home {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let _stop = SetOnDrop(&done);
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn work(seed: u64) -> u64 {
        (0..20_000u64).into_par_iter().map(|i| i ^ seed).sum()
    }

    /// Concurrent callers, nested calls and a panicking forward all finish (no helper waits for
    /// its own thread, every helper stops).
    #[test]
    fn concurrent_nested_and_panicking_calls_finish() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            let want: Vec<u64> = (0..4).map(work).collect();
            std::thread::scope(|s| {
                for (t, want) in want.iter().enumerate() {
                    s.spawn(move || {
                        for _ in 0..20 {
                            let got = on_hot_pool(|| on_hot_pool(|| work(t as u64)));
                            assert_eq!(got, *want);
                        }
                    });
                }
            });
            let r = std::panic::catch_unwind(|| on_hot_pool(|| panic!("forward failed")));
            assert!(r.is_err());
            assert_eq!(on_hot_pool(|| work(1)), want[1]);
        });
    }
}
