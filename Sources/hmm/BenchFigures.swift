import Conformance
import Devices
import HMM
import MMCore
import MMSync
import NativeBaselines

struct BenchFigure {
    let name: String
    let run: (inout BenchSuite) throws -> [BenchRow]
}

struct BenchError: Error, CustomStringConvertible { let description: String }

/// The figures of issue 5, sized by `quick`.
struct BenchSuite {
    let quick: Bool
    /// Repetitions per figure; `--reps` overrides the default (1 quick, 5 full), e.g. to profile one figure.
    let reps: Int
    var big: UInt64 { quick ? 16 << 20 : 1 << 30 }          // "1 GiB"
    var migrateBytes: UInt64 { quick ? 8 << 20 : 256 << 20 }

    init(quick: Bool, reps: Int? = nil) { self.quick = quick; self.reps = max(1, reps ?? (quick ? 1 : 5)) }

    var figures: [BenchFigure] {
        [
            BenchFigure(name: "tlb-hit", run: { try $0.tlbHit() }),
            BenchFigure(name: "walk", run: { try $0.walk() }),
            BenchFigure(name: "anon-fault", run: { try $0.anonFault() }),
            BenchFigure(name: "cow-fault", run: { try $0.cowFault() }),
            BenchFigure(name: "mprotect", run: { try $0.mprotectFigure() }),
            BenchFigure(name: "map-count", run: { try $0.mapCountFigure() }),
            BenchFigure(name: "fork", run: { try $0.forkFigure() }),
            BenchFigure(name: "thp", run: { try $0.thpFigures() }),
            BenchFigure(name: "range-fault", run: { try $0.rangeFault() }),
            BenchFigure(name: "migrate", run: { try $0.migrate() }),
            BenchFigure(name: "thp-migrate", run: { try $0.thpMigrate() }),
            BenchFigure(name: "device-read", run: { try $0.deviceRead() }),
            BenchFigure(name: "memory", run: { try $0.memoryFigures() }),
            BenchFigure(name: "scaling", run: { try $0.scaling() }),
            BenchFigure(name: "fault-threads", run: { try $0.faultThreads() }),
            BenchFigure(name: "lockdep", run: { try $0.lockdepFigures() }),
            BenchFigure(name: "explorer", run: { try $0.explorerFigures() }),
            BenchFigure(name: "latency", run: { try $0.latencyFigures() }),
            BenchFigure(name: "swap", run: { try $0.swapFigures() }),
            BenchFigure(name: "svm", run: { try $0.svmFigures() }),
            BenchFigure(name: "multi-device", run: { try $0.multiDeviceFigures() }),
            BenchFigure(name: "odp", run: { try $0.odpFigures() }),
        ]
    }

    /// A machine with `bytes` of RAM plus room, a process and a CPU, and a populated region.
    func populated(_ bytes: UInt64, extraMiB: UInt64 = 64) throws -> (Machine, MMCore.Process, CPU, UInt64) {
        let m = try Machine(memoryBytes: bytes + bytes / 32 + (extraMiB << 20), devicePfnSpaceBytes: 2 << 30, populateRAM: true)
        let p = try MMCore.Process(machine: m)
        let cpu = p.makeCPU()
        let a = try p.mmap(length: bytes, prot: .readWrite, flags: [.private, .anonymous])
        try cpu.run { cpu in
            var off: UInt64 = 0
            while off < bytes { try cpu.store(a + off, UInt64(off)); off += pageSize }
        }
        return (m, p, cpu, a)
    }

    func release(_ p: MMCore.Process, _ cpu: CPU) { cpu.detach(); p.exit() }

    // MARK: CPU access

    func addresses(_ base: UInt64, _ bytes: UInt64, random: Bool, count: Int) -> [UInt64] {
        var rng = SeededRNG(seed: 9)
        let words = bytes / 8
        return (0..<count).map { i in base + (random ? rng.next() % words : UInt64(i) % words) * 8 }
    }

    func tlbHit() throws -> [BenchRow] {
        var rows: [BenchRow] = []
        for (label, bytes) in [("1MiB", UInt64(1 << 20)), (quick ? "16MiB" : "1GiB", big)] {
            let (m, p, cpu, a) = try populated(bytes)
            let fb = m.memory.frame(0), pgd = p.mm.pageTable.pgd.pfn
            for random in [false, true] {
                let n = quick ? 1 << 18 : 1 << 22
                let addrs = addresses(a, bytes, random: random, count: n)
                var sink: UInt64 = 0
                let (swift, base) = try measurePair(reps, { () throws -> Double in
                    try seconds {
                        sink &+= try cpu.withUserAccess { u in
                            var s: UInt64 = 0
                            for x in addrs { s &+= try u.load(x, as: UInt64.self) }
                            return s
                        }
                    } / Double(n) * 1e9
                }, { () throws -> Double in
                    addrs.withUnsafeBufferPointer { b in seconds { sink &+= nb_tlb_loads(fb, pgd, b.baseAddress, b.count, 1) } } / Double(n) * 1e9
                })
                blackHole(sink)
                rows.append(BenchRow(name: "CPU load, \(random ? "random" : "sequential"), \(label)", unit: "ns/load", value: swift.median,
                                     baseline: base.median, spread: (swift.min, swift.max), kind: .time, target: 1.5))
            }
            let n = quick ? 1 << 18 : 1 << 22
            let addrs = addresses(a, bytes, random: false, count: n)
            let (swift, base) = try measurePair(reps, { () throws -> Double in
                try seconds {
                    try cpu.withUserAccess { u in for (i, x) in addrs.enumerated() { try u.store(x, UInt64(i)) } }
                } / Double(n) * 1e9
            }, { () throws -> Double in addrs.withUnsafeBufferPointer { b in seconds { nb_tlb_stores(fb, pgd, b.baseAddress, b.count, 1, 1) } } / Double(n) * 1e9 })
            rows.append(BenchRow(name: "CPU store, sequential, \(label)", unit: "ns/store", value: swift.median, baseline: base.median,
                                 spread: (swift.min, swift.max), kind: .time, target: 1.5))
            release(p, cpu)
        }
        return rows
    }

