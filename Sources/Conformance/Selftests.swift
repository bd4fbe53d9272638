import Devices
import HMM
import MMCore
import MMSync

/// One kernel selftest (`TEST_F(hmm, name)`), runnable against either variant.
public struct Selftest: Sendable {
    public let number: Int
    public let name: String
    /// `hmm2` fixtures open two devices.
    public let twoDevices: Bool
    /// Set when the test needs a huge-page feature the model does not have yet (device THP):
    /// the test is skipped, naming it. (Its body is written, and runs once the feature lands.)
    public let needs: String?
    let body: @Sendable (Fixture) throws -> Void
    /// Variants in which Linux 7.2 fails this test too (the kernel oracle's result), with why
    /// and the failure the model must report: the case is an expected failure (TAP `# TODO`);
    /// passing it, or failing elsewhere, is a failure.
    public var expectedFailure: [Variant: ExpectedFailure] = [:]
    /// Variants in which the kernel's result differs from the model's for a reason listed in
    /// docs/linux-divergences.md (the kernel oracle reports it as such, and only that result).
    public var divergence: [Variant: KnownDivergence] = [:]

    /// The kselftest name, `hmm.hmm_device_private.anon_read`.
    public func fullName(_ v: Variant) -> String {
        twoDevices ? "hmm2.hmm2_\(v.rawValue.dropFirst(4)).\(name)" : "hmm.\(v.rawValue).\(name)"
    }

    /// The outcome of a run that ended with `failure` (nil: it passed): an expected failure
    /// (`expectedFailure`) must fail with its message; passing it is a failure. Return: the
    /// outcome and its message.
    public func classify(_ v: Variant, _ failure: SelftestFailure?) -> (SelftestRunner.Outcome, String?) {
        switch (failure, expectedFailure[v]) {
        case (nil, nil): return (.pass, nil)
        case (nil, let x?): return (.fail, "passed, but Linux 7.2 fails it (\(x.failure)): \(x.reason)")
        case (let f?, let x?) where f.message.contains(x.failure): return (.xfail, "\(x.reason); got \(f.description)")
        case (let f?, _): return (.fail, f.description)
        }
    }

    /// Runs the test on a fresh fixture. Return: nil on success, the failure otherwise.
    public func run(_ v: Variant) -> SelftestFailure? {
        do {
            let f = try Fixture(variant: v, twoDevices: twoDevices)
            defer { SelftestSuite.addReclaimTotals(f.machine.stats) }
            try body(f)
            try f.teardown()
            return nil
        } catch let failure as SelftestFailure {
            return failure
        } catch {
            return SelftestFailure(message: "unexpected error \(error)", file: "Selftests.swift", line: 0)
        }
    }
}

let idx: @Sendable (Int) -> Int32 = { Int32(truncatingIfNeeded: $0) }
let neg: @Sendable (Int) -> Int32 = { -Int32(truncatingIfNeeded: $0) }
let zero: @Sendable (Int) -> Int32 = { _ in 0 }

/// A test that fails on the real kernel too (see `Selftest.expectedFailure`).
public struct ExpectedFailure: Sendable {
    /// Why the kernel fails it.
    public let reason: String
    /// Text the model's failure message must contain (the same assertion as the kernel's).
    public let failure: String
    /// Where the kernel's test fails (`hmm-tests.c:LINE`): the kernel oracle checks it.
    public let kernelFailure: String
}

/// A selftest result that differs from the kernel's for a reason in
/// docs/linux-divergences.md: the id, and the outcomes it explains (kernel's and model's:
/// "pass", "fail", "skip").
public struct KnownDivergence: Sendable {
    public let id: String
    public let kernel: String
    public let model: String
}

