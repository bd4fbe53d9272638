import XCTest
@testable import MMCore
import MMSync

/// Records every invalidation an interval notifier sees.
final class Recorder {
    var events: [(MMUNotifyEvent, UInt64, UInt64)] = []
    let lock = Lock("recorder")
    var sub: MMUIntervalNotifier!
    init(_ mm: AddressSpace, start: UInt64 = 0, end: UInt64 = taskSize) throws {
        sub = MMUIntervalNotifier(start: start, end: end) { [unowned self] sub, range, seq in
            self.lock.withLock {
                self.events.append((range.event, range.start, range.end))
                sub.setSeq(seq)
            }
            return true
        }
        try mm.notifiers.insert(sub)
    }
    func take() -> [String] {
        lock.withLock { defer { events.removeAll() }; return events.map { "\($0.0)" } }
    }
}

final class NotifierTests: XCTestCase {
    func testEveryPageTableChangeIsReportedWithItsEvent() throws {
        let env = try Env()
        let rec = try Recorder(env.mm)
        let a = try env.anon(4)
        try env.cpu.store(a, UInt64(1))
        XCTAssertEqual(rec.take(), []) // faults that only add entries invalidate nothing
        try env.process.mprotect(a, length: 4096, prot: .read)
        XCTAssertEqual(rec.take(), ["PROTECTION_VMA"])
        try env.process.madvise(a + 4096, length: 4096, advice: .dontNeed)
        XCTAssertEqual(rec.take(), ["CLEAR"])
        try env.process.mprotect(a, length: 4096, prot: .readWrite)
        _ = rec.take()
        let child = try env.process.fork()
        // One per COW VMA: mprotect split [a, a+4K) off and merged it back when it became
        // read-write again, so one VMA.
        XCTAssertEqual(env.mm.vmaCount, 1)
        XCTAssertEqual(rec.take(), ["PROTECTION_PAGE"])
        try env.process.munmap(a + 3 * 4096, length: 4096)
        XCTAssertEqual(rec.take(), ["UNMAP"])
        _ = env.machine.migratePages([try XCTUnwrap(try env.pfn(a))])
        XCTAssertEqual(rec.take(), ["CLEAR"]) // the parent's mapping of the page (the child's is another mm)
        child.exit()
        XCTAssertEqual(rec.take(), [])
        env.mm.notifiers.remove(rec.sub)
        env.teardown()
    }

    func testExitReportsRelease() throws {
        let env = try Env()
        let rec = try Recorder(env.mm)
        _ = try env.anon(1)
        env.cpu.detach()
        env.process.exit()
        // Linux 7.2's exit_mmap: mmu_notifier_release (RELEASE over everything), then one UNMAP
        // of the whole space while unmap_vmas clears it.
        XCTAssertEqual(rec.take(), ["RELEASE", "UNMAP"])
    }

    func testIntervalOnlySeesOverlappingRanges() throws {
        let env = try Env()
        let a = try env.anon(8)
        let rec = try Recorder(env.mm, start: a + 4 * 4096, end: a + 8 * 4096)
        try env.process.munmap(a, length: 4 * 4096)
        XCTAssertEqual(rec.take(), [])
        try env.process.munmap(a + 4 * 4096, length: 4096)
        XCTAssertEqual(rec.take(), ["UNMAP"])
        env.mm.notifiers.remove(rec.sub)
        env.teardown()
    }

    func testReadBeginRetryProtocol() throws {
        let env = try Env()
        let a = try env.anon(1)
        let rec = try Recorder(env.mm)
        let s1 = rec.sub.readBegin()
        XCTAssertFalse(rec.lock.withLock { rec.sub.readRetry(s1) })
        try env.process.mprotect(a, length: 4096, prot: .read)
        XCTAssertTrue(rec.lock.withLock { rec.sub.readRetry(s1) })
        let s2 = rec.sub.readBegin()
        XCTAssertNotEqual(s1, s2)
        XCTAssertFalse(rec.lock.withLock { rec.sub.readRetry(s2) })
        env.mm.notifiers.remove(rec.sub)
        env.teardown()
    }