    func walk() throws -> [BenchRow] {
        let bytes = big
        let (m, p, cpu, a) = try populated(bytes)
        let fb = m.memory.frame(0), pgd = p.mm.pageTable.pgd.pfn
        // One load per page, pages in random order: every access misses the 256-entry TLB.
        var rng = SeededRNG(seed: 5)
        let pages = bytes / pageSize
        let n = Int(min(pages, quick ? 1 << 14 : 1 << 18))
        let addrs = (0..<n).map { _ in a + (rng.next() % pages) * pageSize }
        var sink: UInt64 = 0
        let (swift, base) = try measurePair(reps, { () throws -> Double in
            try seconds { sink &+= try cpu.withUserAccess { u in
                var s: UInt64 = 0
                for x in addrs { s &+= try u.load(x, as: UInt64.self) }
                return s
            } } / Double(n) * 1e9
        }, { () throws -> Double in addrs.withUnsafeBufferPointer { b in seconds { sink &+= nb_tlb_loads(fb, pgd, b.baseAddress, b.count, 1) } } / Double(n) * 1e9 })
        blackHole(sink)
        release(p, cpu)
        return [BenchRow(name: "page-table walk on TLB miss (random pages, \(quick ? "16MiB" : "1GiB"))", unit: "ns/miss", value: swift.median,
                         baseline: base.median, spread: (swift.min, swift.max), kind: .time, target: 1.5)]
    }

    // MARK: faults and system calls

    func swiftAnonFaultNs(_ bytes: UInt64) throws -> Double {
        let m = try Machine(memoryBytes: bytes + bytes / 32 + (64 << 20), devicePfnSpaceBytes: 0, populateRAM: true)
        let p = try MMCore.Process(machine: m)
        let cpu = p.makeCPU()
        defer { cpu.detach(); p.exit() }
        let a = try p.mmap(length: bytes, prot: .readWrite, flags: [.private, .anonymous])
        return try seconds {
            try cpu.run { cpu in
                var off: UInt64 = 0
                while off < bytes { try cpu.store(a + off, UInt8(1)); off += pageSize }
            }
        } / Double(bytes / pageSize) * 1e9
    }

    func anonFault() throws -> [BenchRow] {
        let (swift, base) = try measurePair(reps, { () throws -> Double in try swiftAnonFaultNs(big) }, { () throws -> Double in
            let t = nb_host_anon_fault(Int(big))
            guard t >= 0 else { throw BenchError(description: "host mmap failed") }
            return t / Double(big / pageSize) * 1e9
        })
        return [BenchRow(name: "anonymous write fault, \(quick ? "16MiB" : "1GiB") page by page", unit: "ns/fault", value: swift.median,
                         baseline: base.median, spread: (swift.min, swift.max), kind: .time, target: 0.5)]
    }

    func cowFault() throws -> [BenchRow] {
        let bytes = quick ? UInt64(16 << 20) : UInt64(256 << 20)
        let (swift, base) = try measurePair(reps, { () throws -> Double in
            let (_, p, cpu, a) = try populated(bytes, extraMiB: 64 + bytes >> 20)
            let child = try p.fork()
            let t = try seconds {
                try cpu.run { cpu in
                    var off: UInt64 = 0
                    while off < bytes { try cpu.store(a + off, UInt8(2)); off += pageSize }
                }
            }
            child.exit(); release(p, cpu)
            return t / Double(bytes / pageSize) * 1e9
        }, { () throws -> Double in
            let t = nb_host_cow_fault(Int(bytes))
            guard t >= 0 else { throw BenchError(description: "host fork failed") }
            return t / Double(bytes / pageSize) * 1e9
        })
        return [BenchRow(name: "copy-on-write fault after fork, \(bytes >> 20)MiB", unit: "ns/fault", value: swift.median, baseline: base.median,
                         spread: (swift.min, swift.max), kind: .time, target: 0.5)]
    }

    func mprotectFigure() throws -> [BenchRow] {
        let m = try Machine(memoryBytes: 64 << 20, devicePfnSpaceBytes: 0, populateRAM: true)
        let p = try MMCore.Process(machine: m)
        let cpu = p.makeCPU()
        defer { cpu.detach(); p.exit() }
        let a = try p.mmap(length: pageSize, prot: .readWrite, flags: [.private, .anonymous])
        try cpu.store(a, UInt8(1))
        let n = quick ? 10_000 : 200_000
        let (swift, base) = try measurePair(reps, { () throws -> Double in
            try seconds { for i in 0..<n { try p.mprotect(a, length: pageSize, prot: i & 1 == 0 ? .read : .readWrite) } } / Double(n) * 1e9
        }, { () throws -> Double in nb_host_mprotect(Int32(n)) / Double(n) * 1e9 })
        return [BenchRow(name: "mprotect of one 4KiB page", unit: "ns/call", value: swift.median, baseline: base.median,
                         spread: (swift.min, swift.max), kind: .time, target: 0.5)]
    }