/// The suite (`tools/testing/selftests/mm/hmm-tests.c`), in the kernel's order.
public enum SelftestSuite {
    public static let all: [Selftest] = [
        Selftest(number: 1, name: "open_close", twoDevices: false, needs: nil) { _ in },
        Selftest(number: 2, name: "anon_read", twoDevices: false, needs: nil, body: anonRead),
        Selftest(number: 3, name: "anon_read_prot", twoDevices: false, needs: nil, body: anonReadProt),
        Selftest(number: 4, name: "anon_write", twoDevices: false, needs: nil, body: anonWrite),
        Selftest(number: 5, name: "anon_write_prot", twoDevices: false, needs: nil, body: anonWriteProt),
        Selftest(number: 6, name: "anon_write_child", twoDevices: false, needs: nil, body: anonWriteChild),
        Selftest(number: 7, name: "anon_write_child_shared", twoDevices: false, needs: nil, body: anonWriteChildShared),
        Selftest(number: 8, name: "anon_write_huge", twoDevices: false, needs: nil, body: anonWriteHuge),
        Selftest(number: 9, name: "anon_write_hugetlbfs", twoDevices: false, needs: nil, body: anonWriteHugetlbfs),
        Selftest(number: 10, name: "file_read", twoDevices: false, needs: nil, body: fileRead),
        Selftest(number: 11, name: "file_write", twoDevices: false, needs: nil, body: fileWrite),
        Selftest(number: 12, name: "migrate", twoDevices: false, needs: nil, body: migrate),
        Selftest(number: 13, name: "migrate_file_private", twoDevices: false, needs: nil, body: migrateFilePrivate),
        Selftest(number: 14, name: "migrate_fault", twoDevices: false, needs: nil, body: migrateFault),
        Selftest(number: 15, name: "migrate_release", twoDevices: false, needs: nil, body: migrateRelease),
        Selftest(number: 16, name: "migrate_shared", twoDevices: false, needs: nil, body: migrateShared),
        Selftest(number: 17, name: "migrate_mixed", twoDevices: true, needs: nil, body: migrateMixed),
        Selftest(number: 18, name: "migrate_multiple", twoDevices: false, needs: nil, body: migrateMultiple),
        Selftest(number: 19, name: "anon_read_multiple", twoDevices: false, needs: nil, body: anonReadMultiple),
        Selftest(number: 20, name: "anon_teardown", twoDevices: false, needs: nil, body: { try anonTeardown($0, rounds: 10) }),
        Selftest(number: 21, name: "mixedmap", twoDevices: false, needs: nil, body: mixedmap),
        Selftest(number: 22, name: "snapshot", twoDevices: true, needs: nil, body: snapshot),
        Selftest(number: 23, name: "compound", twoDevices: false, needs: nil, body: compound),
        Selftest(number: 24, name: "double_map", twoDevices: true, needs: nil, body: doubleMap),
        Selftest(number: 25, name: "exclusive", twoDevices: false, needs: nil, body: exclusive),
        Selftest(number: 26, name: "exclusive_mprotect", twoDevices: false, needs: nil, body: exclusiveMprotect),
        Selftest(number: 27, name: "exclusive_cow", twoDevices: false, needs: nil, body: exclusiveCOW),
        Selftest(number: 28, name: "hmm_gup_test", twoDevices: false, needs: nil, body: gupTest),
        Selftest(number: 29, name: "hmm_cow_in_device", twoDevices: false, needs: nil, body: cowInDevice),
        Selftest(number: 30, name: "migrate_anon_huge_empty", twoDevices: false, needs: nil, body: migrateAnonHugeEmpty),
        Selftest(number: 31, name: "migrate_anon_huge_zero", twoDevices: false, needs: nil, body: migrateAnonHugeZero),
        Selftest(number: 32, name: "migrate_anon_huge_free", twoDevices: false, needs: nil, body: migrateAnonHugeFree),
        Selftest(number: 33, name: "migrate_anon_huge_fault", twoDevices: false, needs: nil, body: migrateAnonHugeFault),
        Selftest(number: 34, name: "migrate_partial_unmap_fault", twoDevices: false, needs: nil, body: migratePartialUnmapFault),
        Selftest(number: 35, name: "migrate_remap_fault", twoDevices: false, needs: nil, body: migrateRemapFault),
        Selftest(number: 36, name: "migrate_anon_huge_err", twoDevices: false, needs: nil, body: migrateAnonHugeErr,
                 expectedFailure: [.deviceCoherent: ExpectedFailure(
                    reason: "fails on Linux 7.2 too (hmm-tests.c:2664, -ENOMEM): test_hmm's coherent device has one chunk, "
                        + "laid out in 4 KiB pages when the module loads, so no device THP is ever made; FAIL_ALLOC on a "
                        + "4 KiB page is VM_FAULT_OOM",
                    failure: "MIGRATE_TO_SYS with FAIL_ALLOC: got -12, expected 0", kernelFailure: "hmm-tests.c:2664")]),
        Selftest(number: 37, name: "migrate_anon_huge_zero_err", twoDevices: false, needs: nil, body: migrateAnonHugeZeroErr),
        Selftest(number: 38, name: "benchmark_thp_migration", twoDevices: false, needs: nil, body: benchmarkTHPMigration,
                 divergence: [.deviceCoherent: KnownDivergence(id: "D19", kernel: "fail", model: "pass")]),
    ]

