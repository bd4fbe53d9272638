import XCTest
@testable import Conformance
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

/// Issue 9.7: the page-range helpers' users, as `mm/mapping_dirty_helpers.c` has them.
final class MappingDirtyHelperTests: XCTestCase {
    /// One tmpfs file mapped shared in two processes; writes through both; write-protect;
    /// clean-and-record finds exactly the written pages; the next write faults back in.
    func testWriteProtectAndCleanRecordOverTwoProcessesSharedMappings() throws {
        let env = try HMMEnv()
        let f = ShmemFile(machine: env.machine, size: 4 * pageSize)
        let m1 = try env.process.mmap(length: 4 * pageSize, prot: .readWrite, flags: [.shared], file: f, offset: 0)
        let p2 = try MMCore.Process(machine: env.machine)
        let cpu2 = p2.makeCPU()
        let m2 = try p2.mmap(length: 2 * pageSize, prot: .readWrite, flags: [.shared], file: f, offset: 2 * pageSize)
        try env.cpu.store(m1, UInt64(1))                              // page 0 written by P1
        _ = try env.cpu.load(m1 + pageSize, as: UInt64.self)          // page 1 read: writable, clean
        try cpu2.store(m2 + pageSize, UInt64(3))                      // page 3 written by P2
        let r1 = try EventRecorder(env.mm), r2 = try EventRecorder(p2.mm)

        XCTAssertEqual(f.wpSharedMappingRange(firstIndex: 0, count: 4), 3)   // pages 0, 1 in P1; 3 in P2
        XCTAssertEqual(r1.take(), ["PROTECTION_PAGE"])
        XCTAssertEqual(r2.take(), ["PROTECTION_PAGE"])
        XCTAssertEqual(f.wpSharedMappingRange(firstIndex: 0, count: 4), 0)   // nothing writable left

        var bitmap = [Bool](repeating: false, count: 4)
        var start: UInt64 = 0, end: UInt64 = 0
        XCTAssertEqual(f.cleanRecordSharedMappingRange(firstIndex: 0, count: 4, bitmapPgoff: 0,
                                                       bitmap: &bitmap, start: &start, end: &end), 2)
        XCTAssertEqual(bitmap, [true, false, false, true])
        XCTAssertEqual(start, 0)
        XCTAssertEqual(end, 4)
        var again = [Bool](repeating: false, count: 4)
        var s2: UInt64 = 0, e2: UInt64 = 0
        XCTAssertEqual(f.cleanRecordSharedMappingRange(firstIndex: 0, count: 4, bitmapPgoff: 0,
                                                       bitmap: &again, start: &s2, end: &e2), 0)
        XCTAssertEqual(again, [false, false, false, false])
        XCTAssertEqual([s2, e2], [4, 0])                                // none recorded

        let faults = env.machine.stats[.faultWriteShared]
        try env.cpu.store(m1 + pageSize, UInt64(2))                   // faults back in
        XCTAssertEqual(env.machine.stats[.faultWriteShared], faults + 1)
        try env.cpu.store(m1 + pageSize, UInt64(4))                   // writable again: no fault
        XCTAssertEqual(env.machine.stats[.faultWriteShared], faults + 1)
        var b3 = [Bool](repeating: false, count: 4)
        var s3: UInt64 = 0, e3: UInt64 = 0
        XCTAssertEqual(f.cleanRecordSharedMappingRange(firstIndex: 0, count: 4, bitmapPgoff: 0,
                                                       bitmap: &b3, start: &s3, end: &e3), 1)
        XCTAssertEqual(b3, [false, true, false, false])
        XCTAssertEqual([s3, e3], [1, 2])
        // A bitmap that starts after the first page: pages outside it are cleaned, not recorded.
        try env.cpu.store(m1, UInt64(8)); try env.cpu.store(m1 + pageSize, UInt64(9))
        var b4 = [Bool](repeating: false, count: 1)
        var s4: UInt64 = 0, e4: UInt64 = 0
        XCTAssertEqual(f.cleanRecordSharedMappingRange(firstIndex: 0, count: 4, bitmapPgoff: 1,
                                                       bitmap: &b4, start: &s4, end: &e4), 2)
        XCTAssertEqual(b4, [true])
        XCTAssertEqual([s4, e4], [0, 1])
        XCTAssertEqual(try cpu2.load(m2 + pageSize, as: UInt64.self), 3)
        XCTAssertEqual(try env.cpu.load(m1 + 3 * pageSize, as: UInt64.self), 3)
        env.mm.notifiers.remove(r1.sub); p2.mm.notifiers.remove(r2.sub)
        cpu2.detach(); p2.exit()
        try f.ftruncate(0)                                            // drop the page cache
        env.finish([])
    }
}