    /// The cost of one more mapping once an address space has many (VMAs in a balanced tree,
    /// with the gaps kept per subtree for the free-range search): one-page mmaps with
    /// alternating protections (so none merge), timed over mappings 1,000–1,999 and over the
    /// last 1,000 up to number 100,000 (20,000 with --quick); the host's mmap of one page
    /// (1,000 of them, same pattern) is the other baseline.
    func mapCountFigure() throws -> [BenchRow] {
        let n = quick ? 20_000 : 100_000, window = 1_000
        var early: [Double] = [], late: [Double] = [], host: [Double] = []
        for _ in 0..<reps {
            let m = try Machine(memoryBytes: 64 << 20, devicePfnSpaceBytes: 0)
            m.maxMapCount = n + window
            let p = try MMCore.Process(machine: m)
            var i = 0
            func map(_ count: Int) throws -> Double {
                try seconds {
                    for _ in 0..<count {
                        _ = try p.mmap(length: pageSize, prot: i & 1 == 0 ? .read : .readWrite, flags: [.private, .anonymous])
                        i += 1
                    }
                } / Double(count) * 1e9
            }
            _ = try map(window - 1)
            early.append(try map(window))
            _ = try map(n - window - i)
            late.append(try map(window))
            guard p.mm.vmaCount == n else { throw BenchError(description: "expected \(n) VMAs, got \(p.mm.vmaCount)") }
            p.exit()
            let h = nb_host_mmap(Int32(window))
            guard h >= 0 else { throw BenchError(description: "host mmap failed") }
            host.append(h / Double(window) * 1e9)
        }
        func stat(_ v: [Double]) -> (Double, Double, Double) { let s = v.sorted(); return (s[s.count / 2], s[0], s[s.count - 1]) }
        let (l, lmin, lmax) = stat(late), (e, _, _) = stat(early), (h, _, _) = stat(host)
        return [
            BenchRow(name: "mmap of one page, mapping \(n) vs mapping 1,000", unit: "ns/call", value: l, baseline: e,
                     spread: (lmin, lmax), kind: .time, target: 2),
            BenchRow(name: "mmap of one page at \(n) VMAs vs the host's mmap", unit: "ns/call", value: l, baseline: h,
                     spread: (lmin, lmax), kind: .time, target: 0.5),
        ]
    }

    func forkFigure() throws -> [BenchRow] {
        let bytes = big
        let (swift, base) = try measurePair(reps, { () throws -> Double in
            let (_, p, cpu, _) = try populated(bytes, extraMiB: 64 + bytes >> 20)
            var child: MMCore.Process? = nil
            let t = try seconds { child = try p.fork() }
            child?.exit(); release(p, cpu)
            return t * 1e3
        }, { () throws -> Double in
            let t = nb_host_fork(Int(bytes))
            guard t >= 0 else { throw BenchError(description: "host fork failed") }
            return t * 1e3
        })
        return [BenchRow(name: "fork with \(quick ? "16MiB" : "1GiB") touched", unit: "ms", value: swift.median, baseline: base.median,
                         spread: (swift.min, swift.max), kind: .time, target: 1.0)]
    }

    // MARK: transparent huge pages

    /// A machine with `bytes` of THP-eligible anonymous memory (MADV_HUGEPAGE, 2 MiB-aligned)
    /// in one process, not yet touched.
    func thpArea(_ bytes: UInt64) throws -> (MMCore.Process, CPU, UInt64) {
        let m = try Machine(memoryBytes: bytes + bytes / 16 + (64 << 20), devicePfnSpaceBytes: 0, populateRAM: true)
        let p = try MMCore.Process(machine: m)
        let cpu = p.makeCPU()
        let raw = try p.mmap(length: bytes + pmdSize, prot: .readWrite, flags: [.private, .anonymous])
        let a = (raw + pmdSize - 1) & pmdMask
        try p.madvise(a, length: bytes, advice: .hugePage)
        return (p, cpu, a)
    }

    /// Touches one byte per 2 MiB: every one a THP fault (checked).
    func touchTHP(_ p: MMCore.Process, _ cpu: CPU, _ a: UInt64, _ bytes: UInt64) throws {
        try cpu.run { cpu in
            var off: UInt64 = 0
            while off < bytes { try cpu.store(a + off, UInt8(1)); off += pmdSize }
        }
        guard p.machine.stats[.thpFaultAlloc] == Int(bytes / pmdSize) else {
            throw BenchError(description: "THP faults: \(p.machine.stats[.thpFaultAlloc]) of \(bytes / pmdSize) (fallback \(p.machine.stats[.thpFaultFallback]))")
        }
    }

    /// A 2 MiB anonymous THP write fault vs the host's own (MADV_HUGEPAGE on the host), and a
    /// fork of 1 GiB of THP vs the host's.
    func thpFigures() throws -> [BenchRow] {
        let bytes = big
        let label = quick ? "16MiB" : "1GiB"
        let (fault, faultBase) = try measurePair(reps, { () throws -> Double in
            let (p, cpu, a) = try thpArea(bytes)
            defer { release(p, cpu) }
            return try seconds { try touchTHP(p, cpu, a, bytes) } / Double(bytes / pmdSize) * 1e6
        }, { () throws -> Double in
            let t = nb_host_thp_fault(Int(bytes))
            guard t >= 0 else { throw BenchError(description: "host mmap failed") }
            return t / Double(bytes / pmdSize) * 1e6
        })
        let (fork, forkBase) = try measurePair(reps, { () throws -> Double in
            let (p, cpu, a) = try thpArea(bytes)
            try touchTHP(p, cpu, a, bytes)
            var child: MMCore.Process? = nil
            let t = try seconds { child = try p.fork() }
            child?.exit(); release(p, cpu)
            return t * 1e3
        }, { () throws -> Double in
            let t = nb_host_thp_fork(Int(bytes))
            guard t >= 0 else { throw BenchError(description: "host fork failed") }
            return t * 1e3
        })
        return [
            BenchRow(name: "THP anonymous write fault (2 MiB), \(label)", unit: "us/fault", value: fault.median, baseline: faultBase.median,
                     spread: (fault.min, fault.max), kind: .time, target: 0.5),
            BenchRow(name: "fork with \(label) of THP touched", unit: "ms", value: fork.median, baseline: forkBase.median,
                     spread: (fork.min, fork.max), kind: .time, target: 1.0),
        ]
    }