    // MARK: T02–T07

    static func anonRead(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        let b = try f.anonBuffer(size: size)
        try f.fill(b, from: 2 * f.pageSize / 4, idx)
        try f.process.mprotect(b.ptr, length: UInt64(size), prot: .read)
        try expectEqual(try f.cpu.load(b.ptr + UInt64(f.pageSize), as: Int32.self), 0, "zero page read")
        try f.expectCommand(f.fd, .read, b, npages, "READ")
        try expectEqual(b.faults, 1, "faults")
        try f.expectMirror(b, { $0 < 2 * f.pageSize / 4 ? 0 : Int32($0) })
    }

    static func anonReadProt(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        let b = try f.anonBuffer(size: size)
        try f.fill(b, idx)
        f.fillMirror(b, neg)
        try f.process.mprotect(b.ptr, length: UInt64(size), prot: .none)
        try expectEqual(f.cmd(f.fd, .read, b, npages), -Errno.EFAULT.rawValue, "READ of PROT_NONE")
        try f.process.mprotect(b.ptr, length: UInt64(size), prot: .read)
        try f.expectInts(try f.ints(f.cpu, b.ptr, count: size / 4), idx, "ptr")
        try f.expectMirror(b, neg)
    }

    static func anonWrite(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        let b = try f.anonBuffer(size: size)
        f.fillMirror(b, idx)
        try f.expectCommand(f.fd, .write, b, npages, "WRITE")
        try expectEqual(b.faults, 1, "faults")
        try f.expectInts(try f.ints(f.cpu, b.ptr, count: size / 4), idx, "ptr")
    }

    static func anonWriteProt(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        let b = try f.anonBuffer(size: size, prot: .read)
        try expectEqual(f.cmd(f.fd, .read, b, 1), 0, "READ 1 page")
        try expectEqual(b.cpages, 1, "cpages")
        try expectEqual(b.faults, 1, "faults")
        f.fillMirror(b, idx)
        try expectEqual(f.cmd(f.fd, .write, b, npages), -Errno.EPERM.rawValue, "WRITE to PROT_READ")
        try f.expectInts(try f.ints(f.cpu, b.ptr, count: size / 4), zero, "ptr untouched")
        try f.process.mprotect(b.ptr, length: UInt64(size), prot: .readWrite)
        try f.expectCommand(f.fd, .write, b, npages, "WRITE after mprotect")
        try expectEqual(b.faults, 1, "faults")
        try f.expectInts(try f.ints(f.cpu, b.ptr, count: size / 4), idx, "ptr")
    }

