import XCTest
@testable import MMCore
import MMSync

/// Lockdep in the core: a CPU access with a kernel lock held is reported; the fault path of a
/// plain access is clean.
final class LockdepUserAccessTests: XCTestCase {
    func testUserAccessWithALockHeld() throws {
        var reports: [Lockdep.Report] = []
        let saved = Lockdep.onReport
        Lockdep.onReport = { reports.append($0) }
        let wasEnabled = Lockdep.enabled
        Lockdep.enable()
        defer { Lockdep.enable(); Lockdep.enabled = wasEnabled; Lockdep.onReport = saved }
        let m = try Machine(memoryBytes: 16 << 20, devicePfnSpaceBytes: 0)
        let p = try MMCore.Process(machine: m)
        let a = try p.mmap(length: 2 * pageSize, prot: .readWrite, flags: [.private, .anonymous])
        let cpu = p.makeCPU()
        try cpu.store(a, UInt8(1))          // a fault, its locks, no report
        XCTAssertTrue(reports.isEmpty, "\(reports)")
        let l = Lock("lockdep-user")
        // An access to a mapped page (no fault: the fault handler asserts that nothing is held).
        let line = #line; l.lock()
        try cpu.store(a, UInt8(2))
        l.unlock()
        XCTAssertEqual(reports.map(\.kind), [.userAccessWithLocks])
        XCTAssertEqual(reports.map { $0.sites.last?.line }, [UInt(line)])
        XCTAssertTrue(reports.allSatisfy { $0.sites.first?.file.hasSuffix("CPU.swift") ?? false }, "\(reports)")
        cpu.detach()
        p.exit()
    }
}
