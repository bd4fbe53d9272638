/// Memory for a word CPUs write often: on cache lines of its own, so that its writes do not
/// steal the line of data read beside it (false sharing). The kernel marks such fields
/// `____cacheline_aligned_in_smp`; a Swift object cannot choose its alignment, so the word lives
/// in a block from here instead of in the object.
public enum CacheLine {
    /// The separation: two 64-byte lines, because x86's adjacent-line prefetcher fetches lines
    /// in pairs (folly's `hardware_destructive_interference_size` is 128 on x86-64 for this reason).
    public static let separation = 128

    /// `byteCount` zeroed bytes, aligned to and padded out to `separation`. Free with `deallocate()`.
    public static func allocate(byteCount: Int) -> UnsafeMutableRawPointer {
        let n = (max(byteCount, 1) + separation - 1) & ~(separation - 1)
        let p = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: separation)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: n)
        return p
    }
}