    func testReadBeginWaitsForAnInvalidationInProgress() throws {
        let env = try Env()
        let rec = try Recorder(env.mm)
        let range = MMUNotifierRange(start: 0, end: 4096, event: .clear)
        env.mm.notifiers.invalidateRangeStart(range)
        let began = AtomicCounter(0)
        let t = ModelThread.spawn {
            _ = rec.sub.readBegin()
            began.store(1)
        }
        syncSleep(nanoseconds: 20_000_000)
        XCTAssertEqual(began.load(), 0) // blocked while the invalidation is open
        env.mm.notifiers.invalidateRangeEnd(range)
        t.join()
        XCTAssertEqual(began.load(), 1)
        env.mm.notifiers.remove(rec.sub)
        env.teardown()
    }

    func testInsertRejectsEmptyInterval() throws {
        let env = try Env()
        let sub = MMUIntervalNotifier(start: 8192, end: 8192) { _, _, _ in true }
        // The kernel's zero length: EOVERFLOW.
        XCTAssertErrno(.EOVERFLOW) { () throws(Errno) in try env.mm.notifiers.insert(sub) }
        XCTAssertEqual(env.mm.notifiers.intervalCount, 0)
        env.teardown()
    }
    /// Linux 7.2's two-pass interval notifiers: every overlapping notifier's first pass runs
    /// (one-pass ones do their whole work there) before any finish, and the finishes run in
    /// the order the notifiers started; a notifier whose first pass finished the work returns
    /// no finish. A non-blockable range stopped by a notifier that would block still finishes
    /// those that started, leaves the later ones uncalled, and ends the invalidation.
    func testTwoPassNotifiersStartAllThenFinishInOrder() throws {
        let env = try Env()
        let log = Lock("log")
        var events: [String] = []
        func note(_ e: String) { log.withLock { events.append(e) } }
        var refuse = false
        func twoPass(_ name: String, at start: UInt64, finishes: Bool) -> MMUIntervalNotifier {
            MMUIntervalNotifier(start: start, end: start + 4096) { sub, range, seq in
                if refuse && name == "C" { note("\(name) refuses"); return .wouldBlock }
                sub.setSeq(seq)
                note("\(name) starts")
                return finishes ? .finish { note("\(name) finishes") } : .done
            }
        }
        let a = twoPass("A", at: 0, finishes: true), c = twoPass("C", at: 8192, finishes: true)
        let d = twoPass("D", at: 12288, finishes: false)
        let b = MMUIntervalNotifier(start: 4096, end: 8192) { sub, _, seq in sub.setSeq(seq); note("B one-pass"); return true }
        for n in [a, b, c, d] { try env.mm.notifiers.insert(n) }
        let range = MMUNotifierRange(start: 0, end: 16384, event: .clear)
        let before = a.readBegin()
        XCTAssertTrue(env.mm.notifiers.invalidateRangeStart(range))
        XCTAssertEqual(events, ["A starts", "B one-pass", "C starts", "D starts", "A finishes", "C finishes"])
        XCTAssertTrue(a.checkRetry(before)) // the first pass published the sequence
        env.mm.notifiers.invalidateRangeEnd(range)
        XCTAssertEqual(env.mm.notifiers.currentSeq & 1, 0)
        events.removeAll()
        refuse = true
        let nonblock = MMUNotifierRange(start: 0, end: 16384, event: .clear, blockable: false)
        XCTAssertFalse(env.mm.notifiers.invalidateRangeStart(nonblock))
        XCTAssertEqual(events, ["A starts", "B one-pass", "C refuses", "A finishes"])
        XCTAssertEqual(env.mm.notifiers.currentSeq & 1, 0) // ended by the core: readers are not blocked
        // A blockable range: a notifier that says it would block is passed over (the kernel
        // WARNs), the later ones start, and the finishes of those that started run.
        events.removeAll()
        XCTAssertTrue(env.mm.notifiers.invalidateRangeStart(MMUNotifierRange(start: 0, end: 16384, event: .clear)))
        XCTAssertEqual(events, ["A starts", "B one-pass", "C refuses", "D starts", "A finishes"])
        env.mm.notifiers.invalidateRangeEnd(MMUNotifierRange(start: 0, end: 16384, event: .clear))
        _ = a.readBegin()
        for n in [a, b, c, d] { env.mm.notifiers.remove(n) }
        env.teardown()
    }
}