    /// A snapshot (no fault) of `bytes` populated memory through the canonical loop: ns per page.
    /// One `hmmRangeFault` snapshot of [a, a + bytes) through the driver loop; the driver's
    /// "programming" only keeps the result, so the time is the loop and the walk. Checked
    /// afterwards: every page came back valid.
    func rangeFaultNs(_ m: Machine, _ p: MMCore.Process, _ a: UInt64, _ bytes: UInt64) throws -> Double {
        let sub = MMUIntervalNotifier(start: a, end: a + bytes) { s, _, seq in s.setSeq(seq); return true }
        try p.mm.notifiers.insert(sub)
        defer { p.mm.notifiers.remove(sub) }
        let lock = Lock("bench")
        var range = HMMRange(notifier: sub, notifierSeq: 0, start: a, end: a + bytes)
        let t = try seconds { try HMMMirror.faultAndProgram(&range, driverLock: lock) { (_: HMMRange) throws(Errno) in } }
        let valid = range.hmmPfns.reduce(0) { $0 + (HMMPfn.isValid($1) ? 1 : 0) }
        guard valid == Int(bytes / pageSize) else { throw BenchError(description: "snapshot saw \(valid) valid pages") }
        return t / Double(bytes / pageSize) * 1e9
    }

    /// The limit of the snapshot: the same tables walked once by C (`nb_range_walk`), writing
    /// entries of the same format. Checked: every page came back valid.
    func cRangeWalkNs(_ m: Machine, _ p: MMCore.Process, _ a: UInt64, _ bytes: UInt64) throws -> Double {
        let n = Int(bytes / pageSize)
        var out = [UInt64](repeating: 0, count: n)
        let fb = m.memory.frame(0), pgd = p.mm.pageTable.pgd.pfn
        let t = out.withUnsafeMutableBufferPointer { b in seconds { _ = nb_range_walk(fb, pgd, a, a + bytes, b.baseAddress) } }
        let valid = out.reduce(0) { $0 + (HMMPfn.isValid($1) ? 1 : 0) }
        guard valid == n else { throw BenchError(description: "C range walk saw \(valid) valid pages") }
        return t / Double(n) * 1e9
    }

    func rangeFault() throws -> [BenchRow] {
        let bytes = big
        let (m, p, cpu, a) = try populated(bytes)
        defer { release(p, cpu) }
        // A snapshot takes milliseconds: three times the repetitions, for a steadier median.
        let (swift, base) = try measurePair(3 * reps, { () throws -> Double in try rangeFaultNs(m, p, a, bytes) },
                                            { () throws -> Double in try cRangeWalkNs(m, p, a, bytes) })
        return [BenchRow(name: "hmmRangeFault snapshot of \(quick ? "16MiB" : "1GiB") vs C range walk", unit: "ns/page", value: swift.median,
                         baseline: base.median, spread: (swift.min, swift.max), kind: .time, target: 1.5)]
    }

    // MARK: device

    /// GB/s of `copies` copies of `bytes` by `threads` C threads, counting `useful` bytes
    /// (default: every byte copied). Two threads are a device's limit (the driver and its
    /// copy engine).
    /// `streaming`: the copies swift-hmm's frame copies make (streaming stores), not memcpy's.
    func memcpyRate(_ bytes: UInt64, copies: Int, threads: Int = 1, useful: UInt64? = nil, streaming: Bool = false) -> Double {
        let src = UnsafeMutableRawPointer.allocate(byteCount: Int(bytes), alignment: 4096)
        let dst = UnsafeMutableRawPointer.allocate(byteCount: Int(bytes), alignment: 4096)
        defer { src.deallocate(); dst.deallocate() }
        memset(src, 1, Int(bytes)); memset(dst, 2, Int(bytes))
        let t = streaming ? nb_stream_copy_parallel(dst, src, Int(bytes), Int32(copies), Int32(threads))
              : threads == 1 ? nb_memcpy(dst, src, Int(bytes), Int32(copies))
                             : nb_memcpy_parallel(dst, src, Int(bytes), Int32(copies), Int32(threads))
        return Double(useful ?? bytes * UInt64(copies)) / t / 1e9
    }

    /// A populated region of `migrateBytes` with dmirror device 0 open on it.
    func deviceSetup(extraMiB: UInt64) throws -> (MMCore.Process, CPU, UInt64, Dmirror, DmirrorBuffer) {
        let (m, p, cpu, a) = try populated(migrateBytes, extraMiB: extraMiB)
        let d = try DmirrorModule(machine: m).open(minor: 0, mm: p.mm)
        return (p, cpu, a, d, DmirrorBuffer(size: Int(migrateBytes)))
    }

    /// One MIGRATE_TO_DEV + MIGRATE_TO_SYS of [a, a + bytes), checked (every page to the
    /// device; `entriesBack` entries back: a THP counts once), as GB/s of both migrations.
    func migrationRoundTrip(_ d: Dmirror, _ buf: DmirrorBuffer, _ a: UInt64, bytes: UInt64, entriesBack: UInt64) throws -> Double {
        let npages = bytes / pageSize
        let t = try seconds {
            var c = DmirrorCmd(addr: a, npages: npages)
            try d.ioctl(.migrateToDevice, &c, buffer: buf)
            guard c.cpages == npages else { throw BenchError(description: "migrated \(c.cpages) of \(npages)") }
            c = DmirrorCmd(addr: a, npages: npages)
            try d.ioctl(.migrateToSystem, &c)
            guard c.cpages == entriesBack else { throw BenchError(description: "migrated back \(c.cpages) entries of \(entriesBack)") }
        }
        return Double(2 * bytes) / t / 1e9
    }

