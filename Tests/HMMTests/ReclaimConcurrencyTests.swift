import XCTest
@testable import Conformance
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

/// Reclaim racing everything else on the same pages (issue 15), bounded by iterations: on a
/// 16 MiB machine with swap, kswapd and a streaming thread keep memory short (direct reclaim
/// from every faulting thread), one thread pages the shared pages out again and again, while a
/// device writes and reads them, two CPU threads store and load their own pages, one thread
/// migrates the range to the device and back, and one takes exclusive access. Every read sees
/// its writer's value, every byte ends as the reference model says, and no device entry names
/// a page that was swapped or freed (dmirror's invariants).
final class ReclaimConcurrencyTests: XCTestCase {
    func testReclaimRacesFaultsDevicesMigrationAndExclusiveAccess() throws {
        let env = try HMMEnv(mib: 16, swapPages: 16_384)
        let pages = 16, ps = Int(pageSize), iterations = 150
        let a = try env.anon(pages)
        for p in 0..<pages { try env.cpu.store(a + UInt64(p * ps), UInt64(p)) }
        let streamPages = 6_000   // about 1.5 times RAM
        let stream = try env.anon(streamPages)
        env.machine.startKswapd()
        // Owners: pages 0–3 device writer, 4–7 CPU writer 0, 8–11 CPU writer 1, 12–15 nobody.
        let dev = try env.module.open(minor: 1, mm: env.mm)
        let migrator = try env.module.open(minor: 0, mm: env.mm)
        let exclusive = try env.module.open(minor: 0, mm: env.mm)
        let torn = AtomicCounter(0), stale = AtomicCounter(0), unexpected = AtomicCounter(0)
        let notes = Lock("notes"); var noteList: [String] = []
        func note(_ s: String) { unexpected.add(1); notes.withLock { noteList.append(s) } }

        var threads: [ModelThread] = []
        threads.append(ModelThread.spawn(name: "device") {
            let wbuf = DmirrorBuffer(size: 4 * ps), rbuf = DmirrorBuffer(size: pages * ps)
            for v in 1...UInt32(iterations) {
                for k in 0..<(4 * ps / 4) { wbuf[int: k] = Int32(bitPattern: v << 8 | UInt32(k / (ps / 4))) }
                var w = DmirrorCmd(addr: a, npages: 4)
                do { try dev.ioctl(.write, &w, buffer: wbuf) } catch { note("device WRITE: \(error)") }
                var r = DmirrorCmd(addr: a, npages: UInt64(pages))
                do { try dev.ioctl(.read, &r, buffer: rbuf) } catch { note("device READ: \(error)"); continue }
                for p in 0..<4 {
                    let want = Int32(bitPattern: v << 8 | UInt32(p))
                    if let (k, got) = firstWrongInt(rbuf, page: p, pageInts: ps / 4, want: want) {
                        torn.add(1)
                        notes.withLock { noteList.append("device read page \(p) int \(k): \(got), wrote \(want)") }
                    }
                }
            }
        })
        for t in 0..<2 {
            threads.append(env.process.spawnThread(name: "cpu\(t)") { cpu in
                for v in 1...UInt64(iterations) {
                    for p in (4 + 4 * t)..<(8 + 4 * t) {
                        do { try cpu.store(a + UInt64(p * ps), v << 32 | UInt64(p)) } catch { note("cpu store: \(error)") }
                        if let r = try? cpu.load(a + UInt64(p * ps), as: UInt64.self), r != v << 32 | UInt64(p) {
                            stale.add(1)
                            notes.withLock { noteList.append("cpu\(t) page \(p): stored \(v), loaded \(r >> 32)") }
                        }
                    }
                }
            })
        }
        threads.append(env.process.spawnThread(name: "stream") { cpu in
            for round in 0..<2 {
                for p in 0..<streamPages {
                    do { try cpu.store(stream + UInt64(p * ps), UInt64(round << 32 | p)) } catch { note("stream store: \(error)"); return }
                }
            }
        })
        threads.append(ModelThread.spawn(name: "pageout") {
            for _ in 0..<iterations {
                do { try env.process.madvise(a, length: UInt64(pages * ps), advice: .pageout) } catch { note("PAGEOUT: \(error)") }
            }
        })
        threads.append(ModelThread.spawn(name: "migrator") {
            let buf = DmirrorBuffer(size: pages * ps)
            for _ in 0..<(iterations / 3) {
                var cmd = DmirrorCmd(addr: a, npages: UInt64(pages))
                // Pages swapped out or busy elsewhere stay behind (ENOENT from the read-back).
                do { try migrator.ioctl(.migrateToDevice, &cmd, buffer: buf) } catch let e as Errno where e == .ENOENT {} catch { note("TO_DEV: \(error)") }
                cmd = DmirrorCmd(addr: a, npages: UInt64(pages))
                do { try migrator.ioctl(.migrateToSystem, &cmd) } catch { note("TO_SYS: \(error)") }
            }
        })
        threads.append(ModelThread.spawn(name: "exclusive") {
            var rng = SeededRNG(seed: 5)
            let buf = DmirrorBuffer(size: ps)
            for _ in 0..<iterations {
                let p = Int(rng.next() % UInt64(pages))
                var cmd = DmirrorCmd(addr: a + UInt64(p * ps), npages: 1)
                do { try exclusive.ioctl(.exclusive, &cmd, buffer: buf) } catch let e as Errno where e == .EBUSY || e == .ENOENT {} catch { note("EXCLUSIVE: \(error)") }
            }
        })
        threads.forEach { $0.join() }
        env.machine.stopKswapd()

        XCTAssertEqual(unexpected.load(), 0, "unexpected errors: \(noteList.prefix(20))")
        XCTAssertEqual(torn.load(), 0, "device reads that missed the device's own write: \(noteList.prefix(20))")
        XCTAssertEqual(stale.load(), 0, "CPU read-after-write mismatches: \(noteList.prefix(20))")
        XCTAssertGreaterThan(env.machine.stats[.pswpout], 0)
        XCTAssertGreaterThan(env.machine.stats[.pswpin], 0)
        XCTAssertEqual(env.problems(), [])
        for p in 0..<pages {
            let got = try env.cpu.load(a + UInt64(p * ps), as: UInt64.self)
            let want: UInt64
            switch p {
            case 0..<4: want = UInt64(UInt32(iterations) << 8 | UInt32(p)) | UInt64(UInt32(iterations) << 8 | UInt32(p)) << 32
            case 4..<12: want = UInt64(iterations) << 32 | UInt64(p)
            default: want = UInt64(p)
            }
            XCTAssertEqual(got, want, "page \(p)")
        }
        for p in stride(from: 0, to: streamPages, by: 97) {
            XCTAssertEqual(try env.cpu.load(stream + UInt64(p * ps), as: UInt64.self), UInt64(1 << 32 | p), "stream page \(p)")
        }
        print("reclaim races: \(env.machine.stats[.pswpout]) out, \(env.machine.stats[.pswpin]) in, \(env.machine.stats[.pgstealKswapd]) by kswapd, \(env.machine.stats[.pgstealDirect]) direct, \(env.machine.stats[.pagesMigrated]) migrated, \(env.machine.stats[.faultDeviceExclusive]) exclusive restores")
        env.finish([dev, migrator, exclusive])
    }
}
