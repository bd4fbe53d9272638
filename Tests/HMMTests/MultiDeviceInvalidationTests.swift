import XCTest
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

/// Several devices mirroring one address space (issue 17): dmirror's shootdown latency, waited
/// for in the notifier's one pass or in the second pass of Linux 7.2's two-pass interval
/// notifiers, and refused for a non-blockable range.
final class MultiDeviceInvalidationTests: XCTestCase {
    /// Four mirrors (one per dmirror device) with `pages` pages of `a` read into each.
    func fourMirrors(_ env: HMMEnv, _ a: UInt64, pages: Int) throws -> [Dmirror] {
        let mirrors = try (0..<4).map { try env.module.open(minor: $0, mm: env.mm) }
        for m in mirrors {
            var c = DmirrorCmd(addr: a, npages: UInt64(pages))
            try m.ioctl(.read, &c, buffer: DmirrorBuffer(size: pages * Int(pageSize)))
            XCTAssertEqual(m.entryCount, pages)
        }
        return mirrors
    }

    /// With two-phase invalidation every device's shootdown is waited for in a finish pass
    /// (one per device per invalidation), after all four dropped their entries; with it off,
    /// in the one pass (no finish pass). Either way every mirror lost exactly the range (and
    /// dmirror's one page past it) and the data are intact.
    func testFourDevicesWaitForTheirShootdownsInTheFinishPass() throws {
        let env = try HMMEnv()
        let a = try env.anon(16)
        for p in 0..<16 { try env.cpu.store(a + UInt64(p) * pageSize, UInt64(p + 1)) }
        let mirrors = try fourMirrors(env, a, pages: 16)
        for d in env.module.devices { d.invalidationLatencyNanoseconds = 200_000; d.twoPhaseInvalidation = true }
        try env.process.mprotect(a, length: 4 * pageSize, prot: .read)
        XCTAssertEqual(env.module.devices.map { $0.finishPasses.load() }, [1, 1, 1, 1])
        XCTAssertEqual(mirrors.map(\.entryCount), [11, 11, 11, 11]) // pages 0...4 gone
        for d in env.module.devices { d.twoPhaseInvalidation = false }
        try env.process.mprotect(a + 8 * pageSize, length: 4 * pageSize, prot: .read)
        XCTAssertEqual(env.module.devices.map { $0.finishPasses.load() }, [1, 1, 1, 1])
        XCTAssertEqual(mirrors.map(\.entryCount), [6, 6, 6, 6]) // pages 8...12 gone too
        for p in 0..<16 { XCTAssertEqual(try env.cpu.load(a + UInt64(p) * pageSize, as: UInt64.self), UInt64(p + 1)) }
        env.finish(mirrors)
    }

    /// A device that has to wait for its shootdown cannot take a non-blockable invalidation
    /// (the OOM reaper's): the core gets false (the kernel's -EAGAIN), every mirror keeps its
    /// entries, and the sequence is even again so readers are not held up. Without the
    /// latency the same range goes through.
    func testANonBlockableInvalidationIsRefusedByADeviceThatWouldWait() throws {
        let env = try HMMEnv()
        let a = try env.anon(8)
        for p in 0..<8 { try env.cpu.store(a + UInt64(p) * pageSize, UInt64(p)) }
        let mirrors = try fourMirrors(env, a, pages: 8)
        env.module.devices[2].invalidationLatencyNanoseconds = 50_000
        let range = MMUNotifierRange(start: a, end: a + 8 * pageSize, event: .clear, blockable: false)
        XCTAssertFalse(env.mm.notifiers.invalidateRangeStart(range))
        // The first two devices had invalidated (as in the kernel, the walk stops at the one
        // that refuses); the third refused before touching its table, the fourth was not called.
        XCTAssertEqual(mirrors.map(\.entryCount), [0, 0, 8, 8])
        XCTAssertEqual(env.mm.notifiers.currentSeq & 1, 0)
        env.module.devices[2].invalidationLatencyNanoseconds = 0
        XCTAssertTrue(env.mm.notifiers.invalidateRangeStart(range))
        env.mm.notifiers.invalidateRangeEnd(range)
        XCTAssertEqual(mirrors.map(\.entryCount), [0, 0, 0, 0])
        env.finish(mirrors)
    }
}