    func migrate() throws -> [BenchRow] {
        let bytes = migrateBytes
        let (p, cpu, a, d, buf) = try deviceSetup(extraMiB: 64 + 2 * (bytes >> 20))
        defer { d.close(); release(p, cpu) }
        let npages = bytes / pageSize
        let (swift, base) = try measurePair(reps, { () throws -> Double in
            try migrationRoundTrip(d, buf, a, bytes: bytes, entriesBack: npages)
        }, { () throws -> Double in memcpyRate(bytes, copies: 2) })
        // The limit: the three copies the contract makes (to the device, the read-back, back to
        // system memory) by two threads, as a rate of the two migrations' bytes.
        let limit = spread((0..<reps).map { _ in memcpyRate(bytes, copies: 3, threads: 2, useful: 2 * bytes) })
        return [BenchRow(name: "dmirror MIGRATE_TO_DEV + MIGRATE_TO_SYS, \(bytes >> 20)MiB", unit: "GB/s", value: swift.median, baseline: base.median,
                         spread: (swift.min, swift.max), kind: .rate, target: 0.6),
                BenchRow(name: "  the same vs its limit: 3 copies by 2 threads", unit: "GB/s", value: swift.median, baseline: limit.median,
                         spread: (swift.min, swift.max), kind: .rate, target: 0.5)]
    }

    /// T38's comparison: the same bytes of THP (whole 2 MiB folios, device-private PMDs) and
    /// of 4 KiB pages, each migrated to dmirror device 0 and back; the figure is the THP round
    /// trip's rate, its baseline the 4 KiB round trip's, measured in the same run.
    func thpMigrate() throws -> [BenchRow] {
        let bytes = migrateBytes
        let m = try Machine(memoryBytes: 3 * bytes + bytes / 16 + (96 << 20), devicePfnSpaceBytes: 2 << 30, populateRAM: true)
        let p = try MMCore.Process(machine: m)
        let cpu = p.makeCPU()
        defer { release(p, cpu) }
        let raw = try p.mmap(length: bytes + pmdSize, prot: .readWrite, flags: [.private, .anonymous])
        let huge = (raw + pmdSize - 1) & pmdMask
        try p.madvise(huge, length: bytes, advice: .hugePage)
        let small = try p.mmap(length: bytes, prot: .readWrite, flags: [.private, .anonymous])
        try p.madvise(small, length: bytes, advice: .noHugePage)
        try cpu.run { cpu in
            var off: UInt64 = 0
            while off < bytes { try cpu.store(huge + off, off); try cpu.store(small + off, off); off += pageSize }
        }
        guard m.stats[.thpFaultAlloc] == Int(bytes / pmdSize) else { throw BenchError(description: "THP faults: \(m.stats[.thpFaultAlloc])") }
        let d = try DmirrorModule(machine: m).open(minor: 0, mm: p.mm)
        defer { d.close() }
        let buf = DmirrorBuffer(size: Int(bytes))
        // With each repetition, its limit: the three copies of the contract (to the device, the
        // read-back, back to system memory) as the model makes them (streaming stores), by two
        // threads (the driver's and the copy engine), timed beside the two round trips as the
        // host's bandwidth moves between runs. A round trip cannot beat its copies, so THP vs
        // 4 KiB cannot pass the limit over the 4 KiB figure (the first ratio over the second).
        var thpRates: [Double] = [], smallRates: [Double] = [], limitRates: [Double] = []
        for _ in 0..<max(reps, 1) {
            thpRates.append(try migrationRoundTrip(d, buf, huge, bytes: bytes, entriesBack: bytes / pmdSize))
            smallRates.append(try migrationRoundTrip(d, buf, small, bytes: bytes, entriesBack: bytes / pageSize))
            limitRates.append(memcpyRate(bytes, copies: 3, threads: 2, useful: 2 * bytes, streaming: true))
        }
        let thp = spread(thpRates), base = spread(smallRates), limit = spread(limitRates)
        return [BenchRow(name: "THP migration to the device and back vs 4 KiB pages, \(bytes >> 20)MiB", unit: "GB/s",
                         value: thp.median, baseline: base.median, spread: (thp.min, thp.max), kind: .rate, target: 2.0),
                BenchRow(name: "  THP round trip vs its limit: 3 streaming copies by 2 threads", unit: "GB/s",
                         value: thp.median, baseline: limit.median, spread: (thp.min, thp.max), kind: .rate, target: 0.7)]
    }

    func deviceRead() throws -> [BenchRow] {
        let bytes = migrateBytes
        let (p, cpu, a, d, buf) = try deviceSetup(extraMiB: 64)
        defer { d.close(); release(p, cpu) }
        let npages = bytes / pageSize
        var c = DmirrorCmd(addr: a, npages: npages)
        try d.ioctl(.read, &c, buffer: buf) // mirror everything first
        let (swift, base) = try measurePair(reps, { () throws -> Double in
            var c = DmirrorCmd(addr: a, npages: npages)
            let t = try seconds { try d.ioctl(.read, &c, buffer: buf) }
            guard c.faults == 0 else { throw BenchError(description: "READ of a mirrored range faulted") }
            return Double(bytes) / t / 1e9
        }, { () throws -> Double in memcpyRate(bytes, copies: 1) })
        let limit = spread((0..<reps).map { _ in memcpyRate(bytes, copies: 1, threads: 2) })
        return [BenchRow(name: "device READ of \(bytes >> 20)MiB already mirrored", unit: "GB/s", value: swift.median, baseline: base.median,
                         spread: (swift.min, swift.max), kind: .rate, target: 0.7),
                BenchRow(name: "  the same vs its limit: 1 copy by 2 threads", unit: "GB/s", value: swift.median, baseline: limit.median,
                         spread: (swift.min, swift.max), kind: .rate, target: 0.7)]
    }

    // MARK: latency

    /// The p-quantile of `v` (of a sorted copy).
    func quantile(_ v: [UInt32], _ q: Double) -> Double {
        let s = v.sorted()
        return Double(s[min(s.count - 1, Int((Double(s.count - 1) * q).rounded()))])
    }

