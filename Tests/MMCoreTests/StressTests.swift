import XCTest
@testable import MMCore
import MMSync

/// CPU threads store and load while other threads migrate, fork, mprotect and munmap the same
/// pages. Bounded by iterations. Checks: no torn value, no value going backwards (a store lost
/// to a stale translation during migration or COW), no store landing after mprotect or munmap
/// returned, and every invariant at the end.
final class StressTests: XCTestCase {
    let pages: UInt64 = 32

    func testCPUsRaceMigrationForkMprotectMunmap() throws {
        let env = try Env(mib: 128, checkEveryOperation: false)
        let region = try env.anon(Int(pages))
        let scratch = try env.anon(1)
        let stop = AtomicCounter(0)
        let lost = AtomicCounter(0), torn = AtomicCounter(0), late = AtomicCounter(0)
        let mutatorRounds = 240
        var lastWritten = [UInt64](repeating: 0, count: 2)

        // Two writers own word 0 and word 1 of every page; values are tag << 48 | counter.
        let writers = (0..<2).map { t in
            env.process.spawnThread(name: "writer\(t)") { cpu in
                let tag = UInt64(t + 1) << 48
                var i: UInt64 = 0
                while stop.load() == 0 {
                    i += 1
                    cpu.run { cpu in
                        for pg in 0..<self.pages { try? cpu.store(region + pg * pageSize + UInt64(t) * 8, tag | i) }
                    }
                }
                lastWritten[t] = i
            }
        }
        // A reader checks tags and per-word monotonicity.
        let reader = env.process.spawnThread(name: "reader") { cpu in
            var seen = [UInt64](repeating: 0, count: Int(self.pages) * 2)
            while stop.load() == 0 {
                for pg in 0..<self.pages {
                    for t in 0..<2 {
                        guard let v = try? cpu.load(region + pg * pageSize + UInt64(t) * 8, as: UInt64.self) else { continue }
                        if v == 0 { continue }
                        if v >> 48 != UInt64(t + 1) { torn.add(1); continue }
                        let c = v & 0xFFFF_FFFF_FFFF
                        let k = Int(pg) * 2 + t
                        if c < seen[k] { lost.add(1) }
                        seen[k] = max(seen[k], c)
                    }
                }
            }
        }
        // A scratch writer hammers one page that the mutator keeps write-protecting.
        let scratchWriter = env.process.spawnThread(name: "scratch") { cpu in
            var i: UInt64 = 0
            while stop.load() == 0 {
                i += 1
                cpu.run { cpu in for _ in 0..<64 { try? cpu.store(scratch, i) } }
            }
        }

        let mutatorCPU = env.process.makeCPU()
        var rng = SeededRNG(seed: 7)
        var rounds = 0
        while rounds < mutatorRounds {
            rounds += 1
            // Migrate a few random pages of the region (a kernel thread, no mmap lock).
            let pick = (0..<4).map { _ in region + UInt64.random(in: 0..<pages, using: &rng) * pageSize }
            let pfns = pick.compactMap { (try? env.mm.pagemap($0, count: 1))?.first }.filter(\.isPresent).map(\.pfn)
            _ = env.machine.migratePages(pfns)
            if rounds % 10 == 0 {
                let child = try env.process.fork()
                let ccpu = child.makeCPU()
                for pg in 0..<pages {
                    if let v = try? ccpu.load(region + pg * pageSize, as: UInt64.self), v != 0, v >> 48 != 1 { torn.add(1) }
                }
                ccpu.detach()
                child.exit()
            }
            if rounds % 3 == 0 {
                // After mprotect(PROT_READ) returns, no store may land on the page.
                try env.process.mprotect(scratch, length: pageSize, prot: .read)
                let v1: UInt64 = (try? mutatorCPU.load(scratch)) ?? 0
                syncSleep(nanoseconds: 200_000)
                let v2: UInt64 = (try? mutatorCPU.load(scratch)) ?? 0
                if v1 != v2 { late.add(1) }
                try env.process.mprotect(scratch, length: pageSize, prot: .readWrite)
            }
            if rounds % 25 == 0 {
                // munmap + remap a page of the region: afterwards it reads as fresh memory.
                let a = region + UInt64.random(in: 0..<pages, using: &rng) * pageSize
                try env.process.munmap(a, length: pageSize)
                _ = try env.process.mmap(address: a, length: pageSize, prot: .readWrite, flags: [.private, .anonymous, .fixed])
            }
        }
        stop.store(1)
        writers.forEach { $0.join() }
        reader.join(); scratchWriter.join()
        mutatorCPU.detach()

        XCTAssertEqual(torn.load(), 0, "torn values")
        XCTAssertEqual(lost.load(), 0, "values went backwards")
        XCTAssertEqual(late.load(), 0, "stores landed after mprotect returned")
        XCTAssertGreaterThan(env.machine.stats[.pagesMigrated], 0)
        // Every surviving word holds the writer's last value.
        let check = env.process.makeCPU()
        for pg in 0..<pages {
            for t in 0..<2 {
                let v: UInt64 = try check.load(region + pg * pageSize + UInt64(t) * 8)
                // Zero only if the page was remapped after the writer's last pass.
                if v != 0 { XCTAssertEqual(v, UInt64(t + 1) << 48 | lastWritten[t], "page \(pg) word \(t)") }
            }
        }
        check.detach()
        // Liveness: every writer kept making passes while the mutator migrated, forked,
        // mprotected and remapped under it (a writer starved by a lost wakeup or a livelock in
        // the fault path would stop short).
        XCTAssertTrue(lastWritten.allSatisfy { $0 >= 100 }, "writer passes: \(lastWritten)")
        print("stress: \(lastWritten) writer passes, \(rounds) mutator rounds, \(env.machine.stats[.pagesMigrated]) migrations, \(env.machine.stats[.tlbShootdown]) shootdowns, \(env.machine.stats[.faultMigrationWait]) migration waits")
        env.check()
        env.teardown()
    }

