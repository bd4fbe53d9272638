import XCTest
@testable import Conformance
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

final class HMMConcurrencyTests: XCTestCase {
    /// T20 for 1,000 rounds: no failure, no leaked frame, no device entry left behind, and both
    /// interleavings seen (a READ that finished before the unmap and one that hit it); every
    /// round's outcome is checked inside `anonTeardown` (cpages, faults and bytes, or EFAULT).
    func testAnonTeardownThousandRounds() throws {
        for variant in Variant.allCases {
            let f = try Fixture(variant: variant)
            let (ok, efault) = try SelftestSuite.anonTeardown(f, rounds: 1000, seed: 42)
            print("anon_teardown \(variant.rawValue): 1000 rounds, \(ok) reads completed, \(efault) hit the unmap (EFAULT)")
            XCTAssertGreaterThan(ok, 0, "no READ finished before the unmap")
            XCTAssertGreaterThan(efault, 0, "the unmap never raced the read")
            try f.teardown()
        }
    }

    /// Two device threads READ and WRITE, two CPU threads store and load, one thread migrates
    /// the range to a device and back, one makes pages exclusive, all on the same 16 pages.
    /// Each page has one writer; at the end every byte equals the reference model.
    func testDevicesCPUsMigrationAndExclusiveOnTheSamePages() throws {
        let env = try HMMEnv(mib: 256)
        let pages = 16
        let a = try env.anon(pages)
        let ps = Int(pageSize)
        let iterations = 400
        // Owners: pages 0–3 device writer, 4–7 CPU writer 0, 8–11 CPU writer 1, 12–15 nobody.
        let devWriter = try env.module.open(minor: 1, mm: env.mm)
        // Reader and writer share one fd: device accesses through one context are ordered by its
        // lock, as a real device orders its own reads and writes; two contexts may tear.
        let devReader = devWriter
        let migrator = try env.module.open(minor: 0, mm: env.mm)
        let exclusive = try env.module.open(minor: 0, mm: env.mm)
        let torn = AtomicCounter(0), stale = AtomicCounter(0), unexpected = AtomicCounter(0)
        let notes = Lock("notes"); var noteList: [String] = []
        var lastDevice: UInt32 = 0
        var lastCPU: [UInt32] = [0, 0]

        var threads: [ModelThread] = []
        threads.append(ModelThread.spawn(name: "device-writer") {
            let buf = DmirrorBuffer(size: 4 * ps)
            for v in 1...UInt32(iterations) {
                for k in 0..<(4 * ps / 4) { buf[int: k] = Int32(bitPattern: v << 8 | UInt32(k / (ps / 4))) }
                var cmd = DmirrorCmd(addr: a, npages: 4)
                do { try devWriter.ioctl(.write, &cmd, buffer: buf); lastDevice = v } catch { unexpected.add(1); notes.withLock { noteList.append("device WRITE: \(error)") } }
            }
        })
        threads.append(ModelThread.spawn(name: "device-reader") {
            let buf = DmirrorBuffer(size: pages * ps)
            for _ in 0..<iterations {
                var cmd = DmirrorCmd(addr: a, npages: UInt64(pages))
                do { try devReader.ioctl(.read, &cmd, buffer: buf) } catch { unexpected.add(1); notes.withLock { noteList.append("device READ: \(error)") }; continue }
                // A device-written page is never torn: all its ints carry one version.
                for p in 0..<4 {
                    let first = buf[int: p * ps / 4]
                    if let (k, got) = firstWrongInt(buf, page: p, pageInts: ps / 4, want: first) {
                        torn.add(1)
                        notes.withLock { noteList.append("device read page \(p): int 0 = \(first), int \(k) = \(got)") }
                    }
                }
            }
        })
        for t in 0..<2 {
            threads.append(env.process.spawnThread(name: "cpu\(t)") { cpu in
                for v in 1...UInt32(iterations) {
                    for p in (4 + 4 * t)..<(8 + 4 * t) {
                        do { try cpu.store(a + UInt64(p * ps), UInt64(v) << 32 | UInt64(p)) } catch { unexpected.add(1); notes.withLock { noteList.append("cpu store: \(error)") } }
                        if let r = try? cpu.load(a + UInt64(p * ps), as: UInt64.self), r != UInt64(v) << 32 | UInt64(p) {
                            stale.add(1)
                            notes.withLock { noteList.append("cpu\(t) page \(p): stored \(v), loaded \(r >> 32)") }
                        }
                    }
                    lastCPU[t] = v
                }
            })
        }
        threads.append(ModelThread.spawn(name: "migrator") {
            let buf = DmirrorBuffer(size: pages * ps)
            for _ in 0..<(iterations / 3) {
                var cmd = DmirrorCmd(addr: a, npages: UInt64(pages))
                // Pages busy elsewhere may stay behind (ENOENT); that is allowed.
                do { try migrator.ioctl(.migrateToDevice, &cmd, buffer: buf) } catch let e as Errno where e == .ENOENT {} catch { unexpected.add(1); notes.withLock { noteList.append("TO_DEV: \(error)") } }
                cmd = DmirrorCmd(addr: a, npages: UInt64(pages))
                do { try migrator.ioctl(.migrateToSystem, &cmd) } catch { unexpected.add(1); notes.withLock { noteList.append("TO_SYS: \(error)") } }
            }
        })
        threads.append(ModelThread.spawn(name: "exclusive") {
            var rng = SeededRNG(seed: 3)
            let buf = DmirrorBuffer(size: ps)
            for _ in 0..<iterations {
                let p = Int(rng.next() % UInt64(pages))
                var cmd = DmirrorCmd(addr: a + UInt64(p * ps), npages: 1)
                // ENOENT: a CPU access or a migration revoked the atomic entry before the read-back.
                do { try exclusive.ioctl(.exclusive, &cmd, buffer: buf) } catch let e as Errno where e == .EBUSY || e == .ENOENT {} catch { unexpected.add(1); notes.withLock { noteList.append("EXCLUSIVE: \(error)") } }
            }
        })
        threads.forEach { $0.join() }

        XCTAssertEqual(unexpected.load(), 0, "unexpected errors: \(noteList)")
        XCTAssertEqual(torn.load(), 0, "torn device reads: \(noteList)")
        XCTAssertEqual(stale.load(), 0, "CPU read-after-write mismatches: \(noteList)")
        XCTAssertEqual(lastDevice, UInt32(iterations))
        XCTAssertEqual(lastCPU, [UInt32(iterations), UInt32(iterations)])
        // The reference model: every byte of every page.
        let bytes = try env.cpu.read(a, count: pages * ps)
        bytes.withUnsafeBytes { raw in
            let ints = raw.bindMemory(to: UInt32.self)
            for p in 0..<pages {
                for k in 0..<(ps / 4) {
                    let v = ints[p * ps / 4 + k]
                    let want: UInt32
                    switch p {
                    case 0..<4: want = UInt32(iterations) << 8 | UInt32(p)
                    case 4..<12: want = k == 0 ? UInt32(p) : (k == 1 ? UInt32(iterations) : 0)
                    default: want = 0
                    }
                    if v != want { XCTFail("page \(p) int \(k): \(v), expected \(want)"); return }
                }
            }
        }
        print("hmm concurrency: \(env.machine.stats[.pagesMigrated]) pages migrated, \(env.machine.stats[.faultDevicePrivate]) device-private faults, \(env.machine.stats[.faultDeviceExclusive]) exclusive restores, \(env.machine.stats[.notifierRetries]) notifier retries")
        env.finish([devWriter, migrator, exclusive])
    }

