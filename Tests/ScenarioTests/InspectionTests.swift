import XCTest
@testable import Scenario
@testable import Conformance
import MMSync

/// Issue 10: the inspection commands, with exact values.
final class InspectionTests: XCTestCase {
    func testDevicePagesFreedByMunmapAreVisible() {
        let (r, lines) = runScript("""
            process p
            mmap 4pages -> a
            fill a 4pages IDX
            open 0 -> d
            migrate_to_dev d a 2 expect cpages=2
            device_pages d expect count=2 owned=2 mirrored=2
            meminfo expect device_pages=2 device_private=2 device_backing=2 anon=2
            ptes a 4 expect device_private|present
            ptes a 2 expect device_private
            vmas expect count=1
            munmap a 4pages
            device_pages d expect count=0 owned=0 mirrored=0
            meminfo expect device_pages=0 anon=0
            ptes a 4 expect none
            vmas expect count=0
            """, file: "i.hmm")
        XCTAssertEqual(r, .passed)
        XCTAssertEqual(lines.filter { $0.hasPrefix("device_pages") }, [
            "device_pages d (dmirror0, device private): 2 in use in 1 chunk, by owner: d 2; mirror entries 2",
            "device_pages d (dmirror0, device private): 0 in use in 1 chunk; mirror entries 0",
        ])
        let a = 0x7f0000000000 - 4 * 4096
        let ptes = lines.drop { !$0.hasPrefix("ptes p") }.prefix(5)
        XCTAssertEqual(ptes.first, "ptes p 0x\(String(a, radix: 16)) 4:")
        XCTAssertTrue(ptes.dropFirst().first!.contains("device_private write pfn "), "\(ptes)")
        XCTAssertTrue(ptes.dropFirst(3).first!.hasPrefix("  0x\(String(a + 2 * 4096, radix: 16)) present pfn "), "\(ptes)")
        XCTAssertTrue(ptes.dropFirst(3).first!.contains(" rw dirty young (anon, refcount 1, mapcount 1)"), "\(ptes)")
        XCTAssertTrue(lines.contains("  0x\(String(a, radix: 16))-0x7f0000000000 rw-p anon 4 pages"), "\(lines)")
        let (f, _) = runScript("process p\nmmap 1page -> a\nptes a 1 expect present\n", file: "pt.hmm")
        XCTAssertEqual(f, .failed("pt.hmm:3: expected page 0 (0x\(String(0x7f0000000000 - 4096, radix: 16))) present, got none"))
        let (m, _) = runScript("process p\nmeminfo expect anon=1\n", file: "mi.hmm")
        XCTAssertEqual(m, .failed("mi.hmm:2: expected anon=1, got anon=0"))
    }

    /// `free_pgtables` frees a table only when no VMA remains anywhere in its span (the
    /// kernel's floor/ceiling rule), even if the table is empty. Before, the walk stepped by the
    /// child's span, freed an empty PTE table whose span a neighbour still covered, and visited
    /// 131,072 PGD slots per exit (2 ms per process exit in release).
    func testMunmapFreesPageTablesOnlyWhereNoVMARemains() {
        let (r, _) = runScript("""
            process p
            mmap 1page fixed=0x200000000 -> a
            mmap 1page fixed=0x200002000 -> b
            fill a 1page IDX
            meminfo expect pagetables=4
            munmap a 1page
            meminfo expect pagetables=4
            munmap b 1page
            meminfo expect pagetables=1
            """, file: "pt.hmm")
        XCTAssertEqual(r, .passed)
    }

    func testExclusiveAndMigrationEntriesAreDecoded() {
        let (r, lines) = runScript("""
            process p
            mmap 2pages -> a
            fill a 2pages IDX
            open 2 -> d
            exclusive d a 1 expect ret=0
            ptes a 2 expect device_exclusive|present
            """)
        XCTAssertEqual(r, .passed)
        XCTAssertTrue(lines.contains { $0.contains(" device_exclusive pfn ") && $0.contains("(anon, refcount") }, "\(lines)")
    }

    func testInspectPrintsTheFinalState() {
        var o = ScenarioInterpreter.Options()
        var lines: [String] = []
        let lock = Lock("l")
        o.output = { l in lock.withLock { lines.append(l) } }
        o.inspect = true
        let r = ScenarioInterpreter(options: o).run(source: """
            process p
            mmap 8pages -> a
            fill a 4pages IDX
            open 0 -> d
            migrate_to_dev d a 2
            fork p -> c
            exit c
            """, file: "f.hmm")
        XCTAssertEqual(r, .passed)
        XCTAssertTrue(lines.contains("process p (pid 1): 1 VMA"), "\(lines)")
        XCTAssertTrue(lines.contains("process c (pid 2): exited"), "\(lines)")
        XCTAssertTrue(lines.contains { $0.hasSuffix(" +2 pages: device_private (first: device_private read pfn 131072 (device-private page of dmirror0))") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.contains(" +2 pages: present (first: present pfn ") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.contains(" +4 pages: none (first: none)") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("device d (dmirror0): ") && $0.hasSuffix(" mirror entries, 2 device pages owned, 2 in use on the device") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("meminfo: total 131071, ") && $0.contains("device_pages 2") }, "\(lines)")
    }
}
