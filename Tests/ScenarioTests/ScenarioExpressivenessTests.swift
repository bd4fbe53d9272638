import XCTest
@testable import Scenario
@testable import Conformance
import MMSync

/// Issue 10: what can now be said — alternatives, proc= on device commands, indexed names.
final class ScenarioExpressivenessTests: XCTestCase {
    func testAlternativesForSystemCallsAndAccesses() {
        let (r, _) = runScript("""
            process p
            mmap 2pages -> a
            munmap a 1page expect ok|EINVAL
            munmap a+1 1page expect ok|EINVAL
            load a expect 0|segv
            load a+1page expect 0|segv
            store a 1 expect ok|segv
            check a 1page ZERO expect ok|segv
            fill a+1page 1page IDX expect ok|segv
            load a+1page u32 expect 7|0
            """)
        XCTAssertEqual(r, .passed)
        let (f, _) = runScript("process p\nmmap 1page -> a\nmunmap a+1 1page expect ok|ENOMEM\n", file: "alt.hmm")
        XCTAssertEqual(f, .failed("alt.hmm:3: expected ok|ENOMEM, got EINVAL"))
        let (g, _) = runScript("process p\nmmap 1page -> a\nmunmap a 1page\nload a expect 0|bus\n", file: "alt.hmm")
        XCTAssertEqual(g, .failed("alt.hmm:4: expected 0|bus, got SIGSEGV at 0x\(String(0x7f0000000000 - 4096, radix: 16))"))
    }

    /// 200 children alive at once, each named from the loop index, each with its own data.
    func testNamesIndexedByALoopVariable() {
        let (r, _) = runScript("""
            process main
            mmap 1page -> buf
            repeat 200 as i {
              fork main -> child[i]
              store buf i*3 proc=child[i]
              mmap 1page hint=0x10000000 proc=child[i] -> own[i]
              store own[i] i+1 proc=child[i]
            }
            repeat 200 as i {
              load buf proc=child[i] expect i*3
              load own[i] proc=child[i] expect i+1
            }
            load buf expect 0
            vmas proc=child[199] expect count=2
            repeat 200 as i { exit child[i] }
            invariants
            """)
        XCTAssertEqual(r, .passed)
        let (f, _) = runScript("process main\nrepeat 2 as i { fork main -> c[i] }\nexit c[2]\n", file: "ix.hmm")
        XCTAssertEqual(f, .malformed("ix.hmm:3:1: expected a known process, got 'c[2]'"))
    }

    func testProcOptionOnDeviceCommands() {
        let (r, _) = runScript("""
            process a
            process b
            use a
            mmap 2pages -> x
            fill x 2pages IDX
            open 0 proc=a -> d
            read d x 2 proc=b expect cpages=2 mirror=IDX
            migrate_to_dev d x 2 proc=a expect cpages=2
            release d proc=b
            flags d 1 proc=a
            """)
        XCTAssertEqual(r, .passed)
        XCTAssertEqual(runScript("process a\nopen 0 -> d\nread d 0 1 proc=zz\n", file: "p.hmm").0,
                       .malformed("p.hmm:3:17: expected a process created with 'process' or 'fork', got 'zz'"))
        XCTAssertEqual(runScript("process a\nprocess b\nuse a\nopen 0 -> d\nmmap_device d 1page proc=b -> m\n", file: "p.hmm").0,
                       .malformed("p.hmm:5:26: expected the process that opened the device for 'mmap_device'"))
    }
}
