import XCTest
@testable import Scenario
import Conformance
import MMSync

/// Host memory stays flat over long open/close, fork/exit and mmap/munmap loops.
final class LeakTests: XCTestCase {
    func residentBytes() -> Int {
        guard let f = fopen("/proc/self/statm", "r") else { return 0 }
        defer { fclose(f) }
        var size = 0, resident = 0
        withUnsafeMutablePointer(to: &size) { s in withUnsafeMutablePointer(to: &resident) { r in _ = withVaList([s, r]) { vfscanf(f, "%ld %ld", $0) } } }
        return resident * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    func growth(_ body: (Int) -> String, warm: Int, more: Int) -> Int {
        func run(_ n: Int) { XCTAssertEqual(runScript(body(n), file: "leak.hmm").0, .passed) }
        run(warm)
        let r1 = residentBytes()
        run(more)
        return residentBytes() - r1
    }

    func testOpenCloseForkExitMmapMunmapLeaveRSSFlat() {
        // 86 bytes per open/close pair before the fix: 80,000 more pairs grew RSS by 6.9 MB.
        let oc = growth({ "process p\nrepeat \($0) {\n open 0 -> d\n close d\n}\n" }, warm: 20_000, more: 100_000)
        XCTAssertLessThan(oc, 1 << 20, "open/close grew RSS by \(oc) bytes")
        let fe = growth({ "process p\nmmap 4pages -> a\nfill a 4pages IDX\nrepeat \($0) {\n fork p -> c\n store a 1 proc=c\n exit c\n}\n" }, warm: 2_000, more: 10_000)
        XCTAssertLessThan(fe, 1 << 20, "fork/exit grew RSS by \(fe) bytes")
        let mm = growth({ "process p\nrepeat \($0) {\n mmap 4pages -> a\n fill a 4pages IDX\n munmap a 4pages\n}\n" }, warm: 5_000, more: 25_000)
        XCTAssertLessThan(mm, 1 << 20, "mmap/munmap grew RSS by \(mm) bytes")
        print("RSS growth: open/close \(oc) B over 100,000, fork/exit \(fe) B over 10,000, mmap/munmap \(mm) B over 25,000")
    }
}