    /// Device THP under races (issue 14): four CPU threads store and load their own pages of
    /// two THPs; one thread migrates the 4 MiB to device 0 and back (whole folios through
    /// device-private PMDs; the CPUs' faults bring them back too); one zaps unowned pages
    /// (MADV_DONTNEED: PMD splits, partial zaps of device PMDs) and collapses the 2 MiB again
    /// (MADV_COLLAPSE). Bounded by iterations. Every load sees the thread's own last store, and
    /// at the end every page holds its writer's last value (unowned pages: 0 or their index).
    func testCPUsWriteTHPsWhileADeviceMigratesAndAThreadSplitsAndCollapses() throws {
        let env = try HMMEnv(mib: 256)
        env.memory.thp.mode = .madvise
        let raw = try env.process.mmap(length: 3 * pmdSize, prot: .readWrite, flags: [.private, .anonymous])
        let a = (raw + pmdSize - 1) & pmdMask
        try env.process.madvise(a, length: 2 * pmdSize, advice: .hugePage)
        let pages = 1024, ps = Int(pageSize), iterations = 300
        for p in 0..<pages { try env.cpu.store(a + UInt64(p * ps), UInt64(p)) }
        XCTAssertEqual(env.machine.stats[.thpFaultAlloc], 2)
        // Writer w owns pages w, w+16, w+32, …; pages ≡ 4…15 (mod 16) belong to nobody.
        func owned(_ w: Int) -> [Int] { Array(stride(from: w, to: pages, by: 16)) }
        let migrator = try env.module.open(minor: 0, mm: env.mm)
        let unexpected = AtomicCounter(0), stale = AtomicCounter(0)
        let notes = Lock("notes"); var noteList: [String] = []
        func note(_ s: String) { unexpected.add(1); notes.withLock { noteList.append(s) } }
        var threads: [ModelThread] = []
        for w in 0..<4 {
            threads.append(env.process.spawnThread(name: "cpu\(w)") { cpu in
                for v in 1...UInt64(iterations) {
                    for p in owned(w) {
                        let addr = a + UInt64(p * ps)
                        do { try cpu.store(addr, v << 32 | UInt64(p)) } catch { note("cpu\(w) store: \(error)") }
                        if let r = try? cpu.load(addr, as: UInt64.self), r != v << 32 | UInt64(p) {
                            stale.add(1)
                            notes.withLock { noteList.append("cpu\(w) page \(p): stored \(v), loaded \(r >> 32)") }
                        }
                    }
                }
            })
        }
        threads.append(ModelThread.spawn(name: "device") {
            let buf = DmirrorBuffer(size: pages * ps)
            for _ in 0..<(iterations / 4) {
                var cmd = DmirrorCmd(addr: a, npages: UInt64(pages))
                // A page busy elsewhere (locked by a fault, a collapse) may stay behind: ENOENT.
                do { try migrator.ioctl(.migrateToDevice, &cmd, buffer: buf) } catch let e as Errno where e == .ENOENT {} catch { note("TO_DEV: \(error)") }
                cmd = DmirrorCmd(addr: a, npages: UInt64(pages))
                do { try migrator.ioctl(.migrateToSystem, &cmd) } catch { note("TO_SYS: \(error)") }
            }
        })
        threads.append(env.process.spawnThread(name: "splitter") { _ in
            var rng = SeededRNG(seed: 14)
            for round in 0..<(iterations / 2) {
                let h = a + UInt64(round % 2) * pmdSize
                let p = Int(rng.next() % 64) * 16 + 4 + Int(rng.next() % 12)   // an unowned page
                do { try env.process.madvise(h + UInt64(p % 512 * ps), length: pageSize, advice: .dontNeed) } catch { note("DONTNEED: \(error)") }
                // EAGAIN (a page locked or referenced by a migration or a fault) and EINVAL (a
                // migration or device-private entry met) are answers, as in 7.2.
                do { try env.process.madvise(h, length: pmdSize, advice: .collapse) } catch let e as Errno where e == .EAGAIN || e == .EINVAL {} catch { note("COLLAPSE: \(error)") }
            }
        })
        threads.forEach { $0.join() }
        XCTAssertEqual(unexpected.load(), 0, "unexpected errors: \(noteList)")
        XCTAssertEqual(stale.load(), 0, "CPU read-after-write mismatches: \(noteList)")
        for p in 0..<pages {
            let v = try env.cpu.load(a + UInt64(p * ps), as: UInt64.self)
            if p % 16 < 4 {
                XCTAssertEqual(v, UInt64(iterations) << 32 | UInt64(p), "page \(p)")
            } else {
                XCTAssertTrue(v == UInt64(p) || v == 0, "unowned page \(p): \(v)")
            }
        }
        print("device THP race: \(env.machine.stats[.thpFaultAlloc]) THP allocations, \(env.machine.stats[.thpSplitPMD]) PMD splits, \(env.machine.stats[.thpSplitPage]) folio splits, \(env.machine.stats[.thpCollapseAlloc]) collapses, \(env.machine.stats[.pagesMigrated]) pages migrated, \(env.machine.stats[.faultDevicePrivate]) device-private faults")
        env.finish([migrator])
    }
}