    /// THP under the same kind of race: two CPU writers and a reader on two THPs while the
    /// mutator migrates pages (whole THPs, through PMD migration entries), mprotects half a
    /// THP and back (splitting PMDs, migration entries too), collapses 2 MiB (MADV_COLLAPSE),
    /// forks (sharing PMDs), zaps one page (MADV_DONTNEED) and now and then maps the region
    /// afresh (new THPs on the writers' next faults). Same checks as above.
    func testCPUsRaceTHPSplitsMigrationForkMprotect() throws {
        let env = try Env(mib: 128, checkEveryOperation: false)
        env.memory.thp.mode = .madvise
        let huge: UInt64 = 2, stride: UInt64 = 8
        let raw = try env.anon(Int((huge + 1) * pmdSize / pageSize))
        let region = (raw + pmdSize - 1) & pmdMask
        try env.process.madvise(region, length: huge * pmdSize, advice: .hugePage)
        let slots = huge * pmdSize / pageSize / stride
        let stop = AtomicCounter(0)
        let lost = AtomicCounter(0), torn = AtomicCounter(0)
        var lastWritten = [UInt64](repeating: 0, count: 2)
        func slot(_ k: UInt64, _ t: Int) -> UInt64 { region + k * stride * pageSize + UInt64(t) * 8 }
        let writers = (0..<2).map { t in
            env.process.spawnThread(name: "writer\(t)") { cpu in
                let tag = UInt64(t + 1) << 48
                var i: UInt64 = 0
                while stop.load() == 0 {
                    i += 1
                    cpu.run { cpu in for k in 0..<slots { try? cpu.store(slot(k, t), tag | i) } }
                }
                lastWritten[t] = i
            }
        }
        let reader = env.process.spawnThread(name: "reader") { cpu in
            var seen = [UInt64](repeating: 0, count: Int(slots) * 2)
            while stop.load() == 0 {
                for k in 0..<slots {
                    for t in 0..<2 {
                        guard let v = try? cpu.load(slot(k, t), as: UInt64.self), v != 0 else { continue }
                        if v >> 48 != UInt64(t + 1) { torn.add(1); continue }
                        let c = v & 0xFFFF_FFFF_FFFF
                        let i = Int(k) * 2 + t
                        if c < seen[i] { lost.add(1) }
                        seen[i] = max(seen[i], c)
                    }
                }
            }
        }
        // The migrator runs on its own thread, so that migrations (PMD and PTE migration
        // entries) overlap the mprotects, collapses, zaps, forks and remaps below.
        let migrator = ModelThread.spawn(name: "migrator") {
            var rng = SeededRNG(seed: 12)
            while stop.load() == 0 {
                let pick = (0..<3).map { _ in region + UInt64.random(in: 0..<(huge * pmdSize / pageSize), using: &rng) * pageSize }
                let pfns = pick.compactMap { (try? env.mm.pagemap($0, count: 1))?.first }.filter(\.isPresent).map(\.pfn)
                _ = env.machine.migratePages(pfns)
            }
        }
        var collapseErrors: [Errno] = []
        for round in 1...1200 {
            if round % 4 == 0 {
                let h = region + UInt64(round / 4 % Int(huge)) * pmdSize
                try env.process.mprotect(h + pmdSize / 2, length: pmdSize / 2, prot: .read)
                try env.process.mprotect(h + pmdSize / 2, length: pmdSize / 2, prot: .readWrite)
            }
            if round % 7 == 0 {
                // MADV_COLLAPSE of one 2 MiB: EAGAIN (a page locked by a migration, or a
                // reference of a racing walker) and EINVAL (a migration entry met) are answers.
                let h = region + UInt64(round / 7 % Int(huge)) * pmdSize
                do { try env.process.madvise(h, length: pmdSize, advice: .collapse) } catch {
                    if error != .EAGAIN && error != .EINVAL { collapseErrors.append(error) }
                }
            }
            if round % 13 == 0 {
                // A page nobody writes (slots are 8 pages apart): the PMD splits around it.
                try env.process.madvise(region + UInt64(round / 13 % Int(huge)) * pmdSize + pageSize, length: pageSize, advice: .dontNeed)
            }
            if round % 10 == 0 {
                let child = try env.process.fork()
                let ccpu = child.makeCPU()
                for k in 0..<slots {
                    if let v = try? ccpu.load(slot(k, 0), as: UInt64.self), v != 0, v >> 48 != 1 { torn.add(1) }
                }
                try? ccpu.store(slot(0, 0) + 16, UInt64(0xdead))   // a COW write in the child
                ccpu.detach()
                child.exit()
            }
            if round % 20 == 0 {
                // A fresh mapping: the writers' next faults make new THPs.
                try env.process.munmap(region, length: huge * pmdSize)
                _ = try env.process.mmap(address: region, length: huge * pmdSize, prot: .readWrite, flags: [.private, .anonymous, .fixed])
                try env.process.madvise(region, length: huge * pmdSize, advice: .hugePage)
            }
        }
        stop.store(1)
        writers.forEach { $0.join() }
        reader.join()
        migrator.join()
        XCTAssertEqual(torn.load(), 0, "torn values")
        XCTAssertEqual(lost.load(), 0, "values went backwards")
        XCTAssertGreaterThan(env.machine.stats[.thpFaultAlloc], 20, "new THPs after each fresh mapping")
        XCTAssertGreaterThan(env.machine.stats[.thpSplitPMD], 0)
        XCTAssertGreaterThan(env.machine.stats[.thpMigrationSuccess], 0, "THPs migrated whole, through PMD migration entries")
        XCTAssertGreaterThan(env.machine.stats[.thpCollapseAlloc], 0, "2 MiB collapsed while the CPUs wrote")
        XCTAssertEqual(collapseErrors, [])
        let check = env.process.makeCPU()
        for k in 0..<slots {
            for t in 0..<2 {
                let v: UInt64 = try check.load(slot(k, t))
                if v != 0 { XCTAssertEqual(v, UInt64(t + 1) << 48 | lastWritten[t], "slot \(k) word \(t)") }
            }
        }
        check.detach()
        XCTAssertTrue(lastWritten.allSatisfy { $0 >= 20 }, "writer passes: \(lastWritten)")
        print("thp stress: \(lastWritten) writer passes, \(env.machine.stats[.thpFaultAlloc]) THP faults, \(env.machine.stats[.thpSplitPMD]) PMD splits, \(env.machine.stats[.thpSplitPage]) folio splits, \(env.machine.stats[.pagesMigrated]) migrations")
        env.check()
        env.teardown()
    }
}
