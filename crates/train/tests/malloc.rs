//! `sorbier_train::malloc` on the main thread, where the trainer's step allocates: a 64 MiB
//! block (twice glibc's largest mmap threshold) freed and allocated again is faulted in anew
//! with glibc's defaults, and not once the tuning is on. A test without the libtest harness
//! (`harness = false`), since libtest runs tests on spawned threads.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    use sorbier_train::malloc::{tune_for_tensors, Tuning, ENV};

    fn minor_faults() -> i64 {
        // SAFETY: getrusage writes into the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) }, 0);
        u.ru_minflt
    }
    /// Page faults of allocating, writing and freeing 64 MiB (16384 pages of 4 KiB).
    fn touch_64_mib() -> i64 {
        let before = minor_faults();
        let mut v = vec![0u8; 64 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&v);
        drop(v);
        minor_faults() - before
    }
    const PAGES: i64 = 16384;

    // Single-threaded here, so setting the environment is sound.
    std::env::set_var(ENV, "default");
    assert_eq!(tune_for_tensors().unwrap(), Tuning::Default);
    touch_64_mib();
    let untuned = touch_64_mib();
    assert!(untuned > PAGES / 2, "glibc's defaults: {untuned} page faults for a reused 64 MiB block; expected a fresh mapping");

    std::env::set_var(ENV, "bogus");
    let err = tune_for_tensors().unwrap_err().to_string();
    assert!(err.contains("SORBIER_MALLOC=\"bogus\""), "{err}");

    std::env::remove_var(ENV);
    assert_eq!(tune_for_tensors().unwrap(), Tuning::Retain);
    touch_64_mib(); // the main heap grows once
    let tuned = touch_64_mib();
    assert!(tuned < PAGES / 16, "tuned: {tuned} page faults for a 64 MiB block that was freed and reused");
    println!("malloc: reused 64 MiB block, {untuned} page faults with glibc's defaults, {tuned} tuned: ok");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    println!("malloc: not glibc, nothing to check");
}