    /// Times each page's first access by `threads` CPU threads of `p` (each its own slice of
    /// [a, a + bytes)), one `nb_ns` pair around each access, as the host figure does.
    func swiftLatencies(_ p: MMCore.Process, _ a: UInt64, _ bytes: UInt64, threads: Int, load: Bool = false) throws -> [UInt32] {
        let pages = Int(bytes / pageSize), per = pages / threads
        let results = (0..<threads).map { _ in UnsafeMutableBufferPointer<UInt32>.allocate(capacity: per) }
        defer { results.forEach { $0.deallocate() } }
        let failed = AtomicCounter(0)
        let ts = (0..<threads).map { t in
            p.spawnThread { cpu in
                let out = results[t]
                cpu.run { cpu in
                    let base = a + UInt64(t * per) << pageShift
                    for i in 0..<per {
                        let addr = base + UInt64(i) << pageShift
                        let t0 = nb_ns()
                        do {
                            if load { _ = try cpu.load(addr, as: UInt8.self) } else { try cpu.store(addr, UInt8(3)) }
                        } catch { failed.add(1) }
                        out[i] = UInt32(min(nb_ns() - t0, UInt64(UInt32.max)))
                    }
                }
            }
        }
        ts.forEach { $0.join() }
        guard failed.load() == 0 else { throw BenchError(description: "\(failed.load()) timed accesses failed") }
        return results.flatMap { Array($0) }
    }

    func hostLatencies(_ bytes: UInt64, threads: Int, cow: Bool) throws -> [UInt32] {
        var out = [UInt32](repeating: 0, count: Int(bytes / pageSize))
        let rc = out.withUnsafeMutableBufferPointer { nb_host_fault_latencies(Int(bytes), Int32(threads), cow ? 1 : 0, $0.baseAddress) }
        guard rc == 0 else { throw BenchError(description: "host mmap or fork failed") }
        return out
    }

    /// Fault latency distributions (issue 12): each fault timed on its own, swift-hmm's and
    /// the host kernel's the same way, percentiles against the same percentiles. Anonymous
    /// write faults with one and two threads, copy-on-write faults, and a CPU touch of a page
    /// that lives in device-private memory (`migrate_to_ram` of one page, against the host's
    /// anonymous fault: the closest thing the host does).
    func latencyFigures() throws -> [BenchRow] {
        let bytes: UInt64 = quick ? 16 << 20 : 256 << 20
        func rows(_ label: String, _ swift: [UInt32], _ host: [UInt32], _ qs: [(String, Double, Double)]) -> [BenchRow] {
            qs.map { (name, q, target) in
                let v = quantile(swift, q), h = quantile(host, q)
                return BenchRow(name: "\(label) \(name)", unit: "ns", value: v, baseline: h, spread: (v, v), kind: .time, target: target)
            }
        }
        var out: [BenchRow] = []
        // Anonymous, one thread and two.
        for threads in [1, 2] {
            let m = try Machine(memoryBytes: bytes + (64 << 20), devicePfnSpaceBytes: 0, populateRAM: true)
            let p = try MMCore.Process(machine: m)
            let a = try p.mmap(length: bytes, prot: .readWrite, flags: [.private, .anonymous])
            let s = try swiftLatencies(p, a, bytes, threads: threads)
            p.exit()
            let h = try hostLatencies(bytes, threads: threads, cow: false)
            let qs: [(String, Double, Double)] = threads == 1
                ? [("p50", 0.5, 0.5), ("p99", 0.99, 0.5), ("p99.9", 0.999, 1.0), ("max", 1.0, 2.0)]
                : [("p50", 0.5, 0.5), ("p99", 0.99, 0.5)]
            out += rows("anonymous fault latency, \(threads) thread\(threads == 1 ? "" : "s"),", s, h, qs)
        }
        // Copy-on-write after fork, one thread.
        do {
            let (_, p, filler, a) = try populated(bytes, extraMiB: 64 + bytes >> 20)
            filler.detach()
            let child = try p.fork()
            let s = try swiftLatencies(p, a, bytes, threads: 1)
            child.exit(); p.exit()
            out += rows("copy-on-write fault latency,", s, try hostLatencies(bytes, threads: 1, cow: true), [("p50", 0.5, 0.5), ("p99", 0.99, 0.5)])
        }
        // A CPU load of a page in device-private memory: migrate_to_ram of one page.
        do {
            let devBytes = bytes / 4
            let (m, p, filler, a) = try populated(devBytes)
            filler.detach()
            let d = try DmirrorModule(machine: m).open(minor: 0, mm: p.mm)
            var c = DmirrorCmd(addr: a, npages: devBytes / pageSize)
            try d.ioctl(.migrateToDevice, &c, buffer: DmirrorBuffer(size: Int(devBytes)))
            guard c.cpages == devBytes / pageSize else { throw BenchError(description: "migrated \(c.cpages) pages") }
            let s = try swiftLatencies(p, a, devBytes, threads: 1, load: true)
            guard m.stats[.faultDevicePrivate] >= devBytes / pageSize else { throw BenchError(description: "loads did not all fault") }
            d.close(); p.exit()
            out += rows("device-private page back (migrate_to_ram) vs host anonymous fault,", s,
                        try hostLatencies(devBytes, threads: 1, cow: false), [("p50", 0.5, 2.0), ("p99", 0.99, 2.0)])
        }
        return out
    }

    // MARK: lockdep

