import XCTest
@testable import MMCore
import MMSync

/// The OOM killer (`mm/oom_kill.c`): when reclaim cannot free a frame, the address space with
/// the highest `oom_badness` is killed and reaped, and the allocation goes on.
final class OOMKillTests: XCTestCase {
    /// Fills `pages` pages from `base`, one word each (value: page index + `plus`).
    private func touch(_ cpu: CPU, _ base: UInt64, pages: Int, plus: UInt64 = 0) throws(AccessFault) {
        for i in 0..<pages { try cpu.store(base + UInt64(i) * pageSize, UInt64(i) + plus) }
    }

    func testTheLargestProcessIsKilledAndTheAllocationGoesOn() throws {
        let env = try Env(mib: 16, checkEveryOperation: false)
        env.machine.oomKillerEnabled = true
        let free = env.memory.freeFrames
        let big = try env.anon(2560)
        try touch(env.cpu, big, pages: 2560)
        let other = try Process(machine: env.machine)
        let cpu2 = other.makeCPU()
        let want = free - 2560
        let a = try other.mmap(length: UInt64(want) * pageSize, prot: .readWrite, flags: [.private, .anonymous])
        let badness = env.machine.oomBadness(env.mm)
        XCTAssertGreaterThanOrEqual(badness, 2560 + 5, "2560 pages and their tables")
        try touch(cpu2, a, pages: want, plus: 7)   // more than is left: the big process goes
        XCTAssertEqual(env.machine.stats[.oomKill], 1)
        XCTAssertTrue(env.mm.isOOMKilled)
        XCTAssertGreaterThanOrEqual(env.mm.oomBadnessWhenKilled, 2560)
        XCTAssertFalse(other.mm.isOOMKilled)
        for i in 0..<want { XCTAssertEqual(try cpu2.load(a + UInt64(i) * pageSize, as: UInt64.self), UInt64(i) + 7) }
        // The victim's memory was reaped: its next access faults, and the fault kills it.
        XCTAssertThrowsError(try env.cpu.load(big, as: UInt64.self)) { XCTAssertEqual($0 as? AccessFault, .oom(address: big)) }
        XCTAssertEqual(env.machine.checkInvariants(), [])
        cpu2.detach()
        other.exit()
        env.teardown()
    }

    func testTheAllocatingProcessItselfMayBeTheVictim() throws {
        let env = try Env(mib: 16, checkEveryOperation: false)
        env.machine.oomKillerEnabled = true
        let a = try env.anon(8192)
        XCTAssertThrowsError(try touch(env.cpu, a, pages: 8192)) {
            guard case .oom = $0 as? AccessFault else { return XCTFail("\($0)") }
        }
        XCTAssertEqual(env.machine.stats[.oomKill], 1)
        XCTAssertTrue(env.mm.isOOMKilled)
        XCTAssertEqual(env.machine.checkInvariants(), [])
        env.teardown()
    }

    func testOffByDefaultTheFaultFailsWithOOM() throws {
        let env = try Env(mib: 16, checkEveryOperation: false)
        let a = try env.anon(8192)
        XCTAssertThrowsError(try touch(env.cpu, a, pages: 8192)) {
            guard case .oom = $0 as? AccessFault else { return XCTFail("\($0)") }
        }
        XCTAssertEqual(env.machine.stats[.oomKill], 0)
        XCTAssertFalse(env.mm.isOOMKilled)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 0, "the process lives on")
        env.teardown()
    }

    /// Of two address spaces with the same `oom_badness`, the newer is killed (7.2's
    /// `oom_evaluate_task` replaces the chosen task on a tie); the older lives on.
    func testOfEqualScoresTheNewestIsKilled() throws {
        let env = try Env(mib: 16, checkEveryOperation: false)
        env.machine.oomKillerEnabled = true
        var idle: [(Process, CPU, UInt64)] = []
        for k in 0..<2 {
            let p = try Process(machine: env.machine)
            let cpu = p.makeCPU()
            let a = try p.mmap(length: 1500 * pageSize, prot: .readWrite, flags: [.private, .anonymous])
            try touch(cpu, a, pages: 1500, plus: UInt64(k) << 32)
            idle.append((p, cpu, a))
        }
        XCTAssertEqual(env.machine.oomBadness(idle[0].0.mm), env.machine.oomBadness(idle[1].0.mm))
        let want = env.memory.freeFrames + 1000
        let a = try env.anon(want)
        try touch(env.cpu, a, pages: want, plus: 9)
        XCTAssertEqual(env.machine.stats[.oomKill], 1)
        XCTAssertFalse(idle[0].0.mm.isOOMKilled)
        XCTAssertTrue(idle[1].0.mm.isOOMKilled)
        XCTAssertFalse(env.mm.isOOMKilled)
        XCTAssertEqual(try idle[0].1.load(idle[0].2 + 1499 * pageSize, as: UInt64.self), 1499)
        for i in stride(from: 0, to: want, by: 97) { XCTAssertEqual(try env.cpu.load(a + UInt64(i) * pageSize, as: UInt64.self), UInt64(i) + 9) }
        XCTAssertEqual(env.machine.checkInvariants(), [])
        for (p, cpu, _) in idle { cpu.detach(); p.exit() }
        env.teardown()
    }

    /// Two processes allocate past RAM at once, each on its own thread: the first to find no
    /// frame kills the largest (idle) process, the other waits for that victim's reaping
    /// instead of choosing a second one (`oom_lock`, and a victim not yet reaped aborts the
    /// selection), and both allocations complete with their bytes right.
    func testTwoAllocatorsAtOnceShareOneVictim() throws {
        let env = try Env(mib: 16, checkEveryOperation: false)
        env.machine.oomKillerEnabled = true
        let big = try env.anon(2560)
        try touch(env.cpu, big, pages: 2560)
        let each = env.memory.freeFrames / 2 + 600   // 1,200 pages more than are free
        let procs = try (0..<2).map { _ in try Process(machine: env.machine) }
        let bases = try procs.map { try $0.mmap(length: UInt64(each) * pageSize, prot: .readWrite, flags: [.private, .anonymous]) }
        let failures = AtomicWord(0)
        let threads = (0..<2).map { k in
            procs[k].spawnThread(name: "alloc\(k)") { cpu in
                do {
                    for i in 0..<each { try cpu.store(bases[k] + UInt64(i) * pageSize, UInt64(i) + UInt64(k + 1) << 40) }
                    for i in 0..<each where try cpu.load(bases[k] + UInt64(i) * pageSize, as: UInt64.self) != UInt64(i) + UInt64(k + 1) << 40 {
                        failures.add(1)
                    }
                } catch { failures.add(1) }
            }
        }
        threads.forEach { $0.join() }
        XCTAssertEqual(failures.load(), 0)
        XCTAssertEqual(env.machine.stats[.oomKill], 1)
        XCTAssertTrue(env.mm.isOOMKilled)
        XCTAssertFalse(procs[0].mm.isOOMKilled || procs[1].mm.isOOMKilled)
        XCTAssertEqual(env.machine.checkInvariants(), [])
        for p in procs { p.exit() }
        env.teardown()
    }
}
