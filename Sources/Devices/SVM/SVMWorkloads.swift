import MMCore

/// Kernels that model GPU workloads, each with the reference result a test can check.
public enum SVMWorkload {
    /// Words per block of a grid-stride loop: engine e takes blocks e, e + count, … (a warp's
    /// coalesced 512 bytes).
    public static let blockWords = 64

    /// Stream: every word of [base, base + words × 8) becomes `stream(old)` (a read and a
    /// write each), the engines taking blocks of 64 words in turn.
    public static func stream(base: UInt64, words: Int) -> SVMKernel {
        SVMKernel(name: "stream") { (e: SVMEngine) throws(SVMFatalFault) in
            var block = e.index
            while block * blockWords < words {
                let first = block * blockWords
                for i in first..<min(first + blockWords, words) {
                    let a = base + UInt64(i) * 8
                    try e.store(a, stream(try e.load(a)))
                }
                block += e.count
            }
        }
    }

    /// What `stream` makes of one word.
    @inlinable public static func stream(_ old: UInt64) -> UInt64 { old &* 3 &+ 1 }

    /// Counter: each engine adds 1 to the word at `address` `adds` times, atomically.
    public static func counter(address: UInt64, adds: Int) -> SVMKernel {
        SVMKernel(name: "counter") { (e: SVMEngine) throws(SVMFatalFault) in
            for _ in 0..<adds { try e.atomicAdd(address, 1) }
        }
    }

    /// Touch: each engine reads one word of every page of [base, base + pages × 4096) that is
    /// its own (page p belongs to engine p % count), and writes `value` to it if `write`.
    public static func touch(base: UInt64, pages: Int, write: Bool, value: UInt64 = 0) -> SVMKernel {
        SVMKernel(name: "touch") { (e: SVMEngine) throws(SVMFatalFault) in
            for p in stride(from: e.index, to: pages, by: e.count) {
                let a = base + UInt64(p) * pageSize
                if write { try e.store(a, value) } else { _ = try e.load(a) }
            }
        }
    }
}
