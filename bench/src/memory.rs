//! Peak memory of a process, from the kernel's own high-water mark.

pub use citypop_tests::peak_rss_bytes;
