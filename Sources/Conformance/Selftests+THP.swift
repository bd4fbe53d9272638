import Devices
import HMM
import MMCore
import MMSync

/// The selftests that need transparent huge pages (T08, T30–T38, and T06's THP rounds).
/// dmirror migrates with `MIGRATE_VMA_SELECT_COMPOUND`: a THP (or an aligned 2 MiB hole)
/// moves whole into an order-9 device folio mapped by a device-private PMD, and back; with
/// FAIL_ALLOC (or no 2 MiB free) it falls back to 512 base pages and the folio is split on the
/// way (T36, T37).
extension SelftestSuite {
    /// `read_pmd_pagesize()`: the PMD size the tests align to.
    static let pmd = Int(pmdSize)

    /// The tests' THP buffer: `2*size` mapped (`prot`), the `size`-aligned `size` bytes inside
    /// advised `advice` (MADV_HUGEPAGE unless told). `raw`/`rawSize` are what to unmap.
    struct THPBuffer {
        let buffer: Fixture.Buffer
        let raw: UInt64
        let rawSize: Int
    }

    static func thpBuffer(_ f: Fixture, size: Int = pmd, mapped: Int? = nil, prot: Protection = .readWrite,
                          advice: MadviseAdvice? = .hugePage, align: Bool = true, mirrorSize: Int? = nil) throws -> THPBuffer {
        let rawSize = mapped ?? 2 * size
        let raw = try f.process.mmap(length: UInt64(rawSize), prot: prot, flags: [.private, .anonymous])
        let ptr = align ? (raw + UInt64(size) - 1) / UInt64(size) * UInt64(size) : raw
        if let advice {
            do { try f.process.madvise(ptr, length: UInt64(size), advice: advice) } catch {
                throw SelftestFailure(message: "madvise \(advice) returned \(error)", file: #fileID, line: #line)
            }
        }
        return THPBuffer(buffer: Fixture.Buffer(ptr: ptr, size: size, mirrorSize: mirrorSize), raw: raw, rawSize: rawSize)
    }

    static func unmap(_ f: Fixture, _ t: THPBuffer) throws { try f.process.munmap(t.raw, length: UInt64(t.rawSize)) }

    /// T08: a device write into a THP-eligible 2 MiB range.
    static func anonWriteHuge(_ f: Fixture) throws {
        let t = try thpBuffer(f)
        let b = t.buffer, npages = pmd / f.pageSize
        f.fillMirror(b, idx)
        try f.expectCommand(f.fd, .write, b, npages, "WRITE")
        try expectEqual(b.faults, 1, "faults")
        try f.expectInts(try f.ints(f.cpu, b.ptr, count: pmd / 4), idx, "ptr after WRITE")
        try unmap(f, t)
    }

    /// T30: migrating an untouched, read-only THP range gives the device zeroes.
    static func migrateAnonHugeEmpty(_ f: Fixture) throws {
        let t = try thpBuffer(f, prot: .read)
        let b = t.buffer, npages = pmd / f.pageSize
        f.fillMirror(b) { _ in -1 }
        try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV")
        try f.expectMirror(b, zero)
        try unmap(f, t)
    }

    /// T31: the huge zero folio migrates as zeroes and faults back as zeroes.
    static func migrateAnonHugeZero(_ f: Fixture) throws {
        let t = try thpBuffer(f, prot: .read)
        let b = t.buffer, npages = pmd / f.pageSize
        f.fillMirror(b) { _ in -1 }
        try expectEqual(try f.ints(f.cpu, b.ptr, count: 1), [0], "read of int 0 (huge zero folio)")
        try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV")
        try f.expectMirror(b, zero)
        try f.expectInts(try f.ints(f.cpu, b.ptr, count: pmd / 4), zero, "ptr after migration")
        try unmap(f, t)
    }

    /// T32: MADV_FREE of a THP range that lives on the device succeeds.
    static func migrateAnonHugeFree(_ f: Fixture) throws {
        let t = try thpBuffer(f)
        let b = t.buffer, npages = pmd / f.pageSize
        f.fillMirror(b) { _ in -1 }
        try f.fill(b, idx)
        try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV")
        try f.expectMirror(b, idx)
        do { try f.process.madvise(b.ptr, length: UInt64(pmd), advice: .free) } catch {
            throw SelftestFailure(message: "MADV_FREE returned \(error)", file: #fileID, line: #line)
        }
        try unmap(f, t)
    }

    /// T34: a partial munmap of a migrated (THP or not) range keeps the rest.
    static func migratePartialUnmapFault(_ f: Fixture) throws {
        let size = pmd, npages = size / f.pageSize, window = size / 2
        for useTHP in [false, true] {
            for offset in [0, size / 4, size / 2] {
                let t = try thpBuffer(f, size: size, advice: useTHP ? .hugePage : .noHugePage)
                let b = t.buffer
                f.fillMirror(b) { _ in -1 }
                try f.fill(b, idx)
                try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV (thp \(useTHP), offset \(offset))")
                try f.expectMirror(b, idx)
                try f.process.munmap(b.ptr + UInt64(offset), length: UInt64(window))
                let ints = size / 4, lo = offset / 4, hi = (offset + window) / 4
                if lo > 0 { try f.expectInts(try f.ints(f.cpu, b.ptr, count: lo), idx, "before the hole") }
                if hi < ints {
                    try f.expectInts(try f.ints(f.cpu, b.ptr + UInt64(hi * 4), count: ints - hi), from: hi, idx, "after the hole")
                }
                try unmap(f, t)
            }
        }
    }

    /// T35: mremap of THP ranges before or after their migration, with and without
    /// MREMAP_DONTUNMAP, to aligned and unaligned targets.
    static func migrateRemapFault(_ f: Fixture) throws {
        let size = pmd, npages = size / f.pageSize
        for before in [false, true] {
            for dontUnmap in [false, true] {
                for useTHP in [false, true] {
                    for offset in [0, size / 4, size / 2] {
                        let what = "before \(before), dontunmap \(dontUnmap), thp \(useTHP), offset \(offset)"
                        let t = try thpBuffer(f, size: size, mapped: 8 * size, advice: useTHP ? .hugePage : .noHugePage)
                        let map = t.buffer.ptr
                        try f.process.munmap(map + UInt64(size), length: UInt64(2 * size))
                        let b = t.buffer
                        try f.fill(b, idx)
                        f.fillMirror(b) { _ in -1 }
                        var flags: MremapFlags = [.mayMove, .fixed]
                        if dontUnmap { flags.insert(.dontUnmap) }
                        let target = map + UInt64(size + offset)
                        var moved = map
                        func remap() throws {
                            do { moved = try f.process.mremap(map, oldLength: UInt64(size), newLength: UInt64(size), flags: flags, newAddress: target) } catch {
                                throw SelftestFailure(message: "mremap (\(what)) failed: \(error)", file: #fileID, line: #line)
                            }
                            try expectEqual(moved, target, "mremap address (\(what))")
                        }
                        if before { try remap() }
                        let m = Fixture.Buffer(ptr: before ? moved : map, size: size)
                        try f.expectCommand(f.fd, .migrateToDevice, m, npages, "MIGRATE_TO_DEV (\(what))")
                        try f.expectMirror(m, idx)
                        if !before { try remap() }
                        try f.expectInts(try f.ints(f.cpu, moved, count: size / 4), idx, "ptr at the new address (\(what))")
                        try f.process.munmap(moved, length: UInt64(size))
                        try unmap(f, t)
                    }
                }
            }
        }
    }

    /// T33: a THP made by MADV_COLLAPSE migrates to the device whole; on the private
    /// device the snapshot reports its PMD order and pagemap a swap entry for every page; the
    /// CPU's read brings the whole folio back.
    static func migrateAnonHugeFault(_ f: Fixture) throws {
        let npages = pmd / f.pageSize
        let t = try thpBuffer(f, advice: nil, mirrorSize: pmd)
        let b = t.buffer
        f.fillMirror(b) { _ in -1 }
        try f.fill(b, idx)
        do { try f.process.madvise(b.ptr, length: UInt64(pmd), advice: .collapse) } catch {
            throw SelftestFailure(message: "MADV_COLLAPSE returned \(error)", file: #fileID, line: #line)
        }
        try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV")
        try f.expectMirror(b, count: pmd / 4, idx)
        if f.variant == .devicePrivate {
            try f.expectCommand(f.fd, .snapshot, b, npages, "SNAPSHOT")
            for i in 0..<npages where b.mirror[byte: i] != 0x26 {
                try expectEqual(b.mirror[byte: i], 0x26, "snapshot byte \(i) (DEV_PRIVATE_LOCAL|WRITE|PMD)")
            }
            let entries = try f.process.mm.pagemap(b.ptr, count: npages)
            for (i, e) in entries.enumerated() where !e.isSwap || e.isPresent {
                throw SelftestFailure(message: "pagemap of page \(i): \(e), expected swap and not present", file: #fileID, line: #line)
            }
        }
        try f.expectInts(try f.ints(f.cpu, b.ptr, count: pmd / 4), idx, "ptr after the fault back")
        try unmap(f, t)
    }

    /// T36: FAIL_ALLOC during THP migration to the device and back.
    static func migrateAnonHugeErr(_ f: Fixture) throws {
        let npages = pmd / f.pageSize
        var t = try thpBuffer(f, mirrorSize: 2 * pmd)
        var b = t.buffer
        f.fillMirror(b) { _ in -1 }
        try f.fill(b, idx)
        try expectEqual(f.cmd(f.fd, .flags, Fixture.Buffer(ptr: b.ptr, size: f.pageSize), Int(DmirrorFlag.failAlloc)), 0, "FLAGS")
        try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV with FAIL_ALLOC")
        try f.expectMirror(b, count: pmd / 4, idx)
        try expectEqual(try f.ints(f.cpu, b.ptr + 2048 * 4, count: 1), [2048], "int 2048")
        try unmap(f, t)
        t = try thpBuffer(f, mirrorSize: 2 * pmd)
        b = t.buffer
        try f.fill(b, idx)
        try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV")
        try expectEqual(f.cmd(f.fd, .flags, Fixture.Buffer(ptr: b.ptr, size: f.pageSize), Int(DmirrorFlag.failAlloc)), 0, "FLAGS")
        try expectEqual(f.cmd(f.fd, .migrateToSystem, b, npages), 0, "MIGRATE_TO_SYS with FAIL_ALLOC")
        try expectEqual(try f.ints(f.cpu, b.ptr + 2048 * 4, count: 1), [2048], "int 2048 after MIGRATE_TO_SYS")
        try unmap(f, t)
    }

    /// T37: FAIL_ALLOC when migrating an untouched (then a huge-zero) read-only THP range.
    /// (The kernel's test reads step 2 through the old mapping's pointer, which works because
    /// the new mmap lands at the same address; here the new mapping is read.)
    static func migrateAnonHugeZeroErr(_ f: Fixture) throws {
        let npages = pmd / f.pageSize
        var t = try thpBuffer(f, prot: .read, mirrorSize: 2 * pmd)
        var b = t.buffer
        f.fillMirror(b) { _ in -1 }
        try expectEqual(f.cmd(f.fd, .flags, Fixture.Buffer(ptr: b.ptr, size: f.pageSize), Int(DmirrorFlag.failAlloc)), 0, "FLAGS")
        try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV of an empty range")
        try f.expectMirror(b, count: pmd / 4, zero)
        try expectEqual(try f.ints(f.cpu, b.ptr + 2048 * 4, count: 1), [0], "int 2048")
        try unmap(f, t)
        t = try thpBuffer(f, prot: .read, mirrorSize: 2 * pmd)
        b = t.buffer
        try expectEqual(try f.ints(f.cpu, b.ptr, count: 1), [0], "int 0 (huge zero folio)")
        try expectEqual(f.cmd(f.fd, .flags, Fixture.Buffer(ptr: b.ptr, size: f.pageSize), Int(DmirrorFlag.failAlloc)), 0, "FLAGS")
        try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV of the huge zero folio")
        try f.expectInts(try f.ints(f.cpu, b.ptr, count: pmd / 4), zero, "ptr after migration")
        try unmap(f, t)
    }

    /// T38: THP vs base-page migration throughput, printed (each run must succeed). The sizes
    /// stop at `maxBytes` (the kernel's list goes to 128 PMDs; `hmm selftest` runs them all).
    static func benchmarkTHPMigration(_ f: Fixture) throws {
        let sizes = [pmd / 4, pmd / 2, pmd, 2 * pmd, 4 * pmd, 8 * pmd, 128 * pmd].filter { $0 <= benchmarkMaxBytes }
        var rows: [String] = []
        for size in sizes {
            var times: [MadviseAdvice: Double] = [:]
            for advice in [MadviseAdvice.hugePage, .noHugePage] {
                let npages = size / f.pageSize
                let raw = try f.process.mmap(length: UInt64(size), prot: .readWrite, flags: [.private, .anonymous])
                do { try f.process.madvise(raw, length: UInt64(size), advice: advice) } catch {
                    throw SelftestFailure(message: "madvise \(advice): \(error)", file: #fileID, line: #line)
                }
                let b = Fixture.Buffer(ptr: raw, size: size)
                try f.fill(b) { Int32($0 & 0xFF) }
                for c in [DmirrorCommand.migrateToDevice, .migrateToSystem] {
                    try expectEqual(f.cmd(f.fd, c, b, npages), 0, "warm-up \(c) of \(size) bytes")
                }
                let start = ContinuousClock.now
                for _ in 0..<5 {
                    for c in [DmirrorCommand.migrateToDevice, .migrateToSystem] {
                        try expectEqual(f.cmd(f.fd, c, b, npages), 0, "\(c) of \(size) bytes (\(advice))")
                    }
                }
                let d = ContinuousClock.now - start
                times[advice] = (Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18) / 5
                try f.process.munmap(raw, length: UInt64(size))
            }
            let thp: Double = times[.hugePage]!, base: Double = times[.noHugePage]!
            let mib: Double = Double(size) / 1_048_576
            func fixed(_ v: Double, _ digits: Int) -> String {
                let scale: Double = [1, 10, 100, 1000][digits]
                return "\((v * scale).rounded() / scale)"
            }
            let thpRate: Double = 2 * mib / thp, baseRate: Double = 2 * mib / base
            let row = "\(size) bytes: THP \(fixed(thp * 1e3, 3)) ms (\(fixed(thpRate, 1)) MiB/s), 4K \(fixed(base * 1e3, 3)) ms (\(fixed(baseRate, 1)) MiB/s), speedup \(fixed(base / thp, 2))x"
            rows.append(row)
        }
        benchmarkReport(rows)
    }

    /// The largest size T38 runs (`hmm selftest` sets it to the kernel's 256 MiB; the test
    /// suite's debug build keeps it small).
    nonisolated(unsafe) public static var benchmarkMaxBytes = 8 * pmd
    /// RAM of each test's machine (`hmm selftest --memory`; 512 MiB unless set).
    nonisolated(unsafe) public static var machineMemoryBytes: UInt64 = 512 << 20
    /// Swap of each test's machine (`hmm selftest --swap`; none unless set).
    nonisolated(unsafe) public static var machineSwapBytes: UInt64 = 0
    /// Swap and reclaim counters summed over every fixture torn down so far (what
    /// `hmm selftest --memory` reports: whether the cases ran under memory pressure).
    public static var reclaimTotals: [(String, Int)] { reclaimTotalsLock.withLock { reclaimSums.map { ($0.name, $1) } } }
    static let reclaimTotalsLock = Lock("selftest reclaim totals")
    /// Locking: reclaimTotalsLock.
    nonisolated(unsafe) static var reclaimSums: [(MMStats.Counter, Int)] =
        [MMStats.Counter.pswpout, .pswpin, .pgscanKswapd, .pgscanDirect, .pgstealKswapd, .pgstealDirect, .allocstall].map { ($0, 0) }
    /// Adds one machine's counters to `reclaimTotals`. Locking: takes reclaimTotalsLock.
    static func addReclaimTotals(_ stats: MMStats) {
        reclaimTotalsLock.assertNotHeld()
        reclaimTotalsLock.withLock {
            for i in reclaimSums.indices { reclaimSums[i].1 += stats[reclaimSums[i].0] }
        }
    }
    /// Where T38 prints its table (standard output unless replaced).
    nonisolated(unsafe) public static var benchmarkReport: ([String]) -> Void = { rows in
        print("# benchmark_thp_migration: round trip (to device and back), mean of 5")
        for r in rows { print("# " + r) }
    }
}