    /// T09: the device writes through a private hugetlb mapping of the default huge page
    /// size (the file's `HUGETLB_SETUP_DEFAULT_PAGES(1)` gives the pool its page).
    static func anonWriteHugetlbfs(_ f: Fixture) throws {
        let hsize = try f.setupHugetlbDefaultPages(1)
        let size = Int((UInt64(2 << 20) + hsize - 1) / hsize * hsize), npages = size / f.pageSize
        let p = try f.process.mmap(length: UInt64(size), prot: .readWrite, flags: [.private, .anonymous, .hugetlb])
        let b = Fixture.Buffer(ptr: p, size: size)
        f.fillMirror(b, idx)
        try f.expectCommand(f.fd, .write, b, npages, "WRITE")
        try expectEqual(b.faults, 1, "faults")
        try f.expectInts(try f.ints(f.cpu, b.ptr, count: size / 4), idx, "ptr")
        try f.process.munmap(b.ptr, length: UInt64(size))
    }

    /// T23: a snapshot of a hugetlb mapping reports every page at the leaf's level (PMD for
    /// 2 MiB pages, PUD for 1 GiB ones), writable, then read-only after mprotect.
    static func compound(_ f: Fixture) throws {
        let hsize = try f.setupHugetlbDefaultPages(1)
        let size = Int((UInt64(2 << 20) + hsize - 1) / hsize * hsize), npages = size / f.pageSize
        let p = try f.process.mmap(length: UInt64(size), prot: .readWrite, flags: [.private, .anonymous, .hugetlb])
        let b = Fixture.Buffer(ptr: p, size: size, mirrorSize: npages)
        try f.fill(b, idx)
        try f.expectCommand(f.fd, .snapshot, b, npages, "SNAPSHOT")
        let level = b.mirror[byte: 0] & DmirrorProt.pud != 0 ? DmirrorProt.pud : DmirrorProt.pmd
        try expectEqual((0..<npages).map { b.mirror[byte: $0] }, [UInt8](repeating: DmirrorProt.write | level, count: npages), "snapshot bytes")
        try f.process.mprotect(b.ptr, length: UInt64(size), prot: .read)
        try f.expectCommand(f.fd, .snapshot, b, npages, "SNAPSHOT after mprotect")
        try expectEqual((0..<npages).map { b.mirror[byte: $0] }, [UInt8](repeating: DmirrorProt.read | level, count: npages), "snapshot bytes after mprotect")
        try f.process.munmap(b.ptr, length: UInt64(size))
    }