    /// What lockdep costs. Off (the release default): a `Lock` pair with its hooks compiled in
    /// (the `Lockdep.enabled` and `Sync.scheduler` checks, the owner word) against the bare
    /// pthread mutex it wraps. On (`--lockdep`, every test run): the anonymous-fault figure
    /// with lockdep recording every lock, against the same figure with it off.
    func lockdepFigures() throws -> [BenchRow] {
        let wasOn = Lockdep.enabled
        defer { if wasOn { Lockdep.enable() } else { Lockdep.disable() } }
        Lockdep.disable()
        let n = quick ? 1_000_000 : 20_000_000
        let lock = Lock("bench")
        let (pair, base) = measurePair(reps, { () -> Double in
            seconds { for _ in 0..<n { lock.lock(); lock.unlock() } } / Double(n) * 1e9
        }, { () -> Double in nb_mutex_pairs(Int32(n)) / Double(n) * 1e9 })
        let bytes: UInt64 = quick ? 16 << 20 : 256 << 20
        let (on, off) = try measurePair(reps, { () throws -> Double in
            Lockdep.enable(); defer { Lockdep.disable() }
            return try swiftAnonFaultNs(bytes)
        }, { () throws -> Double in try swiftAnonFaultNs(bytes) })
        return [
            BenchRow(name: "Lock + unlock, lockdep off, vs bare pthread mutex", unit: "ns/pair", value: pair.median, baseline: base.median,
                     spread: (pair.min, pair.max), kind: .time, target: 1.3),
            BenchRow(name: "anonymous fault \(bytes >> 20)MiB, lockdep on vs off", unit: "ns/fault", value: on.median, baseline: off.median,
                     spread: (on.min, on.max), kind: .time, target: 2.0),
        ]
    }

    // MARK: memory, scaling, threads

    func memoryFigures() throws -> [BenchRow] {
        let bytes = big
        let (_, p, cpu, _) = try populated(bytes)
        defer { release(p, cpu) }
        let tableBytes = Double(p.mm.pageTable.tableFrames) * Double(pageSize)
        let perPage = tableBytes / Double(bytes / pageSize)
        return [
            BenchRow(name: "page metadata per frame", unit: "B", value: Double(Page.metadataStride), baseline: 64, spread: (64, 64), kind: .memory, target: 64),
            BenchRow(name: "page-table bytes per mapped 4KiB page (\(quick ? "16MiB" : "1GiB"))", unit: "B", value: perPage, baseline: 8,
                     spread: (perPage, perPage), kind: .memory, target: 8.1),
        ]
    }

    func scaling() throws -> [BenchRow] {
        let sizes: [(String, UInt64)] = quick ? [("4MiB", 4 << 20), ("16MiB", 16 << 20)] : [("64MiB", 64 << 20), ("1GiB", 1 << 30), ("8GiB", 8 << 30)]
        var rows: [BenchRow] = []
        let baseFault = nb_host_anon_fault(Int(sizes[0].1)) / Double(sizes[0].1 / pageSize) * 1e9
        for (label, bytes) in sizes {
            let f = try swiftAnonFaultNs(bytes)
            rows.append(BenchRow(name: "scaling: anonymous fault at \(label)", unit: "ns/fault", value: f, baseline: baseFault,
                                 spread: (f, f), kind: .time, target: 0.5))
        }
        for (label, bytes) in sizes {
            let (m, p, cpu, a) = try populated(bytes)
            let (r, w) = try measurePair(quick ? 1 : 5, { () throws -> Double in try rangeFaultNs(m, p, a, bytes) },
                                         { () throws -> Double in try cRangeWalkNs(m, p, a, bytes) })
            release(p, cpu)
            rows.append(BenchRow(name: "scaling: range fault at \(label) vs C range walk", unit: "ns/page", value: r.median, baseline: w.median,
                                 spread: (r.min, r.max), kind: .time, target: 1.5))
        }
        return rows
    }

