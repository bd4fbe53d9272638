import MMCore
import MMSync
import NativeBaselines

extension BenchSuite {
    /// Swap figures (issue 15):
    /// - MADV_PAGEOUT of a populated region and a read of every page back (one load per page:
    ///   a major fault each), against `memcpy` of the same bytes twice — the copies swap-out and
    ///   swap-in make to and from a ramdisk area, the physical limit of this round trip;
    /// - one CPU thread writing and then reading a working set four times RAM (one access per
    ///   page), against the same two passes on a machine with enough RAM: what reclaim (direct,
    ///   from the faulting thread) and swap-in cost on top of the faults themselves.
    func swapFigures() throws -> [BenchRow] {
        let bytes: UInt64 = quick ? 16 << 20 : 1 << 30
        let pages = bytes / pageSize
        let (round, copy) = try measurePair(reps, { () throws -> Double in
            let m = try Machine(memoryBytes: bytes + bytes / 32 + (64 << 20), devicePfnSpaceBytes: 0,
                                swapBytes: bytes + (16 << 20), populateRAM: true)
            let p = try MMCore.Process(machine: m)
            let cpu = p.makeCPU()
            defer { cpu.detach(); p.exit() }
            let a = try p.mmap(length: bytes, prot: .readWrite, flags: [.private, .anonymous])
            try cpu.run { cpu in
                var off: UInt64 = 0
                while off < bytes { try cpu.store(a + off, UInt64(off)); off += pageSize }
            }
            let t = try seconds {
                try p.madvise(a, length: bytes, advice: .pageout)
                try cpu.run { cpu in
                    var off: UInt64 = 0
                    while off < bytes { _ = try cpu.load(a + off, as: UInt64.self); off += pageSize }
                }
            }
            guard m.stats[.pswpout] == Int(pages), m.stats[.pswpin] == Int(pages) else {
                throw BenchError(description: "swapped out \(m.stats[.pswpout]) and in \(m.stats[.pswpin]) of \(pages) pages")
            }
            return Double(2 * bytes) / t / 1e9
        }, { () throws -> Double in memcpyRate(bytes, copies: 2) })

        let ram: UInt64 = quick ? 16 << 20 : 256 << 20
        let set = 4 * ram
        func stream(memory: UInt64, swap: UInt64) throws -> Double {
            let m = try Machine(memoryBytes: memory, devicePfnSpaceBytes: 0, swapBytes: swap, populateRAM: true)
            let p = try MMCore.Process(machine: m)
            let cpu = p.makeCPU()
            defer { cpu.detach(); p.exit() }
            let a = try p.mmap(length: set, prot: .readWrite, flags: [.private, .anonymous])
            let t = try seconds {
                try cpu.run { cpu in
                    var off: UInt64 = 0
                    while off < set { try cpu.store(a + off, UInt64(off)); off += pageSize }
                    off = 0
                    while off < set {
                        guard try cpu.load(a + off, as: UInt64.self) == off else { throw BenchError(description: "bad bytes at \(off)") }
                        off += pageSize
                    }
                }
            }
            return t / Double(2 * set / pageSize) * 1e9
        }
        let (tight, roomy) = try measurePair(reps, { () throws -> Double in try stream(memory: ram, swap: set) },
                                             { () throws -> Double in try stream(memory: set + set / 32 + (64 << 20), swap: 0) })
        return [
            BenchRow(name: "MADV_PAGEOUT + swap-in of \(bytes >> 20)MiB vs memcpy twice", unit: "GB/s", value: round.median,
                     baseline: copy.median, spread: (round.min, round.max), kind: .rate, target: 0.5),
            BenchRow(name: "write + read of 4x RAM (\(set >> 20)MiB on \(ram >> 20)MiB) vs enough RAM", unit: "ns/page", value: tight.median,
                     baseline: roomy.median, spread: (tight.min, tight.max), kind: .time, target: 3.0),
        ]
    }
}