    /// T06: four rounds, with and without migration, with and without THP (a PMD-sized,
    /// PMD-aligned range advised MADV_HUGEPAGE inside a mapping twice its size; without THP,
    /// 4 MiB at the start of a mapping twice that).
    static func anonWriteChild(_ f: Fixture) throws {
        for migrate in [false, true] { for useTHP in [false, true] {
            let size = useTHP ? pmd : 4 << 20, npages = size / f.pageSize
            // mmap 2*size; with THP the size-aligned size inside, advised; else its start.
            let t = try thpBuffer(f, size: size, advice: useTHP ? .hugePage : nil, align: useTHP)
            let b = t.buffer
            try f.fill(b, idx)
            f.fillMirror(b, neg)
            if migrate {
                try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV")
            }
            let child = try f.process.fork()
            let childResult: Result<Void, Error> = Result {
                let ccpu = child.makeCPU()
                defer { ccpu.detach() }
                try f.expectInts(try f.ints(ccpu, b.ptr, count: size / 4), idx, "child ptr")
                if !migrate { try f.expectMirror(b, neg, "child mirror") }
                let cfd = try f.module.open(minor: 0, mm: child.mm)
                defer { cfd.close() }
                try f.expectCommand(cfd, .write, b, npages, "child WRITE")
                try expectEqual(b.faults, 1, "child faults")
                if !migrate { try f.expectInts(try f.ints(ccpu, b.ptr, count: size / 4), neg, "child ptr after WRITE") }
            }
            child.exit()
            if case .failure(let e) = childResult { throw SelftestFailure(message: "child did not exit normally: \(e)", file: #fileID, line: #line) }
            try f.expectInts(try f.ints(f.cpu, b.ptr, count: size / 4), idx, "parent ptr (migrate \(migrate), thp \(useTHP))")
            try unmap(f, t)
        } }
    }

    static func anonWriteChildShared(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        let b = try f.anonBuffer(size: size, shared: true)
        try f.fill(b, idx)
        f.fillMirror(b, neg)
        let child = try f.process.fork()
        let childResult: Result<Void, Error> = Result {
            let ccpu = child.makeCPU()
            defer { ccpu.detach() }
            try f.expectInts(try f.ints(ccpu, b.ptr, count: size / 4), idx, "child ptr")
            try f.expectMirror(b, neg, "child mirror")
            let cfd = try f.module.open(minor: 0, mm: child.mm)
            defer { cfd.close() }
            try f.expectCommand(cfd, .write, b, npages, "child WRITE")
            try expectEqual(b.faults, 1, "child faults")
            try f.expectInts(try f.ints(ccpu, b.ptr, count: size / 4), neg, "child ptr after WRITE")
        }
        child.exit()
        if case .failure(let e) = childResult { throw SelftestFailure(message: "child did not exit normally: \(e)", file: #fileID, line: #line) }
        try f.expectInts(try f.ints(f.cpu, b.ptr, count: size / 4), neg, "parent sees the child's write")
    }

    // MARK: T10–T16

    static func tmpfile(_ f: Fixture, size: Int) -> ShmemFile { ShmemFile(machine: f.machine, size: UInt64(size), name: "hmm-test") }

    static func fileRead(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        let file = tmpfile(f, size: size)
        let bytes = (0..<(size / 4)).flatMap { withUnsafeBytes(of: Int32($0).littleEndian, Array.init) }
        try expectEqual(try file.pwrite(offset: 0, bytes: bytes), size, "pwrite")
        let p = try f.process.mmap(length: UInt64(size), prot: .read, flags: .shared, file: file)
        let b = Fixture.Buffer(ptr: p, size: size)
        try f.expectCommand(f.fd, .read, b, npages, "READ")
        try expectEqual(b.faults, 1, "faults")
        try f.expectMirror(b, idx)
        try f.process.munmap(p, length: UInt64(size))
    }

    static func fileWrite(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        let file = tmpfile(f, size: size)
        let p = try f.process.mmap(length: UInt64(size), prot: .readWrite, flags: .shared, file: file)
        let b = Fixture.Buffer(ptr: p, size: size)
        f.fillMirror(b, idx)
        try f.expectCommand(f.fd, .write, b, npages, "WRITE")
        try expectEqual(b.faults, 1, "faults")
        try f.expectInts(try f.ints(f.cpu, p, count: size / 4), idx, "ptr")
        let back = try file.pread(offset: 0, count: size)
        try expectEqual(back.count, size, "pread length")
        try f.expectInts(back.withUnsafeBytes { Array($0.bindMemory(to: Int32.self)) }, idx, "pread")
        try f.process.munmap(p, length: UInt64(size))
    }

    static func migrate(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        let b = try f.anonBuffer(size: size)
        try f.fill(b, idx)
        try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV")
        try f.expectMirror(b, idx)
    }

    static func migrateFilePrivate(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        let file = tmpfile(f, size: size)
        let p = try f.process.mmap(length: UInt64(size), prot: .readWrite, flags: .private, file: file)
        let b = Fixture.Buffer(ptr: p, size: size)
        try f.fill(b, idx)
        try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV")
        try f.expectMirror(b, idx)
        try f.process.munmap(p, length: UInt64(size))
    }

    static func migrateFault(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        let b = try f.anonBuffer(size: size)
        try f.fill(b, idx)
        try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV")
        try f.expectMirror(b, idx)
        try f.expectInts(try f.ints(f.cpu, b.ptr, count: size / 8), idx, "first half (faults back)")
        try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV again")
        try f.expectMirror(b, idx)
    }

    static func migrateRelease(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        let b = try f.anonBuffer(size: size)
        try f.fill(b, idx)
        try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV")
        try f.expectMirror(b, idx)
        try expectEqual(f.cmd(f.fd, .release, b, npages), 0, "RELEASE")
        try f.expectInts(try f.ints(f.cpu, b.ptr, count: size / 8), idx, "first half after RELEASE")
    }

    static func migrateShared(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        let b = try f.anonBuffer(size: size, shared: true)
        try expectEqual(f.cmd(f.fd, .migrateToDevice, b, npages), -Errno.ENOENT.rawValue, "MIGRATE_TO_DEV of shared memory")
    }

    // MARK: T18–T21

    static func migrateMultiple(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        for _ in 0..<10 {
            let b = try f.anonBuffer(size: size)
            try f.fill(b, idx)
            try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV")
            try f.expectMirror(b, idx)
            if f.variant == .deviceCoherent {
                try f.expectCommand(f.fd, .migrateToSystem, b, npages, "MIGRATE_TO_SYS")
            }
            try f.expectInts(try f.ints(f.cpu, b.ptr, count: size / 4), idx, "ptr")
            try f.process.munmap(b.ptr, length: UInt64(size))
        }
    }

    static func anonReadMultiple(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        for c in 0..<10 {
            let b = try f.anonBuffer(size: size)
            try f.fill(b) { Int32($0 + c) }
            try f.expectCommand(f.fd, .read, b, npages, "READ")
            try expectEqual(b.faults, 1, "faults")
            try f.expectMirror(b) { Int32($0 + c) }
            try f.process.munmap(b.ptr, length: UInt64(size))
        }
    }

    /// T20: a thread unmaps the second half while the device reads. Only a successful READ is
    /// checked. `rounds` lets the stress version run 1,000 of them.
    /// Return: how many rounds' READ succeeded and how many failed with EFAULT.
    @discardableResult
    public static func anonTeardown(_ f: Fixture, rounds: Int, seed: UInt64 = 1) throws -> (ok: Int, efault: Int) {
        let npages = f.npg, size = npages * f.pageSize
        var rng = SeededRNG(seed: seed)
        var ok = 0, efault = 0
        // The unmapper's delay is drawn log-uniformly from 1 µs to twice the fastest of three
        // uncontested READs in this build on this machine, so that both interleavings occur in
        // debug and release builds, on idle and busy machines: the unmap lands before, during and
        // after the READ's range fault.
        let calibration = try f.anonBuffer(size: size)
        try f.fill(calibration, idx)
        var fastest = UInt64.max
        for _ in 0..<3 {
            let start = monotonicNanoseconds()
            try f.expectCommand(f.fd, .read, calibration, npages, "calibration READ")
            fastest = min(fastest, monotonicNanoseconds() - start)
        }
        try f.process.munmap(calibration.ptr, length: UInt64(size))
        let span = max(32_000, 2 * fastest) / 1_000
        let octaves = Double(UInt64.bitWidth - span.leadingZeroBitCount - 1) // log2 of the window in µs
        for c in 0..<rounds {
            let b = try f.anonBuffer(size: size)
            try f.fill(b) { Int32($0 + c) }
            let u = Double(rng.next() >> 11) / Double(1 << 53)
            let x = u * octaves, k = Int(x) // 2^x µs, the fraction interpolated linearly
            let delay = UInt64(1_000 * Double(1 << k) * (1 + x - Double(k)))
            let half = b.ptr + UInt64(size / 2)
            let t = ModelThread.spawn(name: "unmapper") {
                syncSleep(nanoseconds: delay)
                try? f.process.munmap(half, length: UInt64(size / 2))
            }
            f.checkAfterEveryCommand = false // the unmapper runs concurrently
            let ret = f.cmd(f.fd, .read, b, npages)
            t.join()
            f.checkAfterEveryCommand = true
            if ret == 0 {
                ok += 1
                try expectEqual(b.cpages, UInt64(npages), "cpages (round \(c))")
                try expectEqual(b.faults, 1, "faults (round \(c))")
                try f.expectMirror(b, { Int32($0 + c) }, "mirror (round \(c))")
            } else {
                efault += 1
                try expect(ret == -Errno.EFAULT.rawValue, "READ failed with \(ret) (round \(c)), expected success or -EFAULT")
            }
            try f.process.munmap(b.ptr, length: UInt64(size / 2)) // the first half (the kernel test leaks it)
            let problems = f.machine.checkInvariants() + f.module.checkInvariants()
            try expect(problems.isEmpty, "invariants (round \(c)): \(problems)")
        }
        return (ok, efault)
    }

    static func mixedmap(_ f: Fixture) throws {
        let p = try f.fd.mmapDevice(length: UInt64(f.pageSize), prot: .readWrite, flags: .private)
        let b = Fixture.Buffer(ptr: p, size: f.pageSize, mirrorSize: 1)
        try expectEqual(f.cmd(f.fd, .snapshot, b, 1), 0, "SNAPSHOT")
        try expectEqual(b.cpages, 1, "cpages")
        try expectEqual(b.mirror[byte: 0], DmirrorProt.read, "snapshot byte")
        try f.process.munmap(p, length: UInt64(f.pageSize))
    }

    // MARK: T25–T28

    static func exclusive(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        let b = try f.anonBuffer(size: size)
        try f.fill(b, idx)
        try f.expectCommand(f.fd, .exclusive, b, npages, "EXCLUSIVE")
        try f.expectMirror(b, idx)
        for i in 0..<(size / 4) {
            let a = b.ptr + UInt64(i * 4)
            let v: Int32 = try f.cpu.load(a)
            try expectEqual(v, Int32(i), "int \(i) before increment")
            try f.cpu.store(a, v + 1)
        }
        try f.expectInts(try f.ints(f.cpu, b.ptr, count: size / 4), { Int32($0 + 1) }, "ptr after increment")
        try expectEqual(f.cmd(f.fd, .checkExclusive, b, npages), 0, "CHECK_EXCLUSIVE")
    }

    static func exclusiveMprotect(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        let b = try f.anonBuffer(size: size)
        try f.fill(b, idx)
        try f.expectCommand(f.fd, .exclusive, b, npages, "EXCLUSIVE")
        try f.expectMirror(b, idx)
        try f.process.mprotect(b.ptr, length: UInt64(size), prot: .read)
        try expectEqual(f.cmd(f.fd, .write, b, npages), -Errno.EPERM.rawValue, "WRITE after mprotect")
    }

    static func gupTest(_ f: Fixture) throws {
        let npages = 4, size = npages * f.pageSize
        let b = try f.anonBuffer(size: size)
        try f.fill(b, idx)
        try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV")
        try f.expectMirror(b, idx)
        let mm = f.process.mm
        let ps = UInt64(f.pageSize)
        // GUP_BASIC_TEST, GUP_FAST_BENCHMARK: get_user_pages with FOLL_WRITE, then put.
        for i: UInt64 in [0, 1] { mm.putUserPages(try mm.getUserPages(b.ptr + i * ps, count: 1, flags: .write)) }
        // PIN_FAST_BENCHMARK with FOLL_LONGTERM, PIN_LONGTERM_BENCHMARK: long-term pins.
        for i: UInt64 in [2, 3] { mm.unpinUserPages(try mm.getUserPages(b.ptr + i * ps, count: 1, flags: [.write, .pin, .longterm])) }
        let s = Fixture.Buffer(ptr: b.ptr, size: size, mirrorSize: npages)
        try f.expectCommand(f.fd, .snapshot, s, npages, "SNAPSHOT")
        let want: [UInt8] = f.variant == .devicePrivate ? [0x02, 0x02, 0x02, 0x02] : [0x42, 0x42, 0x02, 0x02]
        try expectEqual((0..<npages).map { s.mirror[byte: $0] }, want, "snapshot bytes")
        try f.expectInts(try f.ints(f.cpu, b.ptr, count: size / 4), idx, "ptr")
    }
}