    /// Fault throughput with CPU threads writing one byte per page of fresh anonymous memory:
    /// one thread; two threads each in a VMA of its own (separated by a PROT_NONE page so they
    /// do not merge); two threads in halves of one VMA. Each rate is the median of `reps` runs.
    /// The one-thread rate is also compared with the host kernel's; the two-thread rates with
    /// the one-thread rate of the same run (the per-VMA lock's scaling, issue 11). Beside them,
    /// the physical limit: the same pages' memory work (zero with streaming stores, fence,
    /// publish, touch) done in C by 1 and 2 threads, so a reader sees how much of the machine's
    /// own scaling the faults get (on a 2-core VM the memory system may not scale at all).
    /// And the model's own ceiling: two threads faulting in two machines of their own (each
    /// with half the bytes), which share no machine or mm state, so the separate-VMA figure
    /// over it is what sharing one machine and one mm costs.
    func faultThreads() throws -> [BenchRow] {
        let bytes: UInt64 = quick ? 16 << 20 : 512 << 20
        /// Where the threads fault: one VMA (split in halves when there are two threads), a
        /// VMA each in one process, or a machine each (no machine or mm state shared; only
        /// process-wide statics such as the page-lock wait queues and lockdep's tables).
        enum Layout { case oneVMA, separateVMAs, separateMachines }
        func rate(threads: Int, _ layout: Layout) throws -> Double {
            let per = bytes / UInt64(threads)
            let machines = try (0..<(layout == .separateMachines ? threads : 1)).map { _ in
                try Machine(memoryBytes: (layout == .separateMachines ? per : bytes) + (64 << 20), devicePfnSpaceBytes: 0, populateRAM: true)
            }
            var procs: [MMCore.Process] = []
            defer { procs.forEach { $0.exit() } }
            for m in machines { procs.append(try MMCore.Process(machine: m)) }
            var work: [(MMCore.Process, UInt64)] = []
            switch layout {
            case .separateVMAs:
                let p = procs[0]
                for i in 0..<threads {
                    work.append((p, try p.mmap(length: per, prot: .readWrite, flags: [.private, .anonymous])))
                    if i + 1 < threads { _ = try p.mmap(length: pageSize, prot: .none, flags: [.private, .anonymous]) }
                }
                guard p.mm.vmaCount == 2 * threads - 1 else { throw BenchError(description: "separate VMAs merged") }
            case .oneVMA:
                let p = procs[0]
                let a = try p.mmap(length: bytes, prot: .readWrite, flags: [.private, .anonymous])
                work = (0..<threads).map { (p, a + UInt64($0) * per) }
            case .separateMachines:
                work = try procs.map { ($0, try $0.mmap(length: per, prot: .readWrite, flags: [.private, .anonymous])) }
            }
            // The threads start together from a barrier, and the time runs from the first one's
            // start to the last one's end, as each records them (as will-it-scale's page_fault1
            // counts): creating a thread and its stack, and waking the joiner, is not fault work.
            let ready = AtomicCounter(0), go = AtomicCounter(0)
            let times = UnsafeMutablePointer<Double>.allocate(capacity: 2 * threads)
            defer { times.deallocate() }
            let ts = work.enumerated().map { (i, w) in
                w.0.spawnThread { cpu in
                    let base = w.1
                    ready.add(1)
                    while go.load() == 0 { sched_yield() }
                    times[2 * i] = nb_now()
                    cpu.run { cpu in
                        var off: UInt64 = 0
                        while off < per { try? cpu.store(base + off, UInt8(1)); off += pageSize }
                    }
                    times[2 * i + 1] = nb_now()
                }
            }
            while ready.load() < threads { sched_yield() }
            go.store(1)
            ts.forEach { $0.join() }
            let t = (0..<threads).map { times[2 * $0 + 1] }.max()! - (0..<threads).map { times[2 * $0] }.min()!
            return Double(bytes / pageSize) / t / 1e6
        }
        /// The zero-fill limit: the same pages' memory work in C, by 1 and by 2 threads.
        func fillRate(threads: Int) throws -> Double {
            let t = nb_zero_fill(Int(bytes), Int32(threads))
            guard t > 0 else { throw BenchError(description: "host mmap failed") }
            return Double(bytes / pageSize) / t / 1e6
        }
        // This VM's host moves between states in which the same single-thread fault loop runs
        // at 3.3 or at 2.0–2.9 Mfaults/s, each lasting from a fraction of a second to minutes;
        // a median of one-thread runs and a median of two-thread runs may come from different
        // states. So the ratios are taken within each repetition (o1, sep, ap, o2, sh, o3, f1,
        // f2): the separate-VMA rate over the mean of o1 and o2 (the two-machine run between
        // them), the one-VMA rate over the mean of o2 and o3, the separate-VMA rate over the
        // two-machine rate right after it, o3 over the zero-fill run right after it, and the
        // two-thread scaling over the zero-fill scaling of the same repetition; each row's
        // ratio is the median of its repetitions' ratios. The rates shown are the plain
        // medians (the zero-fill-scaling row shows the paired scaling itself).
        var one: [Double] = [], separate: [Double] = [], shared: [Double] = [], apart: [Double] = [], host: [Double] = []
        var fill1: [Double] = [], fill2: [Double] = []
        var sepScaling: [Double] = [], sharedScaling: [Double] = [], sepOverApart: [Double] = [], fillScaling: [Double] = []
        var oneVsFill: [Double] = []
        for _ in 0..<reps {
            let o1 = try rate(threads: 1, .oneVMA)
            let sep = try rate(threads: 2, .separateVMAs)
            let ap = try rate(threads: 2, .separateMachines)
            let o2 = try rate(threads: 1, .oneVMA)
            let sh = try rate(threads: 2, .oneVMA)
            let o3 = try rate(threads: 1, .oneVMA)
            let f1 = try fillRate(threads: 1)
            let f2 = try fillRate(threads: 2)
            host.append(Double(bytes / pageSize) / nb_host_anon_fault(Int(bytes)) / 1e6)
            one += [o1, o2, o3]; separate.append(sep); apart.append(ap); shared.append(sh); fill1.append(f1); fill2.append(f2)
            sepScaling.append(sep / ((o1 + o2) / 2))
            sharedScaling.append(sh / ((o2 + o3) / 2))
            sepOverApart.append(sep / ap)
            fillScaling.append(f2 / f1)
            oneVsFill.append(o3 / f1)
        }
        let o = spread(one), sep = spread(separate), sh = spread(shared), ap = spread(apart), h = spread(host)
        let f1 = spread(fill1), scale = spread(sepScaling)
        return [
            // The limits, measured beside the figures: what this run's memory system allows.
            BenchRow(name: "fault throughput, 1 thread, vs zero-fill limit (C)", unit: "Mfaults/s", value: o.median, baseline: f1.median,
                     spread: (o.min, o.max), kind: .rate, target: 0.5, pairedRatio: spread(oneVsFill).median),
            BenchRow(name: "2-thread fault scaling vs zero-fill scaling (C)", unit: "×", value: scale.median,
                     baseline: spread(fillScaling).median, spread: (scale.min, scale.max), kind: .rate, target: 0.9,
                     pairedRatio: spread(zip(sepScaling, fillScaling).map { $0 / $1 }).median),
            BenchRow(name: "fault throughput, 1 CPU thread", unit: "Mfaults/s", value: o.median, baseline: h.median,
                     spread: (o.min, o.max), kind: .rate, target: 2.0),
            BenchRow(name: "fault scaling: 2 CPU threads, separate VMAs", unit: "Mfaults/s", value: sep.median, baseline: o.median,
                     spread: (sep.min, sep.max), kind: .rate, target: 1.7, pairedRatio: scale.median),
            BenchRow(name: "fault scaling: 2 CPU threads, one VMA", unit: "Mfaults/s", value: sh.median, baseline: o.median,
                     spread: (sh.min, sh.max), kind: .rate, target: 1.5, pairedRatio: spread(sharedScaling).median),
            // What sharing one machine and one mm costs: the same two threads, each with a
            // machine of its own (its own zone, per-CPU lists, LRU, counters, mm and locks).
            BenchRow(name: "  separate VMAs vs 2 separate machines (no machine or mm shared)", unit: "Mfaults/s", value: sep.median, baseline: ap.median,
                     spread: (sep.min, sep.max), kind: .rate, target: 0.9, pairedRatio: spread(sepOverApart).median),
        ]
    }
}

@inline(never) func blackHole<T>(_ x: T) { withExtendedLifetime(x) {} }

#if canImport(Glibc)
import Glibc
#endif
